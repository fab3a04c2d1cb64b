"""Lazy, safe, read-only access to a trainer output directory and its rollout log.

:class:`RolloutLog` indexes ``rollouts.jsonl`` (schema, writer and header parser in
:mod:`xopd.rollout_schema`) without parsing the per-token arrays: the file is scanned through ``mmap`` for
newlines, each line's header is read by :func:`~xopd.rollout_schema.parse_header` (only the bytes before
``"tokens"`` for a line in the writer's layout, the whole line otherwise), and a record is read in full only
when asked for (:meth:`RolloutLog.read`), by byte offset. Bad lines (truncated, not JSON, wrong schema) become
human-readable ``problems`` and are skipped: a log the trainer is still writing opens fine.

:class:`RunDir` is the view of a whole run directory the explorer and ``xopd-eval divergence --logdir`` use.
Every path it opens goes through :func:`resolve_inside`, so nothing outside the directory is ever read (a
symlink or ``..`` that leads out is refused), and nothing is ever written there.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evalsuite.reports import read_report
from xopd.rollout_schema import (
    OPTIONAL_ARRAYS,
    REQUIRED_ARRAYS,
    REQUIRED_KEYS,
    ROLLOUT_LOG,
    SCHEMA_VERSION,
    TOKENS,
    TOPK,
    TOPK_PARTS,
    parse_header,
)


class LogError(ValueError):
    """A log or path that cannot be used; the message names the file (and line) and what is wrong."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One ``rollouts.jsonl`` line, from its header only (the token arrays stay on disk)."""

    line: int  # 1-based line number
    offset: int  # byte offset of the line's first byte
    length: int  # bytes, without the newline
    step: int
    kind: str
    prompt_id: str
    modality: str
    sample: int
    num_tokens: int
    reverse_kl: float | None
    finished: bool


# ------------------------------------------------------------------------------------------------------------
# header checks
# ------------------------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


# the value check of each REQUIRED_KEYS field of the header (tests pin that every one has a check)
_HEADER_CHECKS = {
    "step": _is_int,
    "kind": lambda v: isinstance(v, str),
    "prompt_id": lambda v: isinstance(v, str),
    "modality": lambda v: isinstance(v, str),
    "sample": _is_int,
    "num_tokens": lambda v: _is_int(v) and v >= 0,
    "reverse_kl": lambda v: v is None or _is_num(v),
    "finished": lambda v: isinstance(v, bool),
}


def _entry_from_header(head: Any, line: int, offset: int, length: int) -> LogEntry:
    """The :class:`LogEntry` of a parsed header; ValueError says which field is wrong."""
    if not isinstance(head, dict):
        raise ValueError(f"not a JSON object but {type(head).__name__}")
    if head.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"schema {head.get('schema')!r}, this reader knows schema {SCHEMA_VERSION}")
    for key in REQUIRED_KEYS:
        if key in ("schema", TOKENS):
            continue  # checked above / by check_record (the header has no tokens)
        ok = _HEADER_CHECKS[key]
        if key not in head:
            raise ValueError(f"no {key!r} field")
        if not ok(head[key]):
            raise ValueError(f"field {key!r} has a bad value {head[key]!r}")
    kl = head["reverse_kl"]
    return LogEntry(
        line=line,
        offset=offset,
        length=length,
        step=head["step"],
        kind=head["kind"],
        prompt_id=head["prompt_id"],
        modality=head["modality"],
        sample=head["sample"],
        num_tokens=head["num_tokens"],
        reverse_kl=None if kl is None else float(kl),
        finished=head["finished"],
    )


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """``rec`` if it is a schema-1 rollout record with consistent token arrays, else :class:`LogError`."""
    try:
        _entry_from_header(rec, 0, 0, 0)
    except ValueError as exc:
        raise LogError(f"{where}: {exc}") from None
    t = rec["num_tokens"]
    tokens = rec.get(TOKENS)
    if not isinstance(tokens, dict):
        raise LogError(f"{where}: no {TOKENS!r} object")
    for key in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
        if key not in tokens or (key in OPTIONAL_ARRAYS and tokens[key] is None):
            if key in REQUIRED_ARRAYS:
                raise LogError(f"{where}: tokens has no {key!r} array")
            continue
        arr = tokens[key]
        if not isinstance(arr, list) or len(arr) != t:
            n = len(arr) if isinstance(arr, list) else type(arr).__name__
            raise LogError(f"{where}: tokens.{key} has {n} values for num_tokens={t}")
    topk = tokens.get(TOPK)
    if topk is not None:
        if not isinstance(topk, dict) or any(not isinstance(topk.get(k), list) for k in TOPK_PARTS):
            parts = ", ".join(map(repr, TOPK_PARTS[:-1])) + f" and {TOPK_PARTS[-1]!r}"
            raise LogError(f"{where}: tokens.{TOPK} must hold {parts} lists")
        for k in TOPK_PARTS:
            if len(topk[k]) != t:
                raise LogError(f"{where}: tokens.{TOPK}.{k} has {len(topk[k])} rows for {t} tokens")
    return rec


