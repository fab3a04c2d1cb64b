"""FSDP for ``xopd-train`` under ``accelerate launch --use_fsdp`` (or ``distributed.strategy=fsdp``).

What is sharded: the student's decoder layers, each one an FSDP2 unit (``fully_shard``), under an FSDP root
(the transformers model) that manages nothing itself. Their weights, gradients and AdamW moments live 1/N
per process. What stays replicated: the embeddings, the final norm, the lm_head (the chunked losses multiply
hidden states by the head weight outside the model's forward, so it must be an ordinary tensor), the frozen
audio encoder and projector. Their gradients are summed by :meth:`xopd.distributed.Dist.reduce_gradients`,
the layers' by FSDP's reduce-scatter -- set to a plain sum, because the losses already divide by the global
batch's counts (what one process on the whole batch computes). The teacher's layers can be sharded the same
way (:func:`shard` on it; it only runs forwards).

Sharded forwards are collectives: every process must run as many of them as the others. Training does (every
process gets the same number of prompts, so the same micro-batches). Sampling and evaluation do not (rollout
lengths differ; only the main process evaluates), so they run inside :meth:`Sharded.gathered`: every layer is
all-gathered once, the model is an ordinary unsharded one until the block ends, and nothing inside it
communicates. That costs the full weights for the duration (not their gradients or optimizer state, which
are the larger part of training memory) and replaces one all-gather per layer per generated token with one
per layer per step; a colocated vLLM engine (``rollout.engine=vllm``) holds the full weights anyway, and gets
them from inside the same block.

Checkpoints hold the full state -- weights and AdamW moments gathered to the main process -- in the same
format as a single process's, so a run resumes under any number of processes and either strategy.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

from xopd.models import ModelAdapter


def fsdp_requested() -> bool:
    """``accelerate launch --use_fsdp`` (or an ``accelerate config`` with FSDP) exported this."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def every_process_loads() -> Iterator[None]:
    """Every process reads the checkpoint itself. Under ``accelerate launch --use_fsdp`` transformers'
    ``from_pretrained`` otherwise leaves the weights of all but local rank 0 uninitialised
    (``FSDP_CPU_RAM_EFFICIENT_LOADING``), for accelerate's own FSDP wrapper to broadcast -- which xopd does
    not use -- and the teacher, never sharded, would stay zeros."""
    key = "FSDP_CPU_RAM_EFFICIENT_LOADING"
    saved = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def launcher_reshard_after_forward() -> bool | None:
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "").lower()
    return {"true": True, "false": False}.get(value)


def decoder_layers(adapter: ModelAdapter) -> list[nn.Module]:
    """The LLM's decoder layers (``<lm_prefix>.layers``), the units FSDP shards."""
    return adapter.decoder_layers()


def is_layer_param(name: str, adapter: ModelAdapter) -> bool:
    return name.startswith(f"{adapter.lm_prefix}.layers.")


def optimizer_groups(adapter: ModelAdapter) -> list[dict[str, Any]]:
    """AdamW parameter groups: the decoder layers' parameters, then the rest (embeddings, norm, head).

    Two groups in every run, sharded or not, so a checkpoint's optimizer state fits any run: a fused AdamW
    step cannot mix sharded (DTensor) and ordinary tensors, and one group holds only one kind."""
    named = adapter.trainable_parameters()
    layers = [p for n, p in named if is_layer_param(n, adapter)]
    rest = [p for n, p in named if not is_layer_param(n, adapter)]
    return [{"params": g} for g in (layers, rest) if g]


@dataclass(frozen=True)
class Sharded:
    """The FSDP units of a sharded student (none: not sharded) and how they reshard after a forward."""

    units: tuple[nn.Module, ...] = ()
    root: nn.Module | None = None
    reshard_after_forward: bool = True

    def __bool__(self) -> bool:
        return bool(self.units)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Inside the block the sharded layers hold their full weights and forwards communicate nothing
        (a collective on entry: every process must enter). A no-op when nothing is sharded."""
        if not self.units:
            yield
            return
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        # transformers' generate() sees the FSDP mark and syncs every token step across processes
        # (synced_gpus): here each process samples on its own
        managed = self.root.__dict__.get("_is_fsdp_managed_module")
        self.root._is_fsdp_managed_module = False
        try:
            yield
        finally:
            self.root._is_fsdp_managed_module = managed
            for unit in self.units:
                unit.reshard()
                unit.set_reshard_after_forward(self.reshard_after_forward, recurse=False)


def shard(adapter: ModelAdapter, *, reshard_after_forward: bool = True) -> Sharded:
    """Shard ``adapter``'s decoder layers over all processes (in place)."""
    from torch.distributed.fsdp import fully_shard  # late: FSDP's machinery, only when a run shards

    layers = decoder_layers(adapter)
    inside = {id(p) for layer in layers for p in layer.parameters()}
    for layer in layers:
        fully_shard(layer, reshard_after_forward=reshard_after_forward)
    # the root only orders the layers' communication (prefetching, the end of backward); it owns no weights
    outside = {p for p in adapter.core.parameters() if id(p) not in inside}
    root = fully_shard(adapter.core, ignored_params=outside)
    for unit in [*layers, root]:
        # gradients are summed, not averaged: the losses are already normalised by the global batch. Plain
        # SUM collectives (gloo has no pre-multiplied sum)
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    return Sharded(tuple(layers), root, reshard_after_forward)


