"""Generation backends: ``make_backend("hf" | "vllm", model, **kwargs)``.

Backend modules import lazily, so ``--backend hf`` never pays for importing vLLM (and works where it is
absent).
"""

from __future__ import annotations

import importlib
from typing import Any

from evalsuite.backends.base import Backend, Result

__all__ = ["BACKENDS", "Backend", "Result", "make_backend"]

BACKENDS: dict[str, str] = {
    "hf": "evalsuite.backends.hf:HFBackend",
    "vllm": "evalsuite.backends.vllm:VLLMBackend",
}


def make_backend(name: str, model: str, **kwargs: Any) -> Backend:
    """A backend ``name`` serving ``model`` (zoo name, HF id, local path or ``cascade:<asr>+<llm>``).

    kwargs go to its constructor: batch_size, dtype, device for hf; tensor_parallel_size, max_model_len, ...
    for vllm.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(model, **kwargs)
