"""xopd-train under ``accelerate launch``: 2 CPU processes (gloo) make the same update as 1 process.

Both runs see the same global batch (4 prompts x 2 modalities x 2 rollouts per step) with per-prompt sampling
seeds, so the rollouts are the same whichever process draws them; the check is that the summed gradients,
the clipped AdamW step and the logs then match a single process on the whole batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from xopd.distributed import Dist

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
ARGS = [
    "logging.progress=false",
    "schedule.steps=2",
    "rollout.seed_per_prompt=true",
    "eval.at_start=false",
    "eval.at_end=false",
    "checkpoint.every=0",
    "checkpoint.export_final=false",
]


def test_shards_cover_the_batch_once():
    for n in range(0, 11):
        for world in (1, 2, 3, 4):
            parts = [list(Dist(r, world).shard_range(n)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert Dist(1, 2).shard(["a", "b", "c"]) == ["c"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def _records(out: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    return sorted(
        (r["step"], r["prompt_id"], r["modality"], r["sample"], tuple(r["tokens"]["id"]), r["tokens"]["teacher_lp"])
        for r in rows
    )


@pytest.mark.slow
def test_two_gloo_processes_update_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    cmd = [sys.executable, "-m", "xopd.cli", "--config", str(TINY)]
    subprocess.run([*cmd, f"output_dir={one}", *ARGS], check=True, env=_env(), cwd=ROOT, timeout=300)
    launch = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",  # accelerate's torchrun launcher; without GPUs the processes join over gloo
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        "-m",
        "xopd.cli",
        "--config",
        str(TINY),
    ]
    proc = subprocess.run(
        [*launch, f"output_dir={two}", *ARGS], env=_env(), cwd=ROOT, timeout=300, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stderr  # really distributed, not two independent runs

    a = load_file(str(one / "checkpoints" / "step-000002" / "model.safetensors"))
    b = load_file(str(two / "checkpoints" / "step-000002" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"

    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in m2] == [1, 2]
    for x, y in zip(m1, m2, strict=True):
        for key in ("loss", "grad_norm", "kl_text", "kl_speech", "len_speech", "sampled_tokens"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key
    # the same rollouts, scored the same, each logged once (by the main process)
    assert _records(one) == _records(two)
    assert all(m["grad_norm"] > 0 and not m["skipped"] for m in m1)  # real updates were compared
