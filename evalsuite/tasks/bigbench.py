"""BIG-bench tasks, read from the ``task.json`` files inside the ``bigbench==1.0.0`` sdist on PyPI.

The package is never installed (it pins old TensorFlow-era dependencies); we download its sdist once with
``pip download``, stream through the tarball and keep only the ``task.json`` files we use, under
``$XOPD_HOME/data/bigbench/<task>/[<subtask>/]task.json``. Each task folder appears in one atomic rename,
so a killed extraction never leaves a task that looks complete. The sdist is ~358 MB and the download plus
one pass over it takes minutes; the six built-in tasks are therefore extracted together, in one pass.

Set ``XOPD_BIGBENCH_SDIST`` to a local ``bigbench-1.0.0.tar.gz`` to skip the download (or drop one in
``$XOPD_HOME/downloads/``).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from evalsuite.tasks.source import Row
from evalsuite.tasks.spec import BigBenchSource
from xopd.paths import atomic_dir, atomic_write_text, file_lock, xopd_home

SDIST_REQUIREMENT = "bigbench==1.0.0"
SDIST_NAME = "bigbench-1.0.0.tar.gz"
# The tasks the built-in task files use; extracted together so the sdist is read once.
BUILTIN_TASKS = (
    "navigate",
    "object_counting",
    "formal_fallacies_syllogisms_negation",
    "causal_judgment",
    "sports_understanding",
    "arithmetic",
)
_NAME = re.compile(r"[A-Za-z0-9_]+")


class BigBenchError(RuntimeError):
    """The sdist could not be fetched, or a task or subtask is not in it."""


def data_dir() -> Path:
    return xopd_home() / "data" / "bigbench"


def _present(task: str) -> bool:
    return (data_dir() / task / "task.json").is_file()


def ensure_tasks(tasks: Iterable[str] = ()) -> Path:
    """Make sure the built-in tasks and ``tasks`` are extracted; return the data folder.

    Only what is missing is extracted, in one pass over the sdist, under a lock so two processes never
    download it at once.
    """
    wanted = set(BUILTIN_TASKS) | set(tasks)
    for t in wanted:
        if not _NAME.fullmatch(t):
            raise BigBenchError(f"invalid BIG-bench task name {t!r}")
    if all(_present(t) for t in wanted):
        return data_dir()
    index = data_dir() / "index.json"  # every task name in the sdist, written on the first pass
    if index.is_file():
        known = set(json.loads(index.read_text(encoding="utf-8")))
        unknown = sorted(wanted - known)
        if unknown:
            close = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
            raise BigBenchError(f"{SDIST_REQUIREMENT} has no task(s) {unknown}; close names: {close}")
    with file_lock(data_dir().parent / ".bigbench.lock"):
        missing = sorted(t for t in wanted if not _present(t))  # another process may have finished meanwhile
        if missing:
            with _sdist() as tarball:
                found, every = _extract(tarball, missing)
            atomic_write_text(data_dir() / "index.json", json.dumps(sorted(every)))
            atomic_write_text(
                data_dir() / "SOURCE.txt",
                f"task.json files from the {SDIST_REQUIREMENT} sdist on PyPI (Apache-2.0), "
                "https://github.com/google/BIG-bench\n",
            )
            absent = sorted(set(missing) - found)
            if absent:
                raise BigBenchError(f"{SDIST_REQUIREMENT} has no task(s) {absent}")
    return data_dir()


@contextlib.contextmanager
def _sdist() -> Iterator[Path]:
    """Yield the sdist tarball: a local copy if one is known, else one downloaded to a temporary folder."""
    env = os.environ.get("XOPD_BIGBENCH_SDIST")
    for candidate in [Path(env).expanduser()] if env else [xopd_home() / "downloads" / SDIST_NAME]:
        if candidate.is_file():
            yield candidate
            return
    if env:
        raise BigBenchError(f"XOPD_BIGBENCH_SDIST={env} does not exist")
    with tempfile.TemporaryDirectory(prefix="xopd-bigbench-") as tmp:
        print(
            f"xopd: downloading the {SDIST_REQUIREMENT} sdist (~358 MB, once) for its task files ...",
            file=sys.stderr,
        )
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               SDIST_REQUIREMENT, "-d", tmp, "--quiet"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        tarballs = sorted(Path(tmp).glob("bigbench-*.tar.gz"))
        if proc.returncode != 0 or not tarballs:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise BigBenchError(
                f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {tail}\n"
                f"Without PyPI access, put {SDIST_NAME} in {xopd_home() / 'downloads'} "
                "or set XOPD_BIGBENCH_SDIST."
            )
        print(f"xopd: downloaded {tarballs[0].name} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        yield tarballs[0]


def _extract(tarball: Path, tasks: list[str]) -> tuple[set[str], set[str]]:
    """One streaming pass over the tarball; returns (tasks found and written atomically, every task name)."""
    wanted = set(tasks)
    every: set[str] = set()
    files: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(tarball, mode="r|gz") as tf:
            for member in tf:
                parts = member.name.split("/")
                if not member.isfile() or parts[-1] != "task.json" or "benchmark_tasks" not in parts:
                    continue
                rel = parts[parts.index("benchmark_tasks") + 1 :]
                if len(rel) == 2:
                    every.add(rel[0])
                if (
                    rel[0] not in wanted
                    or len(rel) not in (2, 3)
                    or not all(_NAME.fullmatch(p) for p in rel[:-1])
                ):
                    continue
                fh = tf.extractfile(member)
                if fh is not None:
                    files.setdefault(rel[0], {})["/".join(rel[1:])] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BigBenchError(f"{tarball} is not a readable sdist tarball: {e}") from e
    for task, members in files.items():
        with atomic_dir(data_dir() / task) as tmp:
            for rel, data in members.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
    return set(files), every


def subtasks(task: str) -> list[str]:
    """The subtask folders of an extracted task (``arithmetic`` has ``1_digit_addition`` and so on)."""
    ensure_tasks([task])
    root = data_dir() / task
    return sorted(p.parent.name for p in root.glob("*/task.json"))


def _clean(text: str) -> str:
    """Trim every line and drop blank ones: BIG-bench inputs carry stray indentation and blank lines."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def parse_task_json(path: Path, *, task: str, subtask: str = "") -> list[Row]:
    """Rows from one BIG-bench ``task.json``: ``input`` plus ``target`` (free form) and/or ``target_scores``
    (options in order; the best-scored ones are gold). Parsed once per process and file version: trainers
    and evaluations load the same task several times (train, test, limits)."""
    st = path.stat() if path.exists() else None
    return list(_parse_cached(path, st.st_mtime_ns if st else 0, st.st_size if st else 0, task, subtask))


