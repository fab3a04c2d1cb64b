"""Whisper tiny.en's own WER (the demo student's encoder, with its own decoder) on the 32 validation clips of
alignment (8 per task) in the seen voice, the held-out voice and two trained flite voices: how well the
encoder can hear each voice at all, beside the aligned student's repeat-WER in reports/demo/align.md.

    XOPD_HOME=$PWD/.xopd-home OMP_NUM_THREADS=1 .venv/bin/python reports/demo/probes/whisper_wer_by_voice.py
"""
from evalsuite.speech import parse_variants, render_array
from evalsuite.speech_check import load_transcriber
from evalsuite.textnorm import corpus_wer
from xopd.world.align import eval_items

val = eval_items(["sums", "counting", "syllogism", "family"], 8, 0)
transcribe = load_transcriber()
texts = [task.render_spoken(item) for task, item in val]
for voice in parse_variants("hibari,flite-kal,flite-awb,flite-slt"):
    print(voice.name, round(corpus_wer(texts, transcribe([render_array(t, voice) for t in texts])), 3))
