"""``xopd-eval``: evaluation commands. Today: the offline model zoo and its smoke job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_zoo(args: argparse.Namespace) -> int:
    from xopd.zoo import ZOO, ensure, zoo_dir

    if args.action == "list":
        print(f"zoo cache: {zoo_dir()}  (set XOPD_HOME to move it)")
        for e in ZOO.values():
            built = "built" if (zoo_dir() / e.name / "xopd_zoo.json").exists() else "-"
            print(f"  {e.name:24s} {e.kind:10s} {built:6s} {e.description}")
        return 0
    names = args.names or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        print(f"unknown zoo model(s): {', '.join(unknown)}; available: {', '.join(ZOO)}", file=sys.stderr)
        return 2
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        print(f"      {ensure(name)}")
    return 0


def _cmd_smoke(args: argparse.Namespace) -> int:
    from evalsuite.smoke import format_markdown, run_smoke

    report = run_smoke(Path(args.output) if args.output else None, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_markdown(report))
    if args.output:
        print(f"\nreport: {Path(args.output) / 'smoke.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xopd-eval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    z = sub.add_parser("zoo", help="list or build the offline model zoo")
    z.add_argument("action", choices=["list", "build"])
    z.add_argument("names", nargs="*", help="zoo models to build (default: all)")
    z.set_defaults(fn=_cmd_zoo)
    s = sub.add_parser("smoke", help="run every zoo model once and report what it did")
    s.add_argument("--output", default=None, help="folder for smoke.json")
    s.set_defaults(fn=_cmd_smoke)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
