"""``xopd-eval divergence``: where a student leaves its teacher, token by token -- scored on demand or read
from a training run.

    xopd-eval divergence --model xopd-speech-smollm2 --teacher smollm2-135m-instruct --tasks sums \\
        --limit 4 --output artifacts/divergence
    xopd-eval divergence --logdir artifacts/tiny            # summarise a trainer's rollout log (read only)

With models, the student's rollouts on the tasks' test items (spoken and typed) are scored by the teacher
(:mod:`analysis.score`) and written to ``OUTPUT/rollouts.jsonl`` in the trainer's rollout-log schema (so
``xopd-app --logdir OUTPUT`` shows them), with ``OUTPUT/summary.json`` (every aggregate of
:mod:`analysis.aggregate`), the figures of :mod:`analysis.figures` and the WAVs the student heard
under ``OUTPUT/audio/``. With ``--logdir`` nothing is written into the run directory; ``--output`` (elsewhere)
gets the summary and figures. Both print the same summary table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from analysis import DEFAULT_THRESHOLD
from analysis.logs import RunDir
from xopd.data import task_pairs
from xopd.paths import atomic_write_text
from xopd.rollout_schema import ROLLOUT_LOG, rollout_line

# Imported late, inside the functions, to keep ``xopd-eval``'s start-up light (this module registers the
# subcommand): analysis.aggregate and analysis.table (pandas), analysis.figures (matplotlib), analysis.score
# and xopd.models (torch, transformers).

SUMMARY_VERSION = 1


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(subparsers: Any) -> None:
    """Add ``divergence`` to ``xopd-eval`` (``subparsers``: its ``add_subparsers()``). evalsuite sits below
    analysis and never imports it: this function is an entry point of ``xopd_eval.commands`` (pyproject.toml),
    which :func:`evalsuite.cli.build_parser` loads."""
    help_line = "per-token teacher-student divergence of a student's rollouts"
    p = subparsers.add_parser("divergence", help=help_line)
    add_arguments(p)
    p.set_defaults(fn=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="student: zoo name, fixture:<key>, HF id or path")
    p.add_argument("--teacher", default=None, help="text teacher sharing the student's vocabulary")
    p.add_argument("--tasks", default="sums,counting,syllogism,family",
                   help="comma-separated evalsuite tasks (test split; default: the default mix)")
    p.add_argument("--limit", type=int, default=8, help="items per task")
    p.add_argument("--modalities", default="text,speech", help="text, speech or both")
    p.add_argument("--n", type=int, default=1, help="rollouts per prompt and modality")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--variant", default="clean", help="TTS variant of the spoken prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=5, help="teacher alternatives logged per token (0: none)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--system", default=None, help="system prompt for both models")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--logdir", default=None, help="summarise this run's rollouts.jsonl instead (no models)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="first divergence: first token whose advantage is below this")
    p.add_argument("--top", type=int, default=10, help="divergent tokens to print")
    p.add_argument("--output", default=None, help="folder for rollouts.jsonl, summary.json and figures")


def _write_outputs(out: Path, table: Any, summary: dict[str, Any], threshold: float) -> list[Path]:
    from analysis.figures import write_figures  # late: matplotlib

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return [out / "summary.json", *write_figures(table, out, threshold=threshold)]


def _summary(table: Any, args: argparse.Namespace, config: dict[str, Any], t0: float) -> dict[str, Any]:
    from analysis import aggregate  # late: pandas

    agg = aggregate.summarize(table, threshold=args.threshold, top=max(args.top, 20))
    return {"kind": "divergence", "version": SUMMARY_VERSION, "config": config, **agg,
            "wall_time_s": round(time.perf_counter() - t0, 1)}


def from_logdir(args: argparse.Namespace) -> int:
    from analysis.aggregate import format_summary  # late, as the next one: pandas
    from analysis.table import token_table

    t0 = time.perf_counter()
    rd = RunDir(args.logdir)
    log = rd.rollouts()
    if log is None:
        _log(f"xopd-eval divergence: {rd.root} has no rollouts.jsonl")
        return 2
    out = Path(args.output).resolve() if args.output else None
    if out is not None and (out == rd.root or out.is_relative_to(rd.root)):
        _log(f"xopd-eval divergence: --output {out} lies inside --logdir {rd.root}, which is read only")
        return 2
    problems = list(log.problems)
    table = token_table(log.iter_records(problems=problems), topk=False)
    for p in problems:
        _log(f"warning: {p}")
    if table.empty:
        _log(f"xopd-eval divergence: {log.path} holds no readable rollouts")
        return 2
    summary = _summary(table, args, {"logdir": str(rd.root), "problems": problems}, t0)
    print(format_summary(summary, top=args.top))
    if out is not None:
        written = _write_outputs(out, table, summary, args.threshold)
        print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def from_models(args: argparse.Namespace) -> int:
    from analysis.aggregate import format_summary  # late, as the next four: pandas, torch, transformers
    from analysis.score import score_pairs
    from analysis.table import token_table
    from xopd.models import load_adapter

    if not args.model or not args.teacher or not args.output:
        _log("xopd-eval divergence: give --model, --teacher and --output (or --logdir RUN to read a run)")
        return 2
    t0 = time.perf_counter()
    out = Path(args.output)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    pairs = [p for name in tasks for p in task_pairs(name, split="test", limit=args.limit, seed=args.seed)]
    kw = {"dtype": args.dtype, "device": args.device, "trust_remote_code": args.trust_remote_code}
    _log(f"loading student {args.model} and teacher {args.teacher}")
    student, teacher = load_adapter(args.model, **kw), load_adapter(args.teacher, **kw)
    records = score_pairs(
        student,
        teacher,
        pairs,
        out,
        modalities=modalities,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        variant=args.variant,
        seed=args.seed,
        topk=args.topk,
        batch_size=args.batch_size,
        system=args.system,
        log=_log,
    )
    atomic_write_text(out / ROLLOUT_LOG, "".join(rollout_line(r) for r in records))  # the one log format
    table = token_table(records, topk=False)
    config = {k: getattr(args, k) for k in ("model", "teacher", "limit", "n", "max_new_tokens", "temperature",
                                             "variant", "seed", "topk", "dtype")}
    config |= {"tasks": tasks, "modalities": modalities, "prompts": len(pairs)}
    summary = _summary(table, args, config, t0)
    print(format_summary(summary, top=args.top))
    written = _write_outputs(out, table, summary, args.threshold)
    print(f"\nwall time {summary['wall_time_s']} s; wrote {out / 'rollouts.jsonl'}, "
          f"{', '.join(str(p) for p in written)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The subcommand: bad input (unknown task or model, unreadable log) -> a message and exit code 2."""
    # LogError and xopd.data.DataError are ValueErrors; xopd.loading (transformers) only when models load
    errors: tuple[type[BaseException], ...] = (ValueError, OSError)
    if not args.logdir:
        from xopd.loading import ModelLoadError

        errors += (ModelLoadError,)
    try:
        return from_logdir(args) if args.logdir else from_models(args)
    except errors as exc:
        _log(f"xopd-eval divergence: {exc}")
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xopd-eval divergence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
