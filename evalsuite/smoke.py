"""The zoo smoke job: every zoo model, really run once, in a couple of minutes on a laptop CPU.

It builds what is missing, then measures: the text teacher's answer to a factual question, Whisper's corpus WER
on espeak-ng speech of five reasoning questions, the cascade's answer to the spoken question, and the
assembled student's answer to it (its projector is untrained until the trainer aligns it, so expect noise).
Until the gap evaluation lands this is the README's main job.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from evalsuite.textnorm import corpus_wer
from evalsuite.tts import espeak_synthesize
from xopd.paths import atomic_write_text
from xopd.zoo import ZOO, ensure

REASONING_PROMPTS = [
    "If Tom has three apples and buys five more, how many apples does he have?",
    "A train leaves the station at nine and travels for two hours. When does it arrive?",
    "Sarah is older than Ben, and Ben is older than Lucy. Who is the youngest?",
    "There are twelve eggs in a box. If you use four, how many are left?",
    "All cats are animals, and some animals are black. Are all cats black?",
]
QUESTION = "What is the capital of France?"
REPORT_VERSION = 1


def run_smoke(output: Path | None = None, *, log=print) -> dict:
    # late: torch and transformers (and the two xopd modules built on them) only when the smoke test runs
    import torch
    import transformers

    from xopd.cascade import Cascade
    from xopd.loading import load_speech_lm, load_text_lm

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    for i, name in enumerate(ZOO, 1):
        log(f"[{i}/{len(ZOO)}] zoo: {name}")
        t = time.perf_counter()
        ensure(name)
        timings[f"zoo:{name}"] = time.perf_counter() - t

    rows: list[dict] = []
    log("teacher: text question")
    model, tok = load_text_lm("smollm2-135m-instruct")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    rows.append({"model": "smollm2-135m-instruct", "input": "text", "heard": QUESTION, "answer": answer})
    del model

    log("tts: espeak-ng")
    spoken = espeak_synthesize(QUESTION)
    prompts_audio = [espeak_synthesize(p) for p in REASONING_PROMPTS]

    log("cascade: whisper-tiny.en + smollm2-135m-instruct")
    cascade = Cascade.load("cascade:")
    hyps = cascade.transcribe(prompts_audio)
    wer = corpus_wer(REASONING_PROMPTS, hyps)
    answer, heard = cascade.generate([{"role": "user", "content": [{"type": "audio", "audio": spoken}]}])
    rows.append({"model": cascade.name, "input": "speech (espeak-ng)", "heard": heard[0], "answer": answer})
    del cascade

    log("student: xopd-speech-smollm2 (untrained projector)")
    student, proc = load_speech_lm("xopd-speech-smollm2")
    msgs = [{"role": "user", "content": [{"type": "audio"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = proc(text=text, audio=[spoken], sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        out = student.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = proc.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    rows.append({"model": "xopd-speech-smollm2", "input": "speech (espeak-ng)", "heard": "(audio tokens)", "answer": answer})

    report = {
        "report": "xopd-smoke",
        "version": REPORT_VERSION,
        "whisper_wer_espeak": round(wer, 4),
        "whisper_hypotheses": hyps,
        "answers": rows,
        "timings_s": {k: round(v, 2) for k, v in timings.items()} | {"total": round(time.perf_counter() - t0, 2)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
    }
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output / "smoke.json", json.dumps(report, indent=2))
    return report


def format_markdown(report: dict) -> str:
    lines = ["| model | input | heard | answer |", "|---|---|---|---|"]
    for r in report["answers"]:
        cells = [r["model"], r["input"], r["heard"], r["answer"].replace("\n", " ").replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"whisper-tiny.en corpus WER on espeak-ng speech of {len(REASONING_PROMPTS)} reasoning prompts: "
                 f"{report['whisper_wer_espeak']:.3f}")
    lines.append(f"wall time: {report['timings_s']['total']:.1f} s")
    return "\n".join(lines)
