"""The generation cache: answers already computed are never computed again, and a killed run resumes.

An append-only JSONL file, one ``{"key": ..., "record": {...}}`` per line, each appended under an exclusive
lock and fsync'ed (lm-eval's SQLite cache died of "database locked" (#796) and resumed the wrong requests
(#2533, #2548)). The key is the sha256 of everything that changes an answer: the model fingerprint (file
contents, dtype, ...), the backend, the decoding parameters and the messages, each audio array replaced by the
sha256 of its float32 samples. Only deterministic requests are cached (greedy, or sampled with a fixed seed).

A writer killed mid-line leaves a torn last line: readers ignore it, and the next writer cuts it off before
appending. Writers sharing one file see each other's records (the file is re-read from where this process
stopped before each append), so no key is ever written twice.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite.backends.base import Backend, Progress, Result
from evalsuite.types import GenParams, Request

KEY_VERSION = 1  # bump when the key's recipe changes, so old records are never matched by accident


class CacheError(RuntimeError):
    """The cache file is damaged beyond a torn last line."""


def cacheable(params: GenParams) -> bool:
    """Greedy decoding, or sampling with a fixed seed: the same request gets the same answer again."""
    return params.temperature == 0 or getattr(params, "seed", None) is not None


def _canonical(value: Any, where: str) -> Any:
    """JSON-ready form of a message tree; audio arrays become their sha256 (of float32 samples) and shape."""
    if isinstance(value, np.ndarray):
        samples = np.ascontiguousarray(value, dtype="<f4")
        return {"ndarray_sha256": hashlib.sha256(samples.tobytes()).hexdigest(), "shape": list(samples.shape)}
    if isinstance(value, dict):
        return {
            str(k): _canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot key a request on {where}: unsupported value of type {type(value).__name__}")


def request_key(fingerprint: str, backend: str, params: GenParams, messages: list[dict[str, Any]]) -> str:
    """sha256 hex of (key version, model fingerprint, backend name, decoding parameters, messages with each
    audio array replaced by the sha256 of its float32 samples)."""
    doc = {
        "v": KEY_VERSION,
        "fingerprint": fingerprint,
        "backend": backend,
        "params": dataclasses.asdict(params),
        "messages": _canonical(messages, "messages"),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class GenerationCache:
    """``get(key)`` / ``put(key, record)`` over an append-only JSONL file (created on first put)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: dict[str, dict[str, Any]] = {}
        self._offset = 0  # bytes of the file read so far (always at the end of a complete line)
        self._lineno = 0
        if self.path.exists():
            with open(self.path, "rb") as fh:
                self._catch_up(fh)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict[str, Any] | None:
        record = self._records.get(key)
        return None if record is None else json.loads(json.dumps(record))  # a copy: callers may mutate it

    def put(self, key: str, record: dict[str, Any]) -> bool:
        """Append one record, fsync'ed; False (and nothing written) when the key is already cached."""
        return self.put_many([(key, record)]) == 1

    def put_many(self, items: Iterable[tuple[str, dict[str, Any]]]) -> int:
        """Append the records whose keys are new, with one fsync; returns how many were written."""
        items = list(items)
        if not items:
            return 0
        lines = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                self._catch_up(fh)  # records other processes appended since we last looked
                size = os.fstat(fh.fileno()).st_size
                if size > self._offset:  # a torn last line from a killed writer: cut it off
                    fh.truncate(self._offset)
                fresh: dict[str, dict[str, Any]] = {}
                for key, record in items:
                    if key in self._records or key in fresh:
                        continue
                    line = json.dumps({"key": key, "record": record}, separators=(",", ":"))
                    if "\n" in line:  # impossible with json.dumps, but a newline would split a record
                        raise CacheError(f"record for {key} serialises with a newline")
                    fresh[key] = json.loads(line)["record"]
                    lines.append(line + "\n")
                if lines:
                    data = "".join(lines).encode("utf-8")
                    fh.seek(0, os.SEEK_END)
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                    self._offset += len(data)
                    self._lineno += len(lines)
                    self._records.update(fresh)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return len(lines)

    def _catch_up(self, fh: Any) -> None:
        """Read complete lines from ``self._offset`` on; a last line without its newline is left unread."""
        fh.seek(self._offset)
        data = fh.read()
        end = data.rfind(b"\n") + 1  # only complete lines
        for raw in data[:end].splitlines():
            self._lineno += 1
            try:
                entry = json.loads(raw)
                key, record = entry["key"], entry["record"]
                if not isinstance(key, str) or not isinstance(record, dict):
                    raise ValueError("key must be a string and record an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise CacheError(
                    f"{self.path}:{self._lineno}: corrupt cache record ({exc}); a killed writer only ever "
                    "tears the last line, so this file was edited or damaged: delete it to start afresh"
                ) from exc
            self._records.setdefault(key, record)
        self._offset += end


def result_record(result: Result) -> dict[str, Any]:
    return {"text": result.text, "token_ids": list(result.token_ids), "meta": result.meta}


def record_result(record: dict[str, Any]) -> Result:
    return Result(record["text"], list(record["token_ids"]), None, {**record.get("meta", {}), "cached": True})


def generate_cached(
    backend: Backend,
    requests: list[Request],
    params: GenParams,
    cache: GenerationCache | None,
    *,
    chunk_size: int = 64,
    progress: Progress | None = None,
) -> list[Result]:
    """``backend.generate`` through the cache: hits come from the file, misses are generated ``chunk_size``
    at a time and appended as each chunk finishes (so a killed run loses at most one chunk). Keys are computed
    here from the backend's fingerprint (``Request.key`` is not trusted for this). Failed requests are not
    cached: their errors may be transient (out of memory), and failing again is cheap."""
    if cache is None or not cacheable(params):
        return backend.generate(requests, params, progress=progress)
    fp = backend.fingerprint()
    keys = [request_key(fp, backend.name, params, r.messages) for r in requests]
    results: list[Result | None] = [None] * len(requests)
    missing: list[int] = []
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        record = cache.get(key)
        if record is not None:
            results[i] = record_result(record)
        elif key in first:  # the same request twice in one run: generate it once
            continue
        else:
            first[key] = i
            missing.append(i)
    if progress and len(missing) < len(requests):
        progress(sum(r is not None for r in results))
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start : start + chunk_size]
        out = backend.generate([requests[i] for i in chunk], params, progress=progress)
        cache.put_many((keys[i], result_record(r)) for i, r in zip(chunk, out, strict=True) if r.ok)
        for i, r in zip(chunk, out, strict=True):
            results[i] = r
    for i, key in enumerate(keys):
        if results[i] is None:  # a duplicate of an earlier request
            results[i] = results[first[key]]
            if progress:
                progress(1)
    return results  # type: ignore[return-value]
