"""Optional components of the test run: skipped on a developer's machine without them, a failure on CI.

CI (``CI=true``) installs everything with scripts/setup.sh, so a missing or broken vLLM there is a broken
install, and skipping its tests would let the run go green without them.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def import_vllm() -> ModuleType:
    """``vllm``, or a skip (a failure on CI) naming why it does not import."""
    try:
        import vllm
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        reason = f"vllm does not import: {type(exc).__name__}: {exc}"
        if on_ci():
            pytest.fail(f"CI=true: {reason} (scripts/setup.sh installs it; the vLLM tests may not be skipped)",
                        pytrace=False)
        pytest.skip(reason)
    return vllm
