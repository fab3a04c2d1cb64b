"""The demo world's zoo builders (xopd.zoo.demo_world) on the tiny real fixtures: merging the shipped LoRA
into the checkpoint file gives the model peft's merge gives, the student gets its LLM delta and its aligned
projector and nothing else, and a damaged or ill-fitting delta is refused naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xopd.models import resolve_model_name
from xopd.zoo import demo_world as dw


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """A peft LoRA on the fixture teacher (random B, so it changes the model) and peft's own merge of it."""
    from peft import LoraConfig, get_peft_model

    from xopd.loading import load_text_lm

    out = tmp_path_factory.mktemp("lora")
    teacher, tok = load_text_lm(resolve_model_name("fixture:teacher"))
    torch.manual_seed(0)
    model = get_peft_model(teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    model.save_pretrained(str(out / "adapter"))
    return out / "adapter", model.merge_and_unload().eval()


def _ship(root: Path, adapter: Path, audio: dict | None = None) -> None:
    tensors, meta = dw.lora_from_peft(adapter)
    files = {"teacher_lora.safetensors": (tensors, meta), "student_lora.safetensors": (tensors, meta)}
    if audio is not None:
        files["student_audio.safetensors"] = (audio, {})
    dw.write_deltas(root, files, {"made_by": "test"})


def test_text_merge_equals_peft_merge(lora, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter, merged = lora
    _ship(tmp_path / "deltas", adapter)
    (tmp_path / "out").mkdir()
    dw.build_text(Path(resolve_model_name("fixture:teacher")), tmp_path / "out", tmp_path / "deltas")
    built = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_name("fixture:teacher"), dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 11]])
    with torch.no_grad():
        ref, got, before = merged(input_ids=ids).logits, built(input_ids=ids).logits, plain(input_ids=ids).logits
    assert (got - ref).abs().max().item() < 2e-3  # float16 storage of A and B
    assert (before - ref).abs().max().item() > 2e-2  # the LoRA did change the model


