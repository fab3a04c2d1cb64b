"""Do the projected audio frames drown the instruction? Their RMS against the text embeddings', and the
validation task check (hibari, 8 questions per task) with the projector's output scaled by s.

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python -P reports/demo/probes/audio_scale.py artifacts/world/align2/step-000967/trainable.safetensors 1 0.5 0.25
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
align.load_trainable(core, Path(sys.argv[1]))
clips = align.Clips(EncoderCache(core.model.audio_tower, ad.feature_extractor, dtype="float16"))
val = align.eval_items(["sums", "counting", "syllogism", "family"], 8, 0)
voice = parse_variants("hibari")[0]
scales = [float(s) for s in sys.argv[2:]]
prompts = align.Prompts(ad)
states = clips.states([(t.render_spoken(it), voice) for t, it in val])
with torch.no_grad():
    proj = core.model.multi_modal_projector(torch.cat(states).float())
    emb = core.get_input_embeddings().weight
    print(f"RMS per element: audio {proj.pow(2).mean().sqrt():.4f}  text table {emb.pow(2).mean().sqrt():.4f}; "
          f"row norm: audio {proj.norm(dim=-1).mean():.3f}  text {emb.norm(dim=-1).mean():.3f}", flush=True)
scale = {"s": 1.0}
core.model.multi_modal_projector.register_forward_hook(lambda m, i, o: o * scale["s"])
for s in scales:
    scale["s"] = s
    rows = align.ask_tasks(core, ad, prompts, val, states, 8, 32)  # (task, correct, restates, response)
    outs = [r[3] for r in rows]
    acc, rest = sum(r[1] for r in rows) / len(rows), sum(r[2] for r in rows) / len(rows)
    print(f"scale {s}: acc {acc:.3f} restates {rest:.3f}", [o[:50] for o in outs[::8]], flush=True)
