"""The per-step rollout log (``<output_dir>/rollouts.jsonl``): building its records; append-only JSONL logs.

The schema -- every field and its meaning, the version, the writer that turns a record into its line with
``"tokens"`` last, and the header parser readers use -- lives in :mod:`xopd.rollout_schema` (torch-free,
shared with :mod:`analysis.logs`). This module builds the records (:func:`rollout_record`, which needs the
tokenizer for the token pieces) and copies the audio they refer to. All lines of a step are appended in one
write followed by fsync, after that step's optimizer update; a :class:`StepLog` whose file is
``rollouts.jsonl`` writes each record through :func:`xopd.rollout_schema.rollout_line`.

Resume: a checkpoint stores each log's byte size after its step; resuming truncates the file to that size
(falling back to dropping every record whose ``step`` is later than the checkpoint's), so a killed run leaves
neither duplicated nor missing steps. :class:`StepLog` does the same for ``metrics.jsonl`` and ``eval.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xopd.paths import atomic_write_bytes
from xopd.rollout_schema import LP_DIGITS, ROLLOUT_LOG, SCHEMA_VERSION, rollout_line

__all__ = [
    "SCHEMA_VERSION",
    "StepLog",
    "copy_audio",
    "json_line",
    "read_records",
    "rollout_line",
    "rollout_record",
    "token_pieces",
]


def json_line(record: Mapping[str, Any]) -> str:
    """A record of a metrics / eval log as its JSON line (newline included), keys in the record's order."""
    return json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n"


class StepLog:
    """An append-only JSONL of records that carry a ``step``: batched append + fsync, truncation on resume.

    ``encode`` turns a record into its line; by default :func:`~xopd.rollout_schema.rollout_line` for the
    rollout log (a file named ``rollouts.jsonl``: the schema's layout, ``"tokens"`` last) and
    :func:`json_line` for any other log.
    """

    def __init__(self, path: str | Path, encode: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.encode = encode or (rollout_line if self.path.name == ROLLOUT_LOG else json_line)

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append ``records`` in one write, then flush and fsync: a crash leaves at most one partial line."""
        if not records:
            return
        data = "".join(self.encode(r) for r in records).encode("utf-8")
        with open(self.path, "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_to(self, step: int, size: int | None = None) -> None:
        """Drop everything written after ``step``: cut at ``size`` bytes when that offset is a record boundary
        whose last record is at most ``step`` (O(1)); else rewrite the file keeping records of steps <= step.
        """
        if not self.path.exists():
            return
        if size is not None and self._is_boundary(size, step):
            with open(self.path, "r+b") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())
            return
        kept = [r for r in read_records(self.path) if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write("".join(self.encode(r) for r in kept).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _is_boundary(self, size: int, step: int) -> bool:
        total = self.size()
        if size > total:
            return False
        if size == 0:
            return True
        with open(self.path, "rb") as fh:
            # the last record before the cut must lie within the preceding MiB, else we fall back
            start = max(0, size - (1 << 20))
            fh.seek(start)
            head = fh.read(size - start)
        if not head.endswith(b"\n"):
            return False
        last = head[:-1].rsplit(b"\n", 1)[-1]
        try:
            return int(json.loads(last).get("step", 0)) <= step
        except ValueError:
            return False

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path))


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL log; a trailing partial line (a write cut by a crash) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            line = raw.strip()
            if line:
                yield json.loads(line)


# ------------------------------------------------------------------------------------------------------------
# building records
# ------------------------------------------------------------------------------------------------------------


def token_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Text of each token such that the pieces concatenate to the decoded sequence.

    Each token is decoded in the context of a few earlier ones (SentencePiece drops a leading space when a
    token is decoded alone), and a token that ends inside a multi-byte character (decoding to U+FFFD) gets
    ``""``: the character goes whole to the token that completes it (tinker-cookbook's colorizer broke on
    this).
    """
    ids = [int(i) for i in ids]
    pieces: list[str] = []
    start = 0  # first token whose text has not been emitted yet
    for i in range(len(ids)):
        anchor = max(0, start - 4)
        before = tokenizer.decode(ids[anchor:start], skip_special_tokens=False) if start > anchor else ""
        full = tokenizer.decode(ids[anchor : i + 1], skip_special_tokens=False)
        if full.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # incomplete character: wait for the token that finishes it
            continue
        pieces.append(full[len(before) :] if full.startswith(before) else full)
        start = i + 1
    return pieces


def copy_audio(out_dir: str | Path, path: str | None, done: dict[str, str] | None = None) -> str | None:
    """Copy the WAV at ``path`` into ``out_dir/audio/<content hash>.wav`` and return that path relative to
    ``out_dir`` (None for None): a log directory is self-contained, so an explorer confined to it can play
    every spoken prompt. ``done`` memoises source path -> relative path across calls."""
    if path is None:
        return None
    if done is not None and path in done:
        return done[path]
    data = Path(path).read_bytes()
    rel = f"audio/{hashlib.sha256(data).hexdigest()[:20]}{Path(path).suffix or '.wav'}"
    if not (Path(out_dir) / rel).exists():
        atomic_write_bytes(Path(out_dir) / rel, data)
    if done is not None:
        done[path] = rel
    return rel


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), LP_DIGITS)


