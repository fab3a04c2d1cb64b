"""BIG-bench tasks: an OPTIONAL source, with three ways in. Nothing is downloaded from PyPI.

A task (and its subtasks, e.g. ``arithmetic/1_digit_addition``) is looked for, in this order, in:

1. a BIG-bench git checkout, ``XOPD_BIGBENCH_DIR`` = the repository root, its ``bigbench/`` package folder
   or ``bigbench/benchmark_tasks``; ``<task>/[<subtask>/]task.json`` is read in place;
2. the cache ``$XOPD_HOME/data/bigbench/<task>/[<subtask>/]task.json`` (what an sdist left there);
3. the ``bigbench-1.0.0.tar.gz`` sdist, ``XOPD_BIGBENCH_SDIST`` = its path, else
   ``$XOPD_HOME/downloads/bigbench-1.0.0.tar.gz``. One streaming pass copies the asked task's ``task.json``
   files into the cache, each task folder in one atomic rename (a killed extraction never leaves a task that
   looks complete); ``index.json`` remembers every task name in the tarball, so an unknown name fails at
   once next time. (PyPI no longer serves this sdist: only a copy you already have works.)
4. the Hugging Face dataset in lm-evaluation-harness's form: ``hails/bigbench``, config ``<task>_zero_shot``,
   split ``default`` (columns ``idx``, ``inputs``, ``targets``, ``multiple_choice_targets``,
   ``multiple_choice_scores``), loaded with ``datasets.load_dataset``. ``XOPD_BIGBENCH_HF`` = another hub id
   or a local folder: a copy of the hub repository (``<task>_zero_shot/default-*.parquet``; ``.jsonl`` works
   too) or ``DatasetDict.save_to_disk`` output per config (``<task>_zero_shot/dataset_dict.json``). The hub
   itself is not tried with ``XOPD_OFFLINE=1``. Its rows carry no subtask names, so a task file that picks
   subtasks needs way 1, 2 or 3; and its ``inputs`` are BIG-bench's formatted zero-shot prompts, from which
   the ``Q:`` prefix, the appended ``choice:`` lines and the trailing ``A:`` are removed.

When none has the task, :class:`BigBenchError` lists every place tried, why each failed, and how to
provide one. Only the asked task is ever read or extracted.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalsuite.tasks.source import Row
from evalsuite.tasks.spec import BigBenchSource
from xopd.offline import OfflineError, check_online
from xopd.paths import atomic_dir, atomic_write_text, file_lock, xopd_home

SDIST_NAME = "bigbench-1.0.0.tar.gz"
HUB_DATASET = "hails/bigbench"
HUB_SPLIT = "default"
ENV_DIR = "XOPD_BIGBENCH_DIR"
ENV_SDIST = "XOPD_BIGBENCH_SDIST"
ENV_HF = "XOPD_BIGBENCH_HF"
_NAME = re.compile(r"[A-Za-z0-9_]+")


class BigBenchError(RuntimeError):
    """No source has the task (the message lists what was tried), a subtask is missing, or a file is bad."""


class _Miss(Exception):
    """One way in does not have the task; the message says why (it goes into the final error's list)."""


@dataclass
class _Tried:
    where: str
    why: str


def data_dir() -> Path:
    return xopd_home() / "data" / "bigbench"


def _close(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; close names: {', '.join(close)}" if close else ""


# --- task.json files ---------------------------------------------------------------------------------------


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
    examples = doc.get("examples") if isinstance(doc, dict) else None
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


def _has_task_files(folder: Path) -> bool:
    return (folder / "task.json").is_file() or any(folder.glob("*/task.json"))


def _folder_rows(root: Path, src: BigBenchSource, where: str) -> list[Row]:
    """Rows of ``root/<task>`` (a task folder laid out as BIG-bench does), or of its chosen subtasks."""
    task_dir = root / src.task
    available = sorted(p.parent.name for p in task_dir.glob("*/task.json"))
    names = list(src.subtasks) or available  # a task made of subtasks (arithmetic) means all of them
    if not names:
        return parse_task_json(task_dir / "task.json", task=src.task)
    rows: list[Row] = []
    for sub in names:
        if sub not in available:
            raise BigBenchError(
                f"BIG-bench task {src.task!r} has no subtask {sub!r}; available: {available} (in {where})"
            )
        rows += parse_task_json(task_dir / sub / "task.json", task=src.task, subtask=sub)
    return rows


# --- way 1: a git checkout ---------------------------------------------------------------------------------


def _checkout_rows(src: BigBenchSource, tried: list[_Tried]) -> list[Row] | None:
    env = os.environ.get(ENV_DIR)
    label = f"{ENV_DIR} (a BIG-bench git checkout)"
    if not env:
        tried.append(_Tried(label, "not set"))
        return None
    given = Path(env).expanduser()
    label = f"{ENV_DIR}={env}"
    if not given.is_dir():
        tried.append(_Tried(label, "not a folder" if given.exists() else "does not exist"))
        return None
    for root in (given / "bigbench" / "benchmark_tasks", given / "benchmark_tasks", given):
        if root.is_dir() and (root.name == "benchmark_tasks" or any(root.glob("*/task.json"))):
            break
    else:
        tried.append(_Tried(label, "has no bigbench/benchmark_tasks folder (nor task folders)"))
        return None
    if not _has_task_files(root / src.task):
        known = [p.name for p in root.iterdir() if p.is_dir() and _has_task_files(p)]
        tried.append(_Tried(label, f"no task {src.task!r} in {root}{_close(src.task, known)}"))
        return None
    return _folder_rows(root, src, str(root))


# --- way 2 and 3: the cache, filled from a local sdist -----------------------------------------------------


def _cache_rows(src: BigBenchSource, tried: list[_Tried]) -> list[Row] | None:
    if _has_task_files(data_dir() / src.task):
        return _folder_rows(data_dir(), src, f"the cache {data_dir()}")
    tried.append(_Tried(f"cache {data_dir() / src.task}", "not extracted yet"))
    return None


def _sdist_rows(src: BigBenchSource, tried: list[_Tried]) -> list[Row] | None:
    env = os.environ.get(ENV_SDIST)
    if env:
        tarball, label = Path(env).expanduser(), f"{ENV_SDIST}={env}"
    else:
        tried.append(_Tried(ENV_SDIST, "not set"))
        tarball = xopd_home() / "downloads" / SDIST_NAME
        label = f"sdist {tarball}"
    if not tarball.is_file():
        tried.append(_Tried(label, "does not exist" if not tarball.exists() else "not a file"))
        return None
    try:
        _extract_task(tarball, src.task)
    except _Miss as e:
        tried.append(_Tried(label, str(e)))
        return None
    return _folder_rows(data_dir(), src, f"the cache {data_dir()}, from {tarball}")


def _index(tarball: Path) -> set[str] | None:
    """Every task name in ``tarball``, when an earlier pass over this same file wrote them down."""
    try:
        doc = json.loads((data_dir() / "index.json").read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("size") == tarball.stat().st_size:
            return set(doc["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _extract_task(tarball: Path, task: str) -> None:
    """Copy ``task``'s task.json files out of ``tarball`` into the cache (one streaming pass, under a lock so
    that two processes never extract at once); raise :class:`_Miss` when the tarball has no such task."""
    known = _index(tarball)
    if known is not None and task not in known:
        raise _Miss(f"no task {task!r}{_close(task, known)}")
    with file_lock(data_dir().parent / ".bigbench.lock"):
        if _has_task_files(data_dir() / task):  # another process finished meanwhile
            return
        print(f"xopd: extracting BIG-bench task {task!r} from {tarball} ...", file=sys.stderr)
        files, every = _read_tarball(tarball, task)
        atomic_write_text(
            data_dir() / "index.json",
            json.dumps({"tarball": tarball.name, "size": tarball.stat().st_size, "tasks": sorted(every)}),
        )
        if not files:
            raise _Miss(f"no task {task!r}{_close(task, every)}")
        with atomic_dir(data_dir() / task) as tmp:
            for rel, data in files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)
        atomic_write_text(
            data_dir() / "SOURCE.txt",
            f"task.json files from {tarball.name}, the BIG-bench sdist (Apache-2.0), "
            "https://github.com/google/BIG-bench\n",
        )


def _read_tarball(tarball: Path, task: str) -> tuple[dict[str, bytes], set[str]]:
    """One pass: ``task``'s files (path below the task folder -> bytes) and every task name in the tarball."""
    every: set[str] = set()
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, mode="r|gz") as tf:
            for member in tf:
                parts = member.name.split("/")
                if not member.isfile() or parts[-1] != "task.json" or "benchmark_tasks" not in parts:
                    continue
                rel = parts[parts.index("benchmark_tasks") + 1 :]
                if len(rel) in (2, 3) and _NAME.fullmatch(rel[0]):
                    every.add(rel[0])
                if rel[0] != task or len(rel) not in (2, 3) or not all(_NAME.fullmatch(p) for p in rel[:-1]):
                    continue
                fh = tf.extractfile(member)
                if fh is not None:
                    files["/".join(rel[1:])] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _Miss(f"not a readable sdist tarball: {e}") from e
    if not every:
        raise _Miss("not a BIG-bench sdist (no bigbench/benchmark_tasks/*/task.json inside)")
    return files, every


# --- way 4: the Hugging Face dataset (hails/bigbench) ------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith((".", "~", os.sep))
        or os.path.isabs(value)
        or value.count("/") != 1
        or Path(value).expanduser().exists()
    )


def _offline_reason() -> str | None:
    """Why the hub must not be tried, or None."""
    try:
        check_online(f"BIG-bench from the Hugging Face hub dataset {HUB_DATASET!r}")
    except OfflineError:
        return f"skipped: XOPD_OFFLINE={os.environ.get('XOPD_OFFLINE', '').strip()}"
    return None


def _fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a local folder's files: a cache folder per version of the local copy."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _hub_rows(src: BigBenchSource, tried: list[_Tried]) -> list[Row] | None:
    env = os.environ.get(ENV_HF)
    target = env or HUB_DATASET
    config = f"{src.task}_zero_shot"
    local = Path(target).expanduser()
    label = f"{ENV_HF}={env}" if env else f"Hugging Face hub dataset {HUB_DATASET!r}"
    label += f" (config {config})"
    if not env:
        tried.append(_Tried(ENV_HF, "not set"))
    if src.subtasks:
        tried.append(_Tried(label, f"not tried: its rows carry no subtask names, and the task file picks "
                                   f"subtask(s) {list(src.subtasks)}"))  # fmt: skip
        return None
    try:
        if local.is_dir():
            ds = _load_local(local, config, src.task)
        elif env and _looks_like_path(target):
            raise _Miss("does not exist" if not local.exists() else "not a folder")
        else:
            offline = _offline_reason()
            if offline:
                raise _Miss(offline)
            ds = _load_hub(target, config, src.task)
    except _Miss as e:
        tried.append(_Tried(label, str(e)))
        return None
    return _rows_from_hf(ds, src.task, f"{target} ({config})")


def _load_local(root: Path, config: str, task: str) -> Any:
    import datasets

    folder = root / config
    if not folder.is_dir():
        if root.name == config:
            folder = root
        else:
            known = [p.name[: -len("_zero_shot")] for p in root.iterdir() if p.name.endswith("_zero_shot")]
            raise _Miss(f"no task {task!r} (no folder {folder}){_close(task, known)}")
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if HUB_SPLIT not in loaded:
                    raise _Miss(f"{folder} has no {HUB_SPLIT!r} split (splits: {sorted(loaded)})")
                return loaded[HUB_SPLIT]
            return loaded
        suffixes = (".parquet", ".jsonl", ".json")
        files = sorted(p for p in folder.rglob(f"{HUB_SPLIT}*") if p.is_file() and p.suffix in suffixes)
        if not files:
            raise _Miss(f"{folder} has no {HUB_SPLIT}*.parquet / .jsonl files nor save_to_disk output")
        builder = "parquet" if files[0].suffix == ".parquet" else "json"
        cache = xopd_home() / "data" / "hf_local" / f"bigbench-{_fingerprint(folder)}"
        return datasets.load_dataset(
            builder, data_files={HUB_SPLIT: [str(p) for p in files]}, split=HUB_SPLIT, cache_dir=str(cache)
        )
    except _Miss:
        raise
    except Exception as e:  # datasets raises many types
        raise _Miss(f"cannot load {folder}: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if len(text) <= limit else text[:limit] + " ..."


def _load_hub(dataset_id: str, config: str, task: str) -> Any:
    import datasets

    print(f"xopd: loading BIG-bench task {task!r} from the Hugging Face hub dataset {dataset_id} ...",
          file=sys.stderr)  # fmt: skip
    try:
        return datasets.load_dataset(dataset_id, config, split=HUB_SPLIT)
    except Exception as e:  # ConnectionError, FileNotFoundError, ValueError (unknown config), ...
        names = set(re.findall(r"'([A-Za-z0-9_]+)_zero_shot'", str(e))) - {task}
        if names:  # "BuilderConfig ... not found. Available: [...]"
            raise _Miss(f"no task {task!r}{_close(task, names)}") from e
        raise _Miss(f"{type(e).__name__}: {_first_line(e)}") from e


_CHOICE_LINE = re.compile(r"^\s*choice:\s*(.*?)\s*$")


def _hub_question(inputs: str, choices: tuple[str, ...]) -> str:
    """The task's own input inside BIG-bench's zero-shot prompt: without the leading ``Q:``, the appended
    ``choice: ...`` lines and the trailing output prefix (``A:``)."""
    lines = [line for line in inputs.splitlines() if line.strip()]
    if lines and re.fullmatch(r"[A-Za-z ]{1,20}:", lines[-1].strip()):
        lines.pop()
    wanted = set(choices)
    while lines and (m := _CHOICE_LINE.match(lines[-1])) and m.group(1) in wanted:
        lines.pop()
    if lines:
        lines[0] = re.sub(r"^\s*Q:\s*", "", lines[0])
    return _clean("\n".join(lines))


def _rows_from_hf(ds: Any, task: str, where: str) -> list[Row]:
    need = ("inputs", "targets", "multiple_choice_targets", "multiple_choice_scores")
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise BigBenchError(f"{where}: not in hails/bigbench's form: no column(s) {missing}; "
                            f"columns: {ds.column_names}")  # fmt: skip
    records = list(ds)
    idx = [r.get("idx") for r in records]
    use_idx = all(isinstance(i, int) for i in idx) and len(set(idx)) == len(idx)
    rows: list[Row] = []
    for pos, rec in enumerate(records):
        n = idx[pos] if use_idx else pos
        at = f"{where}: row {pos}"
        inputs = rec["inputs"]
        if not isinstance(inputs, str) or not inputs.strip():
            raise BigBenchError(f"{at}: empty 'inputs'")
        choices = tuple(str(c) for c in rec["multiple_choice_targets"] or ())
        scores = list(rec["multiple_choice_scores"] or ())
        targets = tuple(str(t) for t in rec["targets"] or ())
        answers: tuple[Any, ...] = targets
        if choices:
            if len(scores) != len(choices):
                raise BigBenchError(f"{at}: {len(choices)} choices but {len(scores)} scores")
            best = max(scores)
            if best <= 0:
                raise BigBenchError(f"{at}: no option has a positive score")
            best_choices = tuple(c for c, s in zip(choices, scores) if s == best)
            # BIG-bench writes the first best-scored option as 'targets' when the task gives no free-form
            # target: then every best-scored option is gold, as in task.json
            if not targets or targets == best_choices[:1]:
                answers = best_choices
        if not answers:
            raise BigBenchError(f"{at}: no 'targets' and no 'multiple_choice_targets'")
        question = _hub_question(inputs, choices)
        if not question:
            raise BigBenchError(f"{at}: nothing left of 'inputs' {inputs!r}")
        meta = {"source": f"bigbench:{task}", "index": n, "via": where}
        rows.append(Row(local_id=f"{n:04d}", question=question, answers=answers, choices=choices, meta=meta))
    return rows


# --- all together ------------------------------------------------------------------------------------------


def _how_to(task: str) -> str:
    downloads = xopd_home() / "downloads"
    return (
        "BIG-bench is an optional source; provide it in one of three ways:\n"
        f"  1. the Hugging Face dataset {HUB_DATASET} (config {task}_zero_shot): with hub access it loads "
        f"by itself (unless XOPD_OFFLINE=1); else copy it and set {ENV_HF}=<local folder> "
        "(or another hub id)\n"
        f"  2. the sdist {SDIST_NAME} (no longer on PyPI): set {ENV_SDIST}=<file> or put it in {downloads}/\n"
        f"  3. a git checkout of https://github.com/google/BIG-bench: set {ENV_DIR}=<repository root or "
        "bigbench/benchmark_tasks>"
    )


def load_rows(src: BigBenchSource) -> list[Row]:
    """All rows of a task (or of the chosen subtasks, in the order given), from the first way in that has
    it; :class:`BigBenchError` listing every place tried when none does."""
    if not _NAME.fullmatch(src.task):
        raise BigBenchError(f"invalid BIG-bench task name {src.task!r}")
    tried: list[_Tried] = []
    for way in (_checkout_rows, _cache_rows, _sdist_rows, _hub_rows):
        rows = way(src, tried)
        if rows is not None:
            return rows
    listing = "\n".join(f"  - {t.where}: {t.why}" for t in tried)
    what = repr(src.task) + (f" (subtasks {list(src.subtasks)})" if src.subtasks else "")
    raise BigBenchError(
        f"BIG-bench task {what} is not available here. Tried:\n{listing}\n{_how_to(src.task)}"
    )
