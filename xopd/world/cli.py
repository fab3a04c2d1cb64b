"""What the demo world's scripts share on their command lines: the parser, and the arguments of a resumable
training run (length, checkpoints, validation, logging, threads) whose defaults each script sets."""

from __future__ import annotations

import argparse


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """``python -m <module>``'s parser, its help the module docstring as written."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_args(p: argparse.ArgumentParser, *, max_steps: int, save_every: int, eval_every: int, eval_limit: int,
                 eval_limit_help: str, eval_batch_size: int, eval_max_new_tokens: int) -> None:
    p.add_argument("--max-steps", type=int, default=max_steps)
    p.add_argument("--max-minutes", type=float, default=None, help="save and stop after this many minutes")
    p.add_argument("--save-every", type=int, default=save_every)
    p.add_argument("--eval-every", type=int, default=eval_every)
    p.add_argument("--eval-limit", type=int, default=eval_limit, help=eval_limit_help)
    p.add_argument("--eval-batch-size", type=int, default=eval_batch_size)
    p.add_argument("--eval-max-new-tokens", type=int, default=eval_max_new_tokens)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