def is_sharded(t: Tensor) -> bool:
    return isinstance(t, DTensor)


def clip_grad_norm(params: Sequence[Tensor], max_norm: float) -> float:
    """Clip the gradients of ``params`` (sharded and replicated ones mixed) to total L2 norm ``max_norm``;
    returns the norm before clipping. Without sharded ones it is ``torch.nn.utils.clip_grad_norm_``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(is_sharded(g) for g in grads):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    # as clip_grad_norm_ computes it: each tensor's norm, then the norm of those norms. A sharded tensor's
    # norm comes from its shards' squared norms, summed over processes in one all-reduce
    device = grads[0].device
    norms = torch.stack([torch.linalg.vector_norm(g.to_local() if is_sharded(g) else g) for g in grads])
    sharded = torch.tensor([is_sharded(g) for g in grads], device=device)
    sq = torch.where(sharded, norms.double() ** 2, torch.zeros_like(norms, dtype=torch.float64))
    tdist.all_reduce(sq, op=tdist.ReduceOp.SUM)
    norms = torch.where(sharded, sq.sqrt().to(norms.dtype), norms)
    total = torch.linalg.vector_norm(norms)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)  # what clip_grad_norm_ multiplies by
    if math.isfinite(float(total)):
        for g in grads:
            (g.to_local() if is_sharded(g) else g).mul_(coef)
    return float(total)


def full_tensor(t: Tensor, *, keep: bool) -> Tensor | None:
    """``t`` whole on CPU (a collective for a sharded ``t``); ``None`` where ``keep`` is false."""
    whole = t.full_tensor() if is_sharded(t) else t
    return whole.detach().to("cpu").contiguous().clone() if keep else None


def full_trainable_state(adapter: ModelAdapter, *, keep: bool) -> dict[str, Tensor]:
    """The trained weights (names as in ``core.named_parameters()``) as whole CPU copies, sharded ones
    gathered (every process must call it; only ``keep`` ones get them)."""
    out = {}
    for name, p in adapter.trainable_parameters():
        t = full_tensor(p, keep=keep)
        if keep:
            out[name] = t
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer, *, keep: bool) -> dict[str, Any] | None:
    """The optimizer's ``state_dict()`` with every sharded moment gathered whole onto CPU, as a single
    process would save it (every process must call it; only ``keep`` ones get it)."""
    sd = optimizer.state_dict()  # its per-parameter dicts are the live state: build new ones
    sd["state"] = {
        index: {k: full_tensor(v, keep=keep) if is_sharded(v) else v for k, v in st.items()}
        for index, st in sorted(sd["state"].items())
    }
    return sd if keep else None


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a full (single-process format) optimizer state, keeping each sharded parameter's own shard of
    its moments. Every process loads the same file, so nothing is sent."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def shard_of(p: Tensor, value: Any) -> Any:
        if is_sharded(p) and torch.is_tensor(value) and value.shape == p.shape:  # exp_avg, exp_avg_sq
            whole = value.to(p.device, p.dtype)
            return distribute_tensor(whole, p.device_mesh, p.placements, src_data_rank=None)
        return value  # the step count, or a replicated parameter's moments

    if len(sd["state"]) and max(int(i) for i in sd["state"]) >= len(params):
        raise ValueError(
            f"the saved state covers {len(sd['state'])} parameters, the optimizer has {len(params)}"
        )
    state = {i: {k: shard_of(params[int(i)], v) for k, v in st.items()} for i, st in sd["state"].items()}
    optimizer.load_state_dict({**sd, "state": state})


def copy_full_into(param: Tensor, full: Tensor) -> None:
    """``param.copy_(full)`` for a whole tensor ``full``; a sharded ``param`` takes its own shard of it."""
    with torch.no_grad():
        if is_sharded(param):
            shard = distribute_tensor(
                full.to(param.device, param.dtype), param.device_mesh, param.placements, src_data_rank=None
            )
            param.to_local().copy_(shard.to_local())
        else:
            param.copy_(full.to(param.device, param.dtype))


def load_trainable_state(adapter: ModelAdapter, state: dict[str, Tensor]) -> None:
    """The inverse of :func:`full_trainable_state`: whole tensors by name into the adapter's trained
    parameters (each sharded one takes its own shard); names must match exactly."""
    params = dict(adapter.trainable_parameters())
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the model's trainable parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (was the checkpoint written with another models.* config?)"
        )
    for n, p in params.items():
        copy_full_into(p, state[n])  # a sharded (FSDP) parameter takes its own shard


def local_numel(params: Sequence[Tensor]) -> int:
    """Elements this process holds of ``params`` (its shards of sharded ones)."""
    return sum(p.to_local().numel() if is_sharded(p) else p.numel() for p in params)
