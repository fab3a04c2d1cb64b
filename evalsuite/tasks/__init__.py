"""The task registry: every ``*.yaml`` task file in this folder, plus those in ``$XOPD_TASKS_PATH``.

``XOPD_TASKS_PATH`` is a list of folders (separated like ``PATH``); a file there named like a built-in task
replaces it (point ``gsm8k`` at a local copy, say), and a new file adds a task, with no code::

    from evalsuite.tasks import list_tasks, load_task
    task = load_task("navigate", split="test", limit=50, seed=0)
    for item in task.items:
        text, spoken = task.render_text(item), task.render_spoken(item)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from evalsuite.tasks.spec import TaskSpec, TaskSpecError, load_spec, parse_spec
from evalsuite.tasks.task import Task, TaskDataError, build_task

__all__ = [
    "DEFAULT_MIX",
    "Task",
    "TaskDataError",
    "TaskSpec",
    "TaskSpecError",
    "UnknownTaskError",
    "build_task",
    "get_spec",
    "list_tasks",
    "load_spec",
    "load_task",
    "parse_spec",
    "task_dirs",
    "task_files",
]

BUILTIN_DIR = Path(__file__).resolve().parent
# The default task mix: offline (reasoning-gym generators), spoken naturally, four answer kinds (a number, a
# count, yes/no, one word). The default of xopd-eval, the recipes, the bench scripts and the tests.
DEFAULT_MIX = ("sums", "counting", "syllogism", "family")
ENV_VAR = "XOPD_TASKS_PATH"


class UnknownTaskError(KeyError):
    """No task file has that name; the message lists the ones that exist."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def task_dirs() -> list[Path]:
    """Folders searched for task files, first match winning: ``$XOPD_TASKS_PATH`` in order, then built-ins."""
    dirs = []
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not entry.strip():
            continue
        path = Path(entry).expanduser()
        if not path.is_dir():
            warnings.warn(f"{ENV_VAR} entry {entry!r} is not a folder; ignored", stacklevel=2)
            continue
        dirs.append(path)
    return [*dirs, BUILTIN_DIR]


def task_files() -> dict[str, Path]:
    """Task name (the file's stem) -> task file."""
    found: dict[str, Path] = {}
    for d in task_dirs():
        for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            found.setdefault(path.stem, path)
    return found


def list_tasks() -> list[str]:
    return sorted(task_files())


def get_spec(name: str) -> TaskSpec:
    """The parsed task file for a task name (or for a path to a ``.yaml`` file)."""
    if name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file():
        return load_spec(Path(name).expanduser())
    files = task_files()
    if name not in files:
        raise UnknownTaskError(
            f"unknown task {name!r}; available tasks: {', '.join(sorted(files))} "
            f"(add one with a YAML file in a folder listed in ${ENV_VAR})"
        )
    return load_spec(files[name])


def load_task(name: str, *, split: str = "test", limit: int | None = None, seed: int = 0) -> Task:
    """Load a task's ``split`` ("test" or "train"); ``limit`` keeps that many items, picked by ``seed``."""
    return build_task(get_spec(name), split=split, limit=limit, seed=seed)
