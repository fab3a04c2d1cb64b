"""What every data source hands to a task: rows in source order, plus an optional source-specific scorer.

The loaders (:mod:`~evalsuite.tasks.bigbench`, :mod:`~evalsuite.tasks.rgym`,
:mod:`~evalsuite.tasks.hub`) build these; :func:`evalsuite.tasks.task.load_source` picks the loader of a
task's source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One raw example, before the task file's templates and answer rules apply."""

    local_id: str  # unique within the source; hashed for the train/test split, so it must be stable
    question: str
    answers: tuple[Any, ...] = ()  # gold answer(s) as the source writes them; the first is primary
    choices: tuple[str, ...] = ()  # the source's own options, in order (multiple choice)
    spoken: str | None = None
    audio: str | None = None  # path to a real recording
    split: str | None = None  # "train"/"test" when the source divides items itself (hub splits)
    meta: dict[str, Any] = field(default_factory=dict)


# scorer(row meta, answer text) -> reward in [0, 1]; 1 means correct
Scorer = Callable[[dict[str, Any], str], float]


@dataclass(frozen=True)
class SourceData:
    rows: list[Row]
    scorer: Scorer | None = None
