"""What every data source hands to a task: rows in source order, plus an optional source-specific scorer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evalsuite.tasks.spec import BigBenchSource, HFSource, JsonlSource, ReasoningGymSource, TaskSpec


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


def load_source(spec: TaskSpec) -> SourceData:
    """Dispatch on the source kind; imports are late so that a BIG-bench task never imports ``datasets``."""
    src = spec.source
    if isinstance(src, BigBenchSource):
        from evalsuite.tasks.bigbench import load_rows

        return SourceData(load_rows(src))
    if isinstance(src, ReasoningGymSource):
        from evalsuite.tasks.rgym import load_rows as rg_rows

        return rg_rows(src)
    if isinstance(src, JsonlSource):
        from evalsuite.tasks.hub import jsonl_rows

        return SourceData(jsonl_rows(src))
    if isinstance(src, HFSource):
        from evalsuite.tasks.hub import hf_rows

        return SourceData(hf_rows(src, task=spec.name))
    raise TypeError(f"unknown source type {type(src).__name__}")
