"""Model fingerprints: a sha256 that changes whenever anything that changes an answer changes.

A cache keyed on a model *name* hands a retrained checkpoint the old model's answers (lm-eval #2533's class of
bug). So the fingerprint hashes the *content* of the checkpoint's files (config, generation config, tokenizer,
chat template, processor config, weights), together with the backend and its numerics settings (dtype, ...).
Hashing weights costs about a second per GB, once: digests of large files are memoised per (path, size,
mtime) in ``$XOPD_HOME/cache/file-sha256.jsonl``, so the next process only stats the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from xopd.paths import xopd_home

# What can change an answer: configs/tokenizers (.json, .jinja, .txt merges/vocab, .model sentencepiece,
# .tiktoken), weights (.safetensors, .bin, .gguf), remote code (.py).
SUFFIXES = {".json", ".jinja", ".txt", ".model", ".tiktoken", ".safetensors", ".bin", ".gguf", ".py"}
# Training leftovers that sit in checkpoint folders but never change an answer (and can be huge).
IGNORED = {"training_args.bin", "optimizer.bin", "scheduler.bin", "trainer_state.json", "xopd_zoo.json"}
_CHUNK = 1 << 22
_MEMO_MIN_BYTES = 32 << 20  # smaller files hash in milliseconds: not worth a memo line


def _memo_path() -> Path:
    return xopd_home() / "cache" / "file-sha256.jsonl"


_memo: dict[tuple[str, int, int], str] | None = None


def _load_memo() -> dict[tuple[str, int, int], str]:
    global _memo
    if _memo is None:
        _memo = {}
        try:
            lines = _memo_path().read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                r = json.loads(line)
                _memo[(r["path"], int(r["size"]), int(r["mtime_ns"]))] = r["sha256"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed process: that file is simply hashed again
    return _memo


def file_sha256(path: Path) -> str:
    """Content sha256 of one file, memoised by (real path, size, mtime_ns)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    memo = _load_memo()
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    memo[key] = digest
    if st.st_size < _MEMO_MIN_BYTES:
        return digest
    try:  # best effort: a read-only home just means hashing again next time
        _memo_path().parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
        with open(_memo_path(), "a") as fh:
            fh.write(line + "\n")  # one short write per line: concurrent appenders do not interleave
    except OSError:
        pass
    return digest


def local_model_dir(path: str) -> Path:
    """The directory holding a model's files: ``path`` itself, or the local hub snapshot of an HF id."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download  # a hub id: the files from_pretrained reads (or will read)

    return Path(snapshot_download(path, allow_patterns=[f"*{s}" for s in sorted(SUFFIXES)]))


def dir_digest(path: str | Path) -> dict[str, str]:
    """{relative file name: sha256} of every file in a model directory that can change an answer."""
    root = local_model_dir(str(path))
    out: dict[str, str] = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(p.startswith(".") for p in rel.parts) or f.suffix not in SUFFIXES or f.name in IGNORED:
            continue
        if f.is_file():
            out[rel.as_posix()] = file_sha256(f)
    if not any(name.endswith("config.json") for name in out):
        raise FileNotFoundError(f"{root}: no config.json to fingerprint; is this a model directory?")
    return out


def fingerprint(backend: str, kind: str, models: dict[str, str | Path], settings: dict[str, Any]) -> str:
    """sha256 over the backend, the model kind, each model directory's file digests and the settings that
    change numerics (dtype, tensor parallelism, ...)."""
    doc = {
        "backend": backend,
        "kind": kind,
        "models": {role: dir_digest(path) for role, path in sorted(models.items())},
        "settings": {k: str(v) for k, v in sorted(settings.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
