"""Checkpoints written by earlier versions of the trainer still resume (xopd.checkpoint).

``tests/data/checkpoint_v1/<kind>/step-000002`` was written by the trainer as it was before the loss kinds
became objectives (xopd.objectives) and the checkpoint code its own module: the tiny fixtures, LoRA r=2 (so
the files stay ~100 KB), 2 prompts per step, 6 new tokens, seed 0. ``expected.json`` holds the metrics the
uninterrupted old run logged for steps 3 and 4. Resuming from that checkpoint must reproduce them: the same
weights, optimizer moments, scheduler, RNG states and data position are read back from the old files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xopd.config import load_config
from xopd.rolloutlog import read_records

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v1"
# the overrides the fixture was written with (its config.yaml says the same)
RUN = (
    "logging.progress=false",
    "schedule.steps=4",
    "schedule.batch_prompts=2",
    "rollout.max_new_tokens=6",
    "checkpoint.every=2",
    "checkpoint.keep_last=2",
    "eval.at_start=false",
    "eval.at_end=false",
    "checkpoint.export_final=false",
    "models.finetune=lora",
    "models.lora_r=2",
)


@pytest.mark.parametrize("kind", ["xopd", "gkd"])
def test_a_checkpoint_of_the_old_trainer_resumes_with_the_same_next_losses(tmp_path, kind, capsys):
    from xopd.trainer import train

    expected = json.loads((FIXTURE / "expected.json").read_text())[kind]
    ckpt = FIXTURE / kind / "step-000002"
    assert sum(f.stat().st_size for f in ckpt.iterdir()) < 2_000_000  # a small fixture stays small
    cfg = load_config(
        TINY, [f"output_dir={tmp_path}", *RUN, f"loss.kind={kind}", f"checkpoint.resume={ckpt}"]
    )
    train(cfg)
    assert "resumed at step 2" in capsys.readouterr().err
    got = list(read_records(tmp_path / "metrics.jsonl"))
    print(f"{kind}: old trainer {[r['loss'] for r in expected]}, resumed {[r['loss'] for r in got]}")
    assert [r["step"] for r in got] == [3, 4]
    for want, have in zip(expected, got, strict=True):
        for key, value in want.items():
            # the same machine reproduces them bit for bit; another CPU may round the last bits differently
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-8), (want["step"], key)


def test_checkpoint_files_hold_plain_tensors_and_numbers():
    """trainer_state.pt loads with weights_only=True (no pickled objects): what a reader of the format
    needs."""
    state = torch.load(FIXTURE / "xopd" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert {"step", "optimizer", "scheduler", "rng", "data", "log_sizes"} <= state.keys()
    assert state["step"] == 2 and {"python", "numpy", "torch"} <= state["rng"].keys()
