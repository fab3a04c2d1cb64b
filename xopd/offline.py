"""``XOPD_OFFLINE=1``: refuse, at once and by name, anything that would download data or weights at run time.

Every place in xopd, evalsuite and analysis that could fetch from the network (a hub model id, a hub dataset,
the BIG-bench sdist, ...) calls :func:`check_online` *before* the fetch starts, so that "nothing is
downloaded at run time" is something a test run (``make test`` sets it) or a cluster job can check rather
than hope for. Torch-free and cheap: safe to call from anywhere.
"""

from __future__ import annotations

import os

ENV_VAR = "XOPD_OFFLINE"
_TRUE = frozenset({"1", "true", "yes"})


class OfflineError(RuntimeError):
    """A download was about to start while ``XOPD_OFFLINE`` is set."""


def is_offline() -> bool:
    """True when ``$XOPD_OFFLINE`` is 1 / true / yes (any case)."""
    return os.environ.get(ENV_VAR, "").strip().lower() in _TRUE


def check_online(what: str, *, how: str = "provide a local copy instead") -> None:
    """Raise :class:`OfflineError` naming ``what`` (e.g. ``"model 'org/name' from the Hugging Face hub"``)
    when offline; do nothing otherwise. ``how`` says how to provide it locally."""
    if not is_offline():
        return
    # Belt and braces for whatever else runs in this process (or is started from it) without asking us:
    # the hub libraries' own offline switches. They are read at import time, so this only reaches later
    # imports and child processes; the refusal below is what guarantees nothing is fetched here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    raise OfflineError(
        f"{ENV_VAR}={os.environ[ENV_VAR].strip()}: refusing to fetch {what} at run time; "
        f"{how}, or unset {ENV_VAR} to allow downloads"
    )
