"""The rollout engine a config names: ``hf`` (:class:`xopd.rollout.HFRolloutEngine`) or ``vllm``
(:class:`xopd.rollout_vllm.VLLMRolloutEngine`, which builds on :mod:`xopd.rollout`; vLLM itself is imported
only when such an engine starts). Above both, so neither imports the other back."""

from __future__ import annotations

from collections.abc import Sequence

from xopd.models import ModelAdapter
from xopd.rollout import HFRolloutEngine, RolloutEngine
from xopd.rollout_vllm import VLLMRolloutEngine


def make_engine(
    name: str,
    adapter: ModelAdapter,
    *,
    vocab_size: int,
    batch_size: int,
    banned_ids: Sequence[int] = (),
    seed: int = 0,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.3,
    max_model_len: int | None = None,
) -> RolloutEngine:
    """The rollout engine ``name`` for ``adapter``: samples ids in ``[0, vocab_size)`` but ``banned_ids``."""
    if name == "hf":
        return HFRolloutEngine(adapter, vocab_size=vocab_size, batch_size=batch_size, banned_ids=banned_ids)
    if name == "vllm":
        return VLLMRolloutEngine(
            adapter,
            vocab_size=vocab_size,
            banned_ids=banned_ids,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )
    raise ValueError(f"unknown rollout engine {name!r} (expected hf or vllm)")