def rollout_record(
    *,
    step: int,
    kind: str,
    prompt_id: str,
    modality: str,
    sample: int,
    prompt_text: str,
    spoken_text: str | None,
    audio_path: str | None,
    variant: str | None,
    token_ids: Sequence[int],
    student_lp: Sequence[float],
    teacher_lp: Sequence[float],
    advantage: Sequence[float],
    sampler_lp: Sequence[float] | None,
    finished: bool,
    tokenizer: Any,
    topk_ids: Sequence[Sequence[int]] | None = None,
    topk_lp: Sequence[Sequence[float]] | None = None,
    student_entropy: Sequence[float] | None = None,
    teacher_entropy: Sequence[float] | None = None,
) -> dict[str, Any]:
    """One rollout record, keys in :data:`~xopd.rollout_schema.RECORD_KEYS` order (every field is described in
    :mod:`xopd.rollout_schema`); :func:`~xopd.rollout_schema.rollout_line` turns it into its line."""
    t = len(token_ids)
    for name, seq in (("student_lp", student_lp), ("teacher_lp", teacher_lp), ("advantage", advantage)):
        if len(seq) != t:
            raise ValueError(f"rollout record {prompt_id!r}: {name} has {len(seq)} values for {t} tokens")
    pieces = token_pieces(tokenizer, token_ids)
    tokens: dict[str, Any] = {
        "id": [int(i) for i in token_ids],
        "piece": pieces,
        "student_lp": [_r(x) for x in student_lp],
        "teacher_lp": [_r(x) for x in teacher_lp],
        "sampler_lp": [_r(x) for x in sampler_lp] if sampler_lp is not None else None,
        "advantage": [_r(x) for x in advantage],
    }
    for name, seq in (("student_entropy", student_entropy), ("teacher_entropy", teacher_entropy)):
        if seq is not None:
            if len(seq) != t:
                raise ValueError(f"rollout record {prompt_id!r}: {name} has {len(seq)} values for {t} tokens")
            tokens[name] = [_r(x) for x in seq]
    if topk_ids is not None and topk_lp is not None and len(topk_ids) and len(topk_ids[0]):
        tokens["teacher_topk"] = {
            "id": [[int(i) for i in row] for row in topk_ids],
            "piece": [
                [tokenizer.decode([int(i)], skip_special_tokens=False) for i in row] for row in topk_ids
            ],
            "lp": [[_r(x) for x in row] for row in topk_lp],
        }
    kl = sum(float(s) - float(q) for s, q in zip(student_lp, teacher_lp, strict=True)) / t if t else 0.0
    return {
        "schema": SCHEMA_VERSION,
        "step": int(step),
        "kind": kind,
        "prompt_id": prompt_id,
        "modality": modality,
        "sample": int(sample),
        "prompt_text": prompt_text,
        "spoken_text": spoken_text,
        "audio_path": audio_path,
        "variant": variant,
        "completion": "".join(pieces),
        "finished": bool(finished),
        "num_tokens": t,
        "reverse_kl": _r(kl),
        "tokens": tokens,
    }
