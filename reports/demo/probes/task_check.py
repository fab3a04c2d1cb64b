"""The validation task check (accuracy, restated share; hibari, 8 questions per task) on given projectors.

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python reports/demo/probes/task_check.py artifacts/world/align2/step-000{050,150,250,500}/trainable.safetensors
"""
import sys, torch
from pathlib import Path
from xopd.world import align
from xopd.world.encoder_cache import EncoderCache
from evalsuite.speech import parse_variants
torch.set_num_threads(2)
ad = align.build_student("xopd-speech-smollm2", "smollm2-135m-instruct", "artifacts/world/teacher2/step-000100")
core = ad.core
align.setup_trainable(core)
clips = align.Clips(EncoderCache(core.model.audio_tower, ad.feature_extractor, dtype="float16"))
val = align.eval_items(["sums", "counting", "syllogism", "family"], 8, 0)
voice = parse_variants("hibari")[0]
prompts = align.Prompts(ad)
states = clips.states([(t.render_spoken(it), voice) for t, it in val])
for ck in sys.argv[1:]:
    align.load_trainable(core, Path(ck))
    rows = align.ask_tasks(core, ad, prompts, val, states, 8, 32)  # (task, correct, restates, response)
    outs = [r[3] for r in rows]
    acc, rest = sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)
    print(ck, f"acc {acc:.3f} restates {rest:.3f}", [o[:40] for o in outs[::8]], flush=True)
