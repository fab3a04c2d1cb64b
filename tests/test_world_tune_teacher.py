"""The demo teacher's tuning script (xopd.world.tune_teacher) on the tiny fixture teacher: exact resume, the
weighted task mix, the learning-rate schedule, and a second stage started from an earlier stage's adapter."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from xopd.world import tune_teacher
from xopd.world.tune_teacher import Sampler, lr_at, parse_weights

BASE = ["--model", "fixture:teacher", "--tasks", "sums", "--batch-size", "4", "--lora-r", "4",
        "--lora-alpha", "8", "--log-every", "1"]


def _run(out, steps, *extra):
    argv = ["--out", str(out), *BASE, "--max-steps", str(steps), "--save-every", "2", "--eval-every", "2",
            "--eval-limit", "2", *extra]
    assert tune_teacher.main(argv) == 0


def _adapter(out, step):
    return load_file(str(out / f"step-{step:06d}" / "adapter_model.safetensors"))


def test_tune_teacher_resumes_exactly(tmp_path):
    """Stopped after step 2 and rerun, the run ends with the same adapter, bit for bit, as an uninterrupted
    one (optimizer, RNG and data position all restored)."""
    _run(tmp_path / "whole", 4)
    _run(tmp_path / "pieces", 2)
    assert (tmp_path / "pieces" / "state.pt").exists() and not (tmp_path / "pieces" / "step-000004").exists()
    _run(tmp_path / "pieces", 4)
    a, b = _adapter(tmp_path / "whole", 4), _adapter(tmp_path / "pieces", 4)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    lines = (tmp_path / "pieces" / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 2, 4]  # none repeated by the resume
    assert len((tmp_path / "pieces" / "command.txt").read_text().splitlines()) == 2
    # another learning rate in the same folder is a different run: refused
    with pytest.raises(SystemExit, match="other settings"):
        tune_teacher.main(["--out", str(tmp_path / "pieces"), *BASE, "--lr", "5e-4"])


def test_a_state_written_before_the_stage_options_still_resumes(tmp_path):
    """Runs saved before --task-weights/--schedule/--init-adapter existed hold no such keys: they ran with the
    defaults, so a rerun with the defaults continues them, and one with other values is refused."""
    out = tmp_path / "run"
    _run(out, 2)
    state = torch.load(out / "state.pt", weights_only=True)
    for key in ("task_weights", "schedule", "init_adapter"):
        del state["config"][key]
    torch.save(state, out / "state.pt")
    _run(out, 4)
    assert (out / "step-000004").exists()
    with pytest.raises(SystemExit, match="schedule"):
        _run(out, 6, "--schedule", "linear")


def test_second_stage_starts_from_the_given_adapter(tmp_path):
    """--init-adapter loads the earlier stage's weights: at lr 0 a step leaves them unchanged, bit for bit,
    and the stage's first evaluation is the earlier stage's last one."""
    _run(tmp_path / "one", 2)
    _run(tmp_path / "two", 1, "--init-adapter", str(tmp_path / "one" / "step-000002"), "--lr", "0")
    a, b = _adapter(tmp_path / "one", 2), _adapter(tmp_path / "two", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one = [json.loads(x) for x in (tmp_path / "one" / "eval.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "eval.jsonl").read_text().splitlines()]
    assert two[0]["step"] == 0 and two[0]["acc"] == one[-1]["acc"]
    with pytest.raises(SystemExit, match="no adapter_model.safetensors"):
        _run(tmp_path / "three", 1, "--init-adapter", str(tmp_path / "nothing-here"))


def test_weighted_draws_follow_the_weights_and_uniform_draws_are_unchanged():
    sizes = {"a": 5, "b": 7, "c": 3}
    picks = [name for name, _ in Sampler(sizes, seed=1, weights={"a": 6.0}).next(8000)]
    assert abs(picks.count("a") / len(picks) - 0.75) < 0.02  # 6 / (6 + 1 + 1)
    assert abs(picks.count("b") / len(picks) - 0.125) < 0.02
    # no weights: the draw sequence of runs started before weights existed (rng.choice), so they resume exactly
    rng = random.Random(3)
    expected = [rng.choice(["a", "b", "c"]) for _ in range(50)]
    assert [name for name, _ in Sampler(sizes, seed=3).next(50)] == expected


def test_every_item_is_drawn_once_per_epoch_of_its_task():
    sampler = Sampler({"a": 4, "b": 4}, seed=0, weights={"b": 3.0})
    drawn = sampler.next(200)
    b_items = [i for name, i in drawn if name == "b"]
    for k in range(len(b_items) // 4):
        assert sorted(b_items[4 * k : 4 * k + 4]) == [0, 1, 2, 3]


def test_linear_schedule_warms_up_then_decays_to_zero():
    args = SimpleNamespace(lr=1.0, warmup=2, max_steps=10, schedule="linear")
    assert [lr_at(s, args) for s in (1, 2, 6, 10)] == [0.5, 1.0, 0.5, 0.0]
    args.schedule = "constant"
    assert [lr_at(s, args) for s in (1, 2, 6, 10)] == [0.5, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("spec, match", [("sums=2,nosuch=1", "nosuch"), ("sums=0", "sums=0"),
                                         ("sums", "'sums'"), ("sums=x", "sums=x")])
def test_bad_task_weights_are_refused_naming_the_entry(spec, match):
    with pytest.raises(SystemExit, match=match):
        parse_weights(spec, ["sums", "counting"])
    assert parse_weights("sums=3, counting=0.5", ["sums", "counting"]) == {"sums": 3.0, "counting": 0.5}
