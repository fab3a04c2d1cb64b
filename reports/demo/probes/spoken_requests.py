"""Speech vs typed responses of the student to held-out out-of-mix requests (flite-slt): the v4 probe.

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python reports/demo/probes/spoken_requests.py artifacts/world/align4/step-000200/trainable.safetensors
"""
import sys, torch
from pathlib import Path
from xopd.world import align
from xopd.world.respond_pool import respond_requests
from xopd.world.encoder_cache import EncoderCache
from evalsuite.speech import parse_variants
torch.set_num_threads(2)
ad = align.build_student("xopd-speech-smollm2", "smollm2-135m-instruct", "artifacts/world/teacher2/step-000100")
core = ad.core
align.setup_trainable(core)
align.load_trainable(core, Path(sys.argv[1]))
core.requires_grad_(False)
clips = align.Clips(EncoderCache(core.model.audio_tower, ad.feature_extractor, dtype="float16"))
reqs = respond_requests(["letter_counting", "calendar_arithmetic", "coin_flip", "sentence_reordering"], 150, 0)
asks = [r for v in reqs.values() for r in v[-3:]]  # last items: likely not drawn in 200 steps
voice = parse_variants("flite-slt")[0]
states = clips.states([(s, voice) for s, _ in asks])
prompts = align.Prompts(ad)
speech = align.greedy(core, ad, [prompts[i] for _, i in asks], states, 32)
text = [ad.tokenizer.decode(x, skip_special_tokens=True) for x in align.own_responses(core, ad, asks, 32)]
for (s, i), a, b in zip(asks, speech, text):
    print(f"{s[:60]!r} + {i!r}\n   speech: {a[:80]!r}\n   text:   {b[:80]!r}")
