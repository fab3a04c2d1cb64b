"""Shared by the tests that train with ``rollout.engine=vllm`` (test_rollout_vllm, test_distributed): the
overrides of a 2-step run on the demo recipe, and the sampler-vs-trainer log-prob gaps of its rollout log."""

from __future__ import annotations

from typing import Any

TWO_VLLM_STEPS = [
    "rollout.engine=vllm",
    "schedule.steps=2",
    "data.limit=8",
    "eval.at_start=false",
    "eval.at_end=false",
    "eval.every=0",
    "checkpoint.every=0",
    "checkpoint.export_final=false",
    "logging.progress=false",
    "rollout.max_new_tokens=8",
]

# |vLLM sampler log-prob - HF log-prob| of the same token, float32 on both sides. Measured here: <= 3.5e-5
# (oneDNN vs torch matmuls); a wrong distribution (raw instead of processed log-probs, banned ids not
# renormalised away, temperature ignored, stale weights) is off by > 1e-2.
TOL = 1e-3


def sampler_gaps(rows: list[dict[str, Any]], step: int) -> list[float]:
    """|sampler_lp - student_lp| of every token the rollout log holds for ``step``."""
    return [
        abs(s - p)
        for r in rows
        if r["step"] == step
        for s, p in zip(r["tokens"]["sampler_lp"], r["tokens"]["student_lp"], strict=True)
    ]
