"""The demo world's split of train data into a teacher-tuning part and a distillation part, and the teacher
tuning script's exact resume (on the tiny fixture teacher)."""

from __future__ import annotations

import json
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


def test_tune_teacher_resumes_exactly(tmp_path):
    """Stopped after step 2 and rerun, the run ends with the same adapter, bit for bit, as an uninterrupted
    one (optimizer, RNG and data position all restored)."""
    from safetensors.torch import load_file

    from xopd.world import tune_teacher

    def run(out, steps):
        argv = ["--out", str(out), "--model", "fixture:teacher", "--tasks", "sums", "--max-steps", str(steps),
                "--save-every", "2", "--eval-every", "2", "--eval-limit", "2", "--batch-size", "4",
                "--lora-r", "4", "--lora-alpha", "8", "--log-every", "1"]
        assert tune_teacher.main(argv) == 0

    run(tmp_path / "whole", 4)
    run(tmp_path / "pieces", 2)
    assert (tmp_path / "pieces" / "state.pt").exists() and not (tmp_path / "pieces" / "step-000004").exists()
    run(tmp_path / "pieces", 4)
    a = load_file(str(tmp_path / "whole" / "step-000004" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "pieces" / "step-000004" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    lines = (tmp_path / "pieces" / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 4]  # none repeated by the resume
    assert len((tmp_path / "pieces" / "command.txt").read_text().splitlines()) == 2
    # another learning rate in the same folder is a different run: refused
    with pytest.raises(SystemExit, match="other settings"):
        tune_teacher.main(["--out", str(tmp_path / "pieces"), "--model", "fixture:teacher", "--tasks", "sums",
                           "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--lr", "5e-4"])
