"""The demo world's two models, rebuilt offline from small deltas shipped in this package.

- ``xopd-demo-teacher``: SmolLM2-135M-Instruct (the zoo's ``smollm2-135m-instruct``) with the tuned teacher's
  LoRA merged in.
- ``xopd-demo-student``: the zoo's assembled speech LLM (``xopd-speech-smollm2``: Whisper tiny.en encoder +
  projector + SmolLM2) with an *earlier* LoRA checkpoint of the same tuning run merged into its LLM (a weaker
  relative of the teacher, as in the paper) and the projector trained by the alignment recipe.

The deltas live in ``xopd/zoo/demo_world/`` (``manifest.json`` says which runs, steps and commands made them;
``xopd.world.ship`` writes them). Merging works on the checkpoint files themselves, with no model class: a
LoRA pair (A: r x in, B: out x r) adds ``alpha / r * B @ A`` to the weight it names, in float32, and the
projector's tensors replace the base's. Everything else (config, tokenizer, chat template, processor) is the
base model's, so the result loads wherever the base does (transformers, vLLM).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xopd.families import released_qwen2_audio_key
from xopd.zoo import ensure

DELTAS = Path(__file__).with_name("demo_world")
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
# a LoRA pair is stored as "<module path below the decoder>.A" / ".B", e.g. "layers.0.self_attn.q_proj.A"
_PAIR = re.compile(r"^(?P<module>layers\.\d+\.\w+\.\w+)\.(?P<half>[AB])$")


class DemoWorldError(RuntimeError):
    """A shipped delta is missing, altered, or does not fit the base model."""


def lora_from_peft(adapter_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A peft LoRA folder → ({"layers.N.<block>.<proj>.A"/".B": tensor}, {"r", "alpha"}): the shipped form."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.search(r"(layers\.\d+\.\w+\.\w+)\.lora_([AB])\.weight$", key)
        if not m:
            raise DemoWorldError(f"{adapter_dir}: {key!r} is not a LoRA A/B weight of a decoder layer")
        tensors[f"{m.group(1)}.{m.group(2)}"] = value
    return tensors, {"r": str(cfg["r"]), "alpha": str(cfg["lora_alpha"])}


def merge_lora(weights: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], meta: dict[str, str],
               prefix: str) -> int:
    """Add each LoRA pair's ``alpha / r * B @ A`` to ``weights[prefix + module + ".weight"]`` in place, in
    float32; returns the number of weights changed. A pair without its weight, or of the wrong shape, is an
    error naming it."""
    scale = float(meta["alpha"]) / float(meta["r"])
    modules = {}
    for key in lora:
        m = _PAIR.match(key)
        if not m:
            raise DemoWorldError(f"LoRA tensor {key!r}: expected '<layers.N.block.proj>.A' or '.B'")
        modules.setdefault(m.group("module"), set()).add(m.group("half"))
    for module, halves in sorted(modules.items()):
        if halves != {"A", "B"}:
            raise DemoWorldError(f"LoRA {module}: only {sorted(halves)} of the pair A, B is there")
        name = f"{prefix}{module}.weight"
        if name not in weights:
            raise DemoWorldError(f"LoRA {module}: the base has no weight {name!r}")
        a, b = lora[f"{module}.A"].float(), lora[f"{module}.B"].float()
        w = weights[name]
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise DemoWorldError(f"LoRA {module}: B @ A is {b.shape[0]}x{a.shape[1]}, {name} is {tuple(w.shape)}")
        weights[name] = (w.float() + scale * (b @ a)).to(w.dtype)
    return len(modules)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_delta(name: str, root: Path = DELTAS) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A shipped delta file, checked against the manifest's sha256 (a truncated or edited file is refused)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except OSError as exc:
        raise DemoWorldError(f"no demo-world manifest at {root / MANIFEST}: this install lacks the deltas") from exc
    entry = manifest["files"].get(name)
    path = root / name
    if entry is None or not path.is_file():
        raise DemoWorldError(f"demo-world delta {name!r} is missing from {root}")
    if sha256(path) != entry["sha256"]:
        raise DemoWorldError(f"{path}: sha256 differs from {root / MANIFEST} (a damaged or edited delta)")
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path)), meta


def write_deltas(root: Path, files: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]],
                 provenance: dict) -> None:
    """Write each ``name -> (tensors, metadata)`` as float16 safetensors under ``root`` and the manifest with
    their sha256 and ``provenance`` (runs, steps, commands): the inverse of :func:`read_delta`."""
    root.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (tensors, meta) in files.items():
        path = root / name
        half = {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}
        if not _holds(path, half, dict(meta)):  # safetensors orders metadata keys at random: rewriting the
            tmp = path.with_suffix(".tmp")      # same delta would change its sha256 and rebuild the zoo
            save_file(half, str(tmp), metadata=dict(meta))
            tmp.replace(path)
        entries[name] = {"sha256": sha256(path), "bytes": path.stat().st_size, "tensors": len(tensors)}
    text = json.dumps({"files": entries, "provenance": provenance}, indent=2) + "\n"
    (root / (MANIFEST + ".tmp")).write_text(text)
    (root / (MANIFEST + ".tmp")).replace(root / MANIFEST)


def _holds(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bool:
    """Whether the safetensors file ``path`` already holds exactly these tensors and metadata."""
    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        if dict(f.metadata() or {}) != meta or set(f.keys()) != set(tensors):
            return False
        return all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def _copy_base(base: Path, out_dir: Path) -> dict[str, torch.Tensor]:
    """Everything of ``base`` but its weights and zoo manifest into ``out_dir``; returns its weights."""
    for p in base.iterdir():
        if p.is_file() and p.name not in (WEIGHTS, "xopd_zoo.json"):
            shutil.copy2(p, out_dir / p.name)
    return load_file(str(base / WEIGHTS))


def build_text(base: Path, out_dir: Path, root: Path = DELTAS) -> None:
    """A text LLM folder ``base`` (LLaMA/Qwen2 key layout) + the teacher LoRA, written to ``out_dir``."""
    weights = _copy_base(base, out_dir)
    lora, meta = read_delta("teacher_lora.safetensors", root)
    merge_lora(weights, lora, meta, prefix="model.")
    save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})


def build_speech(base: Path, out_dir: Path, root: Path = DELTAS) -> None:
    """A Qwen2-Audio-layout folder ``base`` + the student LoRA in its LLM + the aligned audio weights."""
    weights = _copy_base(base, out_dir)
    lora, meta = read_delta("student_lora.safetensors", root)
    # the decoder's key prefix in the released Qwen2-Audio layout the zoo writes (the family's export key)
    merge_lora(weights, lora, meta, prefix=released_qwen2_audio_key("model.language_model."))
    audio, _ = read_delta("student_audio.safetensors", root)
    for name, value in audio.items():
        if name not in weights or weights[name].shape != value.shape:
            raise DemoWorldError(f"student_audio.safetensors: {name!r} does not fit the base speech model")
        weights[name] = value.to(weights[name].dtype)
    save_file(weights, str(out_dir / WEIGHTS), metadata={"format": "pt"})


def build_teacher(out_dir: Path) -> None:
    """Zoo builder of ``xopd-demo-teacher``: SmolLM2-135M-Instruct + the teacher LoRA."""

    build_text(ensure("smollm2-135m-instruct"), out_dir)


def build_student(out_dir: Path) -> None:
    """Zoo builder of ``xopd-demo-student``: the assembled speech LLM + student LoRA + aligned projector."""

    build_speech(ensure("xopd-speech-smollm2"), out_dir)
