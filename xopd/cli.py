"""``xopd-train``: the X-OPD trainer's command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # The trainer lands with its own issue; until then say so instead of pretending to train.
    print(
        "xopd-train: the X-OPD trainer is not in this release yet. "
        "Available now: `xopd-eval zoo list|build` and `xopd-eval smoke`.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
