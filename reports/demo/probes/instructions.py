"""What the student says to validation clips under its task instruction, trained instructions, a new one
("Answer the question you heard.") and none: the v3 probe of reports/demo/align.md.

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python reports/demo/probes/instructions.py artifacts/world/align3/step-000150/trainable.safetensors
"""
import sys, torch, os
from pathlib import Path
from xopd.world import align
from xopd.world.objectives import OBJECTIVES
from xopd.world.encoder_cache import EncoderCache
from evalsuite.speech import parse_variants
torch.set_num_threads(1)
ck = sys.argv[1]
ad = align.build_student("xopd-speech-smollm2", "smollm2-135m-instruct", "artifacts/world/teacher2/step-000100")
core = ad.core
align.setup_trainable(core)
align.load_trainable(core, Path(ck))
core.requires_grad_(False)
cache = EncoderCache(core.model.audio_tower, ad.feature_extractor, dtype="float16")
clips = align.Clips(cache)
val = align.eval_items(["sums", "counting", "syllogism", "family"], 2, 0)
voice = parse_variants("hibari")[0]
prompts = align.Prompts(ad)
states = clips.states([(t.render_spoken(it), voice) for t, it in val])
instrs = {
 "task": [t.instruction or "" for t, _ in val],
 "last": [OBJECTIVES["last-word"].make(t.render_spoken(it), "", "k")[0] for t, it in val],
 "heard": [OBJECTIVES["heard-word"].make(t.render_spoken(it), "x", "k")[0] for t, it in val],
 "answer-q": ["Answer the question you heard. " + (t.instruction or "") for t, _ in val],
 "none": ["" for _ in val],
}
for k, ins in instrs.items():
    outs = align.greedy(core, ad, [prompts[i] for i in ins], states, 24)
    print("==", k)
    for (t, it), i, o in zip(val, ins, outs):
        print(f"  [{t.name}] {i[:40]!r} -> {o!r}  (gold {it.answer})")
