"""The demo world's split of train data into a teacher-tuning part and a distillation part."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from evalsuite.tasks import DEFAULT_MIX, load_task
from xopd.world.parts import PART_FRACTION, items_of_part, part_of


def _item(question: str) -> SimpleNamespace:
    return SimpleNamespace(question=question)


def test_part_is_a_pure_function_of_the_normalised_question():
    q = "What is 12 + 7?"
    assert part_of(_item(q)) == part_of(_item(q))
    # case and whitespace do not move an item across the boundary
    assert part_of(_item(q)) == part_of(_item("  what IS 12 +\n 7? "))
    assert part_of(_item(q)) in ("tune", "distill")


def test_hash_is_pinned():
    """The assignment must not drift between versions: that would leak tuning items into distillation."""
    import hashlib

    q = "What is 99 - 28?"
    h = int(hashlib.sha256(b"part:what is 99 - 28?").hexdigest()[:15], 16) / 16**15
    assert part_of(_item(q)) == ("tune" if h < PART_FRACTION else "distill")


@pytest.mark.parametrize("name", DEFAULT_MIX)
def test_parts_are_disjoint_roughly_half_and_independent_of_limit_and_seed(name):
    task = load_task(name, split="train")
    tune, distill = items_of_part(task, "tune"), items_of_part(task, "distill")
    assert len(tune) + len(distill) == len(task.items)
    tune_q = {" ".join(i.question.casefold().split()) for i in tune}
    distill_q = {" ".join(i.question.casefold().split()) for i in distill}
    assert not tune_q & distill_q  # no question (nor a duplicate of it) on both sides
    assert 0.45 < len(tune) / len(task.items) < 0.55
    # a limited / reseeded load assigns each item to the same part as the full split does
    full = {i.id: part_of(i) for i in task.items}
    small = load_task(name, split="train", limit=200, seed=7)
    assert all(part_of(i) == full[i.id] for i in small.items)
    assert {i.id for i in items_of_part(small, "tune")} <= {i.id for i in tune}


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="unknown part"):
        items_of_part(SimpleNamespace(items=[]), "train")