@functools.lru_cache(maxsize=16)
def _parse_cached(path: Path, _mtime_ns: int, _size: int, task: str, subtask: str) -> tuple[Row, ...]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BigBenchError(f"{path}: cannot read BIG-bench task file: {e}") from e
    examples = doc.get("examples")
    if not isinstance(examples, list):
        raise BigBenchError(f"{path}: no 'examples' list")
    rows = []
    for i, ex in enumerate(examples):
        where = f"{path}: example {i}"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or not ex["input"].strip():
            raise BigBenchError(f"{where}: needs a non-empty string 'input'")
        answers: tuple[Any, ...] = ()
        choices: tuple[str, ...] = ()
        if "target_scores" in ex:
            scores = ex["target_scores"]
            if not isinstance(scores, dict) or not scores:
                raise BigBenchError(f"{where}: 'target_scores' must be a non-empty mapping")
            choices = tuple(str(k) for k in scores)
            best = max(scores.values())
            if best <= 0:
                raise BigBenchError(f"{where}: no option has a positive score")
            answers = tuple(str(k) for k, v in scores.items() if v == best)
        if "target" in ex:
            target = ex["target"]
            answers = tuple(target) if isinstance(target, list) else (target,)
        if not answers:
            raise BigBenchError(f"{where}: needs 'target' or 'target_scores'")
        local = f"{subtask}/{i:04d}" if subtask else f"{i:04d}"
        meta = {"source": f"bigbench:{task}" + (f"/{subtask}" if subtask else ""), "index": i}
        rows.append(
            Row(local_id=local, question=_clean(ex["input"]), answers=answers, choices=choices, meta=meta)
        )
    return tuple(rows)


def load_rows(src: BigBenchSource) -> list[Row]:
    """All rows of a task (or of the chosen subtasks, in the order given)."""
    ensure_tasks([src.task])
    root = data_dir() / src.task
    available = subtasks(src.task)
    names = list(src.subtasks) or available  # a task made of subtasks (arithmetic) means all of them
    if not names:
        return parse_task_json(root / "task.json", task=src.task)
    rows: list[Row] = []
    for sub in names:
        if sub not in available:
            raise BigBenchError(f"BIG-bench task {src.task!r} has no subtask {sub!r}; available: {available}")
        rows += parse_task_json(root / sub / "task.json", task=src.task, subtask=sub)
    return rows
