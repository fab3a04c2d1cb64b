"""``xopd-train``: the X-OPD trainer's command line.

    xopd-train --config recipes/demo.yaml                      # train (resumes from the latest checkpoint)
    xopd-train --config recipes/demo.yaml optim.lr=1e-5 loss.kind=sft output_dir=artifacts/sft
    xopd-train --config recipes/demo.yaml --resume artifacts/demo/train/checkpoints/step-000004
    xopd-train --config recipes/demo.yaml --no-resume output_dir=artifacts/fresh
    xopd-train --config recipes/demo.yaml --print-config      # the resolved config, nothing trained

Every ``key=value`` is a dotted override of a recipe key (see :mod:`xopd.config`); an unknown key is an error
that names it.
"""

from __future__ import annotations

import argparse
import os
import sys

from xopd.cli_errors import TRAIN_ERRORS, run_cli
from xopd.config import load_config, to_yaml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xopd-train",
        description="Cross-modal on-policy distillation (X-OPD) of a speech LLM from its text LLM.",
        epilog="Overrides: dotted keys of the recipe, e.g. optim.lr=1e-5 rollout.n=4 loss.kind=gkd.",
    )
    p.add_argument("--config", "-c", help="YAML recipe (default: built-in defaults)")
    p.add_argument("--output-dir", "-o", help="same as output_dir=...")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint directory")
    resume.add_argument(
        "--no-resume", action="store_true", help="start fresh; fails if output_dir has checkpoints"
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def _train(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume}")
    elif args.no_resume:
        overrides.append("checkpoint.resume=never")
    cfg = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    from xopd.trainer import train  # heavy imports only when training

    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting turn a busy shared CPU into a 5-10x slowdown (measured here: a
    # demo step took 90-170 s next to another 2-thread job, 20 s with passive waiting). It only works before
    # torch loads, hence here; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    # a bad key or value, an unknown model or task, an unusable checkpoint: "xopd-train: <message>", exit 2
    return run_cli("xopd-train", _train, args, expected=TRAIN_ERRORS)


if __name__ == "__main__":
    raise SystemExit(main())