def test_student_gets_the_llm_delta_and_the_audio_weights_only(lora, tmp_path):
    adapter, merged = lora
    base = Path(resolve_model_name("fixture:qwen2_audio"))
    before = load_file(str(base / "model.safetensors"))
    proj = {k: torch.randn_like(v) for k, v in before.items() if k.startswith("multi_modal_projector.")}
    _ship(tmp_path / "deltas", adapter, proj)
    (tmp_path / "out").mkdir()
    dw.build_speech(base, tmp_path / "out", tmp_path / "deltas")
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert after.keys() == before.keys()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    lora_targets = {k for k in before if k.startswith("language_model.model.layers.")
                    and k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight"))}
    assert set(changed) == lora_targets | set(proj)
    for k, v in proj.items():
        assert torch.equal(after[k], v.half().float())
    ref = merged.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    got = after["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert (got[: ref.shape[0]] - ref).abs().max().item() < 1e-3
    assert (tmp_path / "out" / "processor_config.json").is_file()  # the rest is the base's


def test_a_damaged_delta_is_refused(lora, tmp_path):
    adapter, _ = lora
    root = tmp_path / "deltas"
    _ship(root, adapter)
    path = root / "teacher_lora.safetensors"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(dw.DemoWorldError, match="sha256 differs"):
        dw.read_delta("teacher_lora.safetensors", root)
    with pytest.raises(dw.DemoWorldError, match="'student_audio.safetensors' is missing"):
        dw.read_delta("student_audio.safetensors", root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["provenance"] == {"made_by": "test"} and manifest["files"]["student_lora.safetensors"]["bytes"] > 0


def test_shipping_the_same_deltas_again_keeps_their_bytes(lora, tmp_path):
    """safetensors writes metadata keys in random order; a re-ship of unchanged deltas must not change a sha256
    (it would rebuild everyone's zoo entries), while a changed delta is rewritten."""
    adapter, _ = lora
    root = tmp_path / "deltas"
    _ship(root, adapter)
    first = json.loads((root / "manifest.json").read_text())["files"]
    for _ in range(4):
        _ship(root, adapter)
        assert json.loads((root / "manifest.json").read_text())["files"] == first
    tensors, meta = dw.lora_from_peft(adapter)
    bumped = {k: v + (1 if i == 0 else 0) for i, (k, v) in enumerate(sorted(tensors.items()))}
    dw.write_deltas(root, {"teacher_lora.safetensors": (bumped, meta)}, {"made_by": "test"})
    assert json.loads((root / "manifest.json").read_text())["files"]["teacher_lora.safetensors"]["sha256"] != \
        first["teacher_lora.safetensors"]["sha256"]


def test_ill_fitting_lora_is_refused_naming_the_module():
    w = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 6)}
    meta = {"r": "2", "alpha": "4"}
    with pytest.raises(dw.DemoWorldError, match="only \\['A'\\]"):
        dw.merge_lora(w, {"layers.0.self_attn.q_proj.A": torch.zeros(2, 6)}, meta, "model.")
    with pytest.raises(dw.DemoWorldError, match="B @ A is 9x6"):
        dw.merge_lora(w, {"layers.0.self_attn.q_proj.A": torch.zeros(2, 6),
                          "layers.0.self_attn.q_proj.B": torch.zeros(9, 2)}, meta, "model.")
    with pytest.raises(dw.DemoWorldError, match="no weight"):
        dw.merge_lora(w, {"layers.1.self_attn.q_proj.A": torch.zeros(2, 6),
                          "layers.1.self_attn.q_proj.B": torch.zeros(8, 2)}, meta, "model.")
    a, b = torch.randn(2, 6), torch.randn(8, 2)
    assert dw.merge_lora(w, {"layers.0.self_attn.q_proj.A": a, "layers.0.self_attn.q_proj.B": b}, meta, "model.") == 1
    assert torch.allclose(w["model.layers.0.self_attn.q_proj.weight"], 2.0 * b @ a)


def test_new_deltas_make_the_zoo_rebuild(tmp_path):
    """A zoo entry's build is current only while its input files (the deltas' manifest) are unchanged."""
    import xopd.zoo as zoo

    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"files": {}}')
    entry = zoo.ZooEntry("x", "m:f", "text-lm", "d", inputs=(str(manifest),))
    built = tmp_path / "built"
    built.mkdir()
    (built / zoo.MANIFEST).write_text(json.dumps({"version": 1, "inputs": zoo._inputs_digest(entry)}))
    assert zoo._is_current(built, entry)
    manifest.write_text('{"files": {"teacher_lora.safetensors": {}}}')
    assert not zoo._is_current(built, entry)
    plain = zoo.ZooEntry("y", "m:f", "asr", "d")
    (built / zoo.MANIFEST).write_text(json.dumps({"version": 1, "inputs": None}))
    assert zoo._is_current(built, plain)  # entries without inputs: the version alone, as before
    assert {"xopd-demo-teacher", "xopd-demo-student"} <= set(zoo.ZOO)


def test_the_shipped_world_builds_offline_and_its_models_are_the_tuned_ones():
    """The zoo builds both demo models from the deltas in the package (offline, into an empty zoo) and they
    answer like the checkpoints they came from: the tuned LLMs name family relations the base model cannot."""
    import xopd.zoo as zoo
    from evalsuite.backends.hf import HFBackend
    from evalsuite.run import TEXT, evaluate
    from evalsuite.tasks import load_task
    from evalsuite.types import GenParams

    manifest = json.loads((dw.DELTAS / "manifest.json").read_text())
    assert sum(f["bytes"] for f in manifest["files"].values()) <= 40 * 2**20
    task = load_task("family", split="validation", limit=16, seed=0)

    def accuracy(name: str) -> float:
        backend = HFBackend(name, batch_size=16, dtype="float32", device="cpu")
        try:
            samples = evaluate(backend, [task], modes=(TEXT,), params=GenParams(max_new_tokens=8))
        finally:
            backend.close()
        return sum(s.correct for s in samples) / len(samples)

    for name in ("xopd-demo-teacher", "xopd-demo-student"):
        built = zoo.ensure(name)
        assert json.loads((built / zoo.MANIFEST).read_text())["inputs"] == zoo._inputs_digest(zoo.ZOO[name])
    base, teacher, student = (accuracy(n) for n in ("smollm2-135m-instruct", "xopd-demo-teacher",
                                                     "xopd-demo-student"))
    # validation logs: base 0.09, teacher (stage 2, step 500) 1.0, student LLM (stage 2, step 100) 0.98
    assert base <= 0.4 and teacher >= 0.8 and student >= 0.8, (base, teacher, student)