# ------------------------------------------------------------------------------------------------------------
# the rollout log
# ------------------------------------------------------------------------------------------------------------


class RolloutLog:
    """An index of ``rollouts.jsonl``: one :class:`LogEntry` per good line; ``problems`` for the others."""

    def __init__(self, path: Path, entries: list[LogEntry], problems: list[str]) -> None:
        self.path = path
        self.entries = entries
        self.problems = problems

    @classmethod
    def open(cls, path: str | Path) -> RolloutLog:
        """Index the log at ``path`` (headers only); LogError when it cannot be read at all."""
        path = Path(path)
        name = path.name
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise LogError(f"cannot read rollout log {path}: {exc.strerror or exc}") from None
        entries: list[LogEntry] = []
        problems: list[str] = []
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return cls(path, entries, [f"{name}: empty (no rollouts logged yet)"])
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos, line = 0, 0
                while pos < size:
                    line += 1
                    nl = mm.find(b"\n", pos)
                    end = size if nl < 0 else nl
                    raw = mm[pos:end]
                    offset, pos = pos, end + 1
                    if not raw.strip():
                        continue
                    where = f"{name} line {line}"
                    if nl < 0:
                        # no newline: the trainer appends whole lines, so this one is still being written --
                        # unless it is complete JSON (a hand-written file without a final newline)
                        try:
                            json.loads(raw)
                        except ValueError:
                            problems.append(f"{where}: truncated (the run may still be writing it)")
                            continue
                    try:
                        head = parse_header(raw)
                    except ValueError as exc:
                        problems.append(f"{where}: not JSON: {exc}")
                        continue
                    try:
                        entries.append(_entry_from_header(head, line, offset, len(raw)))
                    except ValueError as exc:
                        problems.append(f"{where}: {exc}")
        return cls(path, entries, problems)

    def __len__(self) -> int:
        return len(self.entries)

    def steps(self) -> list[int]:
        return sorted({e.step for e in self.entries})

    def modalities(self) -> list[str]:
        return sorted({e.modality for e in self.entries})

    def prompt_ids(self) -> list[str]:
        return sorted({e.prompt_id for e in self.entries})

    def select(
        self, *, step: int | None = None, modality: str | None = None, prompt_id: str | None = None
    ) -> list[LogEntry]:
        """Entries matching every given filter, in file order."""
        return [
            e
            for e in self.entries
            if (step is None or e.step == step)
            and (modality is None or e.modality == modality)
            and (prompt_id is None or e.prompt_id == prompt_id)
        ]

    def _read_at(self, fh: Any, entry: LogEntry) -> dict[str, Any]:
        where = f"{self.path} line {entry.line}"
        fh.seek(entry.offset)
        raw = fh.read(entry.length)
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            changed = "the file may have changed since it was opened"
            raise LogError(f"{where}: not JSON ({exc}); {changed}") from None
        rec = check_record(rec, where)
        if (rec["step"], rec["prompt_id"], rec["modality"], rec["sample"]) != (
            entry.step,
            entry.prompt_id,
            entry.modality,
            entry.sample,
        ):
            raise LogError(
                f"{where}: the file changed since it was opened (a resumed run rewrote it); reopen it"
            )
        return rec

    def read(self, entry: LogEntry) -> dict[str, Any]:
        """The full record of ``entry``, schema-checked (schema 1, token arrays of num_tokens values)."""
        try:
            with open(self.path, "rb") as fh:
                return self._read_at(fh, entry)
        except OSError as exc:
            raise LogError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def iter_records(
        self, entries: Iterable[LogEntry] | None = None, *, problems: list[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Full records of ``entries`` (default: all), one file handle for all of them. A bad record raises
        :class:`LogError`, or, when a ``problems`` list is given, is noted there and skipped."""
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            raise LogError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with fh:
            for e in self.entries if entries is None else entries:
                try:
                    yield self._read_at(fh, e)
                except LogError as exc:
                    if problems is None:
                        raise
                    problems.append(str(exc))


# ------------------------------------------------------------------------------------------------------------
# the run directory
# ------------------------------------------------------------------------------------------------------------


def resolve_inside(root: str | Path, rel: str | Path) -> Path:
    """``root / rel`` with symlinks resolved; LogError when it is absolute or lands outside ``root``."""
    root_r = Path(root).resolve()
    text = str(rel)
    if "\x00" in text:
        raise LogError(f"path {text!r} contains a NUL byte")
    if Path(text).is_absolute():
        raise LogError(f"path {text!r} is absolute; only paths inside {root_r} are read")
    target = (root_r / text).resolve()
    if target != root_r and not target.is_relative_to(root_r):
        raise LogError(f"path {text!r} leads outside {root_r} (to {target}); refused")
    return target


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a small JSONL log (metrics, eval) and problems for lines that are not JSON objects; a
    missing file gives ``([], [])``."""
    if not path.exists():
        return [], []
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [f"{path.name}: cannot read ({exc.strerror or exc})"]
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            last = n == len(lines)  # no newline after it: still being written
            what = "truncated (the run may still be writing it)" if last else f"not JSON: {exc}"
            problems.append(f"{where}: {what}")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        records.append(rec)
    return records, problems


_STEP_PART = re.compile(r"step-(\d+)")


def step_of(path: Path) -> int | None:
    """The step of a ``.../step-NNNNNN/...`` path (the innermost such part), else None."""
    for part in reversed(path.parts):
        m = _STEP_PART.fullmatch(part)
        if m:
            return int(m.group(1))
    return None


class RunDir:
    """Read-only view of a trainer output directory (or an ``xopd-eval divergence`` output directory)."""

    def __init__(self, root: str | Path) -> None:
        given = Path(root)
        if not given.exists():
            raise LogError(f"log directory {given} does not exist")
        if not given.is_dir():
            raise LogError(f"log directory {given} is not a directory")
        self.root = given.resolve()
        self.report_problems: list[str] = []  # filled by reports()

    def _file(self, name: str) -> Path | None:
        path = resolve_inside(self.root, name)
        return path if path.is_file() else None

    def rollouts(self) -> RolloutLog | None:
        """The indexed rollout log; None when the directory has no ``rollouts.jsonl``."""
        path = self._file(ROLLOUT_LOG)
        return None if path is None else RolloutLog.open(path)

    def metrics(self) -> tuple[list[dict[str, Any]], list[str]]:
        path = self._file("metrics.jsonl")
        return read_jsonl(path) if path else ([], [])

    def evals(self) -> tuple[list[dict[str, Any]], list[str]]:
        path = self._file("eval.jsonl")
        return read_jsonl(path) if path else ([], [])

    def config(self) -> dict[str, Any] | None:
        """The run's ``config.yaml`` (None when absent); LogError when it is not a YAML mapping."""
        path = self._file("config.yaml")
        if path is None:
            return None
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise LogError(f"{path}: cannot read the run config: {exc}") from None
        if not isinstance(cfg, dict):
            raise LogError(f"{path}: the run config is not a mapping")
        return cfg

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` (trainer or ``xopd-eval divergence``), None when absent or unreadable."""
        path = self._file("summary.json")
        if path is None:
            return None
        try:
            out = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return out if isinstance(out, dict) else None

    def reports(self, problems: list[str] | None = None) -> list[tuple[int | None, Path, dict[str, Any]]]:
        """xopd-eval gap/forgetting ``report.json`` files under the directory, by step (from a
        ``step-NNNNNN`` part of the path; None sorts last). Unreadable ones are skipped and described in
        ``problems`` (when given) and in ``self.report_problems``."""
        found: list[tuple[int | None, Path, dict[str, Any]]] = []
        noted: list[str] = []
        # os.walk does not follow directory symlinks; each file is still checked to resolve inside root
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skip atomic_dir scratch copies
            if "report.json" not in files:
                continue
            rel = (Path(folder) / "report.json").relative_to(self.root)
            try:
                path = resolve_inside(self.root, rel)
                report = read_report(path)
            except (LogError, ValueError, OSError) as exc:
                noted.append(f"{rel}: {exc}")
                continue
            found.append((step_of(rel), path, report))
        self.report_problems = noted
        if problems is not None:
            problems.extend(noted)
        found.sort(key=lambda r: (r[0] is None, r[0] if r[0] is not None else 0, str(r[1])))
        return found

    def audio(self, rel: str) -> Path:
        """The audio file at ``rel`` (a record's ``audio_path``), inside the directory and existing."""
        path = resolve_inside(self.root, rel)
        if not path.is_file():
            raise LogError(f"audio file {rel!r} does not exist in {self.root}")
        return path

