"""Two disjoint parts of every train split: one tunes the text teacher, the other feeds distillation.

The demo world's teacher is made competent by fine-tuning on the "tune" part; X-OPD and its baselines then
train the speech student on the "distill" part only, so the student never sees the very items its teacher
was taught. An item's part is a hash of its normalised question: deterministic, the same whatever the
seed or limit a task was loaded with, and the same for duplicate questions (which therefore never straddle
the two parts).
"""

from __future__ import annotations

import hashlib
from typing import Any

PART_FRACTION = 0.5  # share of each train split that goes to teacher tuning
PARTS = ("tune", "distill")


def _unit(key: str) -> float:
    """A uniform number in [0, 1) from a string (the first 60 bits of its sha256)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def part_key(question: str) -> str:
    """What is hashed: case and whitespace differences do not move an item to the other part."""
    return "part:" + " ".join(question.casefold().split())


def part_of(item: Any) -> str:
    """"tune" or "distill" for an item (anything with a ``question``)."""
    return "tune" if _unit(part_key(item.question)) < PART_FRACTION else "distill"


def items_of_part(task: Any, part: str) -> list[Any]:
    """The task's items that fall in ``part``, in the task's order."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r} (expected one of {', '.join(PARTS)})")
    return [item for item in task.items if part_of(item) == part]
