"""What every page shares: the log directory, the chosen run, and cached, read-only access to its files.

Caches are keyed by each file's path, size and modification time, so a log the trainer is still appending to
is re-indexed when it grows and never otherwise; the rollout log is indexed from line headers
(:class:`analysis.logs.RolloutLog`), so a 10,000-rollout log opens without parsing any token array, and a
record is read by byte offset when a page shows it. Nothing here writes: not into the log directory, not
anywhere (Streamlit's caches live in memory).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from analysis.logs import LogEntry, LogError, RolloutLog, RunDir, read_jsonl, resolve_inside

ENV_LOGDIR = "XOPD_APP_LOGDIR"  # set by xopd-app beside --logdir; the way tests (AppTest) pass a logdir
RUN_KEY = "xo_run"  # session-state key of the chosen run (a path relative to the logdir)
MAX_PROBLEMS_SHOWN = 5


def logdir(argv: Sequence[str] | None = None) -> Path:
    """The ``--logdir`` after ``--`` on the ``streamlit run`` line, else ``$XOPD_APP_LOGDIR``; LogError when
    neither is given or it is not a directory."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--logdir")
    args, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    given = args.logdir or os.environ.get(ENV_LOGDIR)
    if not given:
        raise LogError(f"no log directory: start the explorer with `xopd-app --logdir DIR` (or set "
                       f"{ENV_LOGDIR})")
    return RunDir(given).root  # LogError when missing or not a directory


def run_root() -> Path:
    """The chosen run's directory (set by the explorer script before the page runs), checked to lie inside
    the log directory."""
    root = logdir()
    rel = st.session_state.get(RUN_KEY, ".")
    return resolve_inside(root, rel)


def current_run() -> RunDir:
    return RunDir(run_root())


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        s = path.stat()
    except OSError:
        return None
    return s.st_size, s.st_mtime_ns


@st.cache_resource(max_entries=16, show_spinner="Indexing the rollout log…")
def _open_log(path: str, size: int, mtime_ns: int) -> RolloutLog:
    return RolloutLog.open(path)


def rollout_log(run: RunDir) -> RolloutLog | None:
    """The run's indexed rollout log (None when it has none); LogError when it cannot be read."""
    path = resolve_inside(run.root, "rollouts.jsonl")
    sig = _stat(path) if path.is_file() else None
    return None if sig is None else _open_log(str(path), *sig)


def require_rollout_log(run: RunDir, missing: str = "") -> RolloutLog:
    """The run's rollout log, or an error / info box in the page and the script stopped."""
    try:
        log = rollout_log(run)
    except LogError as exc:
        st.error(f"Cannot open the rollout log: {exc}")
        st.stop()
    if log is None:
        st.info(f"No `rollouts.jsonl` in `{run.root}`{missing}")
        st.stop()
    return log


@st.cache_resource(max_entries=64, show_spinner=False)
def _read(path: str, size: int, mtime_ns: int, entry: LogEntry) -> dict[str, Any]:
    return _open_log(path, size, mtime_ns).read(entry)


def read_record(log: RolloutLog, entry: LogEntry) -> dict[str, Any]:
    """The full record of ``entry`` (cached; shared, so callers must not modify it); LogError when bad."""
    sig = _stat(log.path)
    if sig is None:
        raise LogError(f"{log.path} has disappeared")
    return _read(str(log.path), *sig, entry)


@st.cache_data(max_entries=32, show_spinner=False)
def _jsonl(path: str, size: int, mtime_ns: int) -> tuple[list[dict[str, Any]], list[str]]:
    return read_jsonl(Path(path))


def step_log(run: RunDir, name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Records and problems of ``metrics.jsonl`` / ``eval.jsonl`` (empty when the run has none)."""
    path = resolve_inside(run.root, name)
    sig = _stat(path) if path.is_file() else None
    return ([], []) if sig is None else _jsonl(str(path), *sig)


def audio_bytes(run: RunDir, rel: str) -> bytes:
    """The bytes of a record's ``audio_path``; LogError when it leads outside the run or does not exist."""
    path = run.audio(rel)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise LogError(f"cannot read audio {rel!r}: {exc.strerror or exc}") from None


def show_problems(problems: Sequence[str], *, what: str) -> None:
    """Problems found while reading a log, as one warning (the first few lines, the rest counted)."""
    if not problems:
        return
    shown = "\n".join(f"- {p}" for p in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    tail = f"\n- … and {more} more" if more > 0 else ""
    st.warning(f"**{what}: {len(problems)} problem(s); those lines are skipped.**\n\n{shown}{tail}", icon="⚠️")
