"""Data parallelism for ``xopd-train`` under ``accelerate launch`` (or ``torchrun``): one script, any size.

Every process draws the same global batch of prompts (the data stream is seeded identically), keeps its own
contiguous share (:meth:`Dist.shard`), samples and scores those rollouts, and backpropagates its losses with
the *global* rollout/token counts as denominators. :meth:`Dist.reduce_gradients` then sums the gradients
over all processes, so every process holds the full batch's gradient -- the one a single process computes on
the whole batch -- clips it and takes the same AdamW step (what DDP does, without wrapping the model: the
adapters call submodules such as the decoder and the lm_head directly, which DDP's forward hooks would miss).

Rollouts use per-prompt seeds in several processes (``rollout.seed_per_prompt``), so a prompt's samples do not
depend on which process drew it. Only the main process writes logs, checkpoints and evaluations; the others
send it their rollout records and statistics.

Launch: ``accelerate launch --num_processes 8 -m xopd.cli --config R.yaml`` (GPUs: NCCL), or on CPUs
``accelerate launch --multi_gpu --num_processes 2 -m xopd.cli ...`` (gloo; the flag picks accelerate's
torchrun launcher, as tests/test_distributed.py does). ``accelerate`` initialises the process group and sets
each process's device. With ``--use_fsdp`` the decoder layers are sharded instead of replicated:
:mod:`xopd.sharding`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size`` (1 process: rank 0 of 1, all no-ops)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard_range(self, n: int) -> range:
        """This process's contiguous block of ``n`` items (sizes differ by at most one; may be empty)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def shard(self, items: Sequence[T]) -> list[T]:
        return [items[i] for i in self.shard_range(len(items))]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64 on the wire)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.cpu().tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (on every process)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum ``.grad`` over processes in one flat buffer (a missing gradient counts as zeros)."""
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device())
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        flat = flat.to(params[0].device)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors
    backend = tdist.get_backend() if tdist.is_initialized() else "gloo"
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init() -> Dist:
    """The process group set up by the launcher (through accelerate), or the single-process default."""
    if launched_world_size() <= 1:
        return Dist()
    state = _state()  # init_process_group (nccl on GPUs, gloo on CPUs) + this process's device
    return Dist(rank=state.process_index, world_size=state.num_processes)


def _state():
    from accelerate import PartialState  # late: only a launched (multi-process) run needs accelerate

    # without cpu=True accelerate treats several CPU processes as independent single-process runs
    return PartialState(cpu=not torch.cuda.is_available())


def launched_device() -> str | None:
    """The device accelerate assigned to this process (``cuda:<local rank>``), or None when not launched."""
    if launched_world_size() <= 1:
        return None
    device = _state().device
    return "cpu" if device.type == "cpu" else str(device)
