"""Which runs a ``--logdir`` holds: the directory itself when it is a run, else the runs found below it.

A *run* is a directory with something the explorer reads: a trainer output (``rollouts.jsonl``,
``metrics.jsonl``, ``eval.jsonl``) or an ``xopd-eval`` output (``report.json``). The search does not go
into a run (its ``evals/step-*/report.json`` belong to it), nor into hidden folders, nor through symlinks
that lead out of the log directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from analysis.logs import LogError, resolve_inside

MARKERS = ("rollouts.jsonl", "metrics.jsonl", "eval.jsonl", "report.json")
MAX_DEPTH = 3  # logdir/sweep/run is as deep as people nest them
MAX_RUNS = 500  # stop looking after this many (a logdir pointed at a whole disk)


def is_run(path: Path) -> bool:
    return any((path / m).is_file() for m in MARKERS)


def find_runs(root: str | Path) -> list[str]:
    """Runs under ``root`` as paths relative to it (``"."`` for ``root`` itself), sorted; ``["."]`` when
    there is none (the pages then say what is missing)."""
    root = Path(root).resolve()
    if is_run(root):
        return ["."]
    found: list[str] = []
    frontier = [(root, 0)]
    while frontier and len(found) < MAX_RUNS:
        folder, depth = frontier.pop()
        try:
            children = sorted(os.scandir(folder), key=lambda d: d.name)
        except OSError:
            continue
        for child in children:
            if child.name.startswith(".") or not child.is_dir():
                continue
            rel = Path(child.path).relative_to(root)
            try:
                resolve_inside(root, rel)  # a symlinked folder that leads out is not followed
            except LogError:
                continue
            if is_run(Path(child.path)):
                found.append(rel.as_posix())
            elif depth + 1 < MAX_DEPTH:
                frontier.append((Path(child.path), depth + 1))
    return sorted(found) or ["."]
