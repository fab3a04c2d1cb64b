"""``xopd-app --logdir DIR [--port P]``: the Streamlit explorer of per-token teacher–student divergence.

It replaces itself with ``streamlit run app/explorer.py`` (exec: one process, so stopping it stops the
server), bound to 127.0.0.1 -- rollout logs hold prompts and model outputs, so they are not served to the
network unless someone forwards the port on purpose -- headless, without usage statistics or a file watcher.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xopd.cli_errors import APP_ERRORS, run_cli

SCRIPT = Path(__file__).resolve().parent / "explorer.py"
DEFAULT_PORT = 8501


def streamlit_argv(logdir: Path, port: int, address: str = "127.0.0.1") -> list[str]:
    """The ``python -m streamlit run`` command line the explorer is served with."""
    return [
        sys.executable, "-m", "streamlit", "run", str(SCRIPT),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
        "--", "--logdir", str(logdir),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    # a missing or unreadable --logdir, a python that cannot be exec'ed: "xopd-app: <message>", exit 2
    return run_cli("xopd-app", _serve, argv, expected=APP_ERRORS)


def _serve(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="xopd-app",
        description="Explore rollout logs (per-token teacher–student divergence), training curves and eval "
        "reports of xopd runs in the browser. Reads only inside --logdir; never writes there.",
    )
    parser.add_argument("--logdir", required=True,
                        help="a run directory (xopd-train's output_dir) or a folder of runs")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument("--print-command", action="store_true", help="print the streamlit command and exit")
    args = parser.parse_args(argv)
    logdir = Path(args.logdir)
    if not logdir.exists():
        print(f"xopd-app: log directory {logdir} does not exist", file=sys.stderr)
        return 2
    if not logdir.is_dir():
        print(f"xopd-app: {logdir} is not a directory (pass the run directory, not one of its files)",
              file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"xopd-app: port {args.port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    logdir = logdir.resolve()
    cmd = streamlit_argv(logdir, args.port)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    print(f"xopd-app: serving {logdir} on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    env = {**os.environ, "XOPD_APP_LOGDIR": str(logdir)}
    os.execve(sys.executable, cmd, env)  # does not return
    return 0  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
