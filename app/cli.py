"""``xopd-app``: the Streamlit explorer's launcher."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    # The explorer reads the trainer's rollout logs, which do not exist yet; say so rather than serve an empty page.
    print("xopd-app: the rollout explorer is not in this release yet (it needs the trainer's rollout logs).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
