"""Checkpoints, resume, RNG states and the final export of a training run.

A checkpoint is ``<output_dir>/checkpoints/step-NNNNNN/``, written atomically by the main process:
``model.safetensors`` (the trained weights only: LoRA adapters or the language model, never the frozen audio
tower), ``trainer_state.pt`` (optimizer, scheduler, RNG states of python/numpy/torch as plain tensors and
numbers -- it loads with ``weights_only=True`` --, data position, log sizes, skipped steps, step),
``config.yaml`` and ``state.json`` (step, data position, last metrics and evaluation, for people). Under FSDP
the shards are gathered whole first, so a checkpoint has one format for any number of processes. The format
is the one the trainer has written since its first release (``tests/data/checkpoint_v1`` pins that an old
checkpoint resumes with the same next losses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from xopd import sharding
from xopd.config import RunConfig, incompatible_changes, to_dict, to_yaml
from xopd.models import export_pretrained, load_student
from xopd.paths import atomic_dir
from xopd.sharding import load_trainable_state
from xopd.state import Run


class ResumeError(ValueError):
    """The output directory or checkpoint cannot be resumed as configured; the message says why."""


# ------------------------------------------------------------------------------------------------------------
# RNG states
# ------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain numbers only, so trainer_state.pt loads with weights_only=True."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_untouched() -> Any:
    """Run the block, then put python's, numpy's and torch's (CPU and CUDA) global RNGs back as they were."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ------------------------------------------------------------------------------------------------------------
# finding, writing and reading checkpoints
# ------------------------------------------------------------------------------------------------------------


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (atomic_dir only ever shows finished ones), oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if re.fullmatch(r"step-\d+", d.name) and (d / "state.json").is_file()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def find_resume(cfg: RunConfig, out: Path) -> Path | None:
    """The checkpoint ``checkpoint.resume`` asks for: ``auto`` the latest (or none), ``never`` none (and no
    checkpoint may be there), else the given directory."""
    mode = cfg.checkpoint.resume
    existing = checkpoint_dirs(out)
    if mode == "auto":
        return existing[-1] if existing else None
    if mode == "never":
        if existing:
            raise ResumeError(
                f"{out} already holds checkpoints ({existing[-1].name}); with checkpoint.resume=never pick a "
                "new output_dir, or resume with checkpoint.resume=auto"
            )
        return None
    path = Path(mode)
    if not (path / "state.json").is_file():
        raise ResumeError(f"checkpoint.resume={mode!r}: not a checkpoint directory (no state.json)")
    return path


def save_checkpoint(run: Run, step: int) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically (main process), then drop all but the last ``keep_last``.
    Every process holds the same weights and optimizer state (same gradients, same steps), or under FSDP its
    shard of them, gathered here whole: a checkpoint has one format for any number of processes."""
    target = run.out / "checkpoints" / f"step-{step:06d}"
    main = run.dist.is_main
    weights = sharding.full_trainable_state(run.student, keep=main)  # collectives under FSDP
    optimizer_state = sharding.full_optimizer_state(run.optimizer, keep=main)
    if not main:
        run.dist.barrier()
        return target
    with atomic_dir(target) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(
            {
                "step": step,
                "optimizer": optimizer_state,
                "scheduler": run.scheduler.state_dict(),
                "rng": rng_state(),
                "data": run.stream.state_dict(),
                "log_sizes": {name: log.size() for name, log in run.logs.items()},
                "skipped": list(run.skipped),
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "config.yaml").write_text(to_yaml(run.cfg))
        data = run.stream.state_dict()
        state = {"step": step, "data": data, "metrics": run.last_metrics, "eval": run.last_eval}
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=float) + "\n")
        readable(tmp)
    for old in checkpoint_dirs(run.out)[: -run.cfg.checkpoint.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    run.dist.barrier()
    return target


def readable(folder: Path) -> None:
    """safetensors writes 0600 files; checkpoints and exports should be readable like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def restore_checkpoint(run: Run, path: Path) -> None:
    """Load weights, optimizer, scheduler, RNG states, data position; cut the logs back to the checkpoint."""
    saved_cfg = yaml.safe_load((path / "config.yaml").read_text())
    models = saved_cfg.get("models") if isinstance(saved_cfg, dict) else None
    if (
        isinstance(models, dict)
        and run.cfg.models.device == "auto"
        and re.fullmatch(r"cpu|cuda(:\d+)?", str(models.get("device")))
    ):
        # checkpoints written before the resolved device was kept out of the saved config hold the device
        # `auto` resolved to in the process that wrote them (cpu, cuda:0): the same user setting
        models["device"] = "auto"
    changed = incompatible_changes(saved_cfg, run.cfg)
    if changed:
        raise ResumeError(
            f"cannot resume from {path}: the config differs in {', '.join(changed)} (only schedule.steps, "
            "checkpoint.*, logging.*, eval.* and rollout.batch_size may change); use a new output_dir"
        )
    load_trainable_state(run.student, load_file(str(path / "model.safetensors")))
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    try:
        sharding.load_optimizer_state(run.optimizer, state["optimizer"])
    except ValueError as err:  # e.g. a checkpoint from before the two parameter groups
        raise ResumeError(f"cannot resume from {path}: its optimizer state does not fit ({err})") from err
    run.scheduler.load_state_dict(state["scheduler"])
    run.stream.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    run.step = int(state["step"])
    run.skipped = list(state.get("skipped", []))
    if run.dist.is_main:
        for name, log in run.logs.items():
            log.truncate_to(run.step, state["log_sizes"].get(name))


# ------------------------------------------------------------------------------------------------------------
# the final export
# ------------------------------------------------------------------------------------------------------------


def export_final(run: Run) -> str | None:
    """``<output_dir>/final``: a model directory ``from_pretrained`` and ``xopd-eval`` load (LoRA merged),
    with ``xopd_train.json`` (step, config); None when ``checkpoint.export_final`` is off or on other ranks.
    Under FSDP the trained weights are gathered whole into a fresh unsharded copy of the student first."""
    cfg = run.cfg
    if not cfg.checkpoint.export_final:
        return None
    student = run.student
    if run.sharded:
        state = sharding.full_trainable_state(run.student, keep=run.dist.is_main)  # a collective
        if run.dist.is_main:
            with sharding.every_process_loads():
                student = load_student(dataclasses.replace(cfg.models, device="cpu"))
            load_trainable_state(student, state)
    if not run.dist.is_main:
        return None
    with atomic_dir(run.out / "final") as tmp:
        export_pretrained(student, tmp)
        (tmp / "xopd_train.json").write_text(json.dumps({"step": run.step, "config": to_dict(cfg)}, indent=2))
        readable(tmp)
    return str(run.out / "final")
