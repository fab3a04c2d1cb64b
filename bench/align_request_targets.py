"""What generating the behaviour requests' targets once per run (``xopd.world.align.request_targets``) saves
against generating them inside every training step (the alignment before commit 04b1b57), measured in one run.

For ``--steps`` steps, each with ``--per-step`` requests drawn from the run's pool (the default pool of
``xopd.world.align``: 4 reasoning-gym datasets x 150, spoken form + instruction):

* ``per_step``: the responding LLM (``--respond-llm``, default SmolLM2-135M-Instruct from the zoo) generates that
  step's targets as one left-padded batch of ``RESPOND_TOKENS`` new tokens -- what every step used to pay;
* ``table``: the targets are looked up in the table ``request_targets`` built once for the whole pool; its one-time
  cost is reported beside it, and as the number of steps after which it has paid for itself.

It also counts how many of the drawn requests get other ids from the per-step batch than from the table: greedy
decoding in another batching may break a near-tie the other way.

Usage::

    XOPD_HOME=$PWD/.xopd-home .venv/bin/python bench/align_request_targets.py [--steps 10] [--per-step 4]

Prints the numbers, the machine and its load average, and writes ``bench/results/align_request_targets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from xopd.world import align
from xopd.world.respond_pool import DEFAULT_RESPOND_FROM, respond_requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--per-step", type=int, default=4, help="requests per step (half of a batch of 8)")
    ap.add_argument("--respond-llm", default="smollm2-135m-instruct")
    ap.add_argument("--per-dataset", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    requests = respond_requests(DEFAULT_RESPOND_FROM.split(","), args.per_dataset, args.seed)
    from xopd.loading import load_text_lm
    from xopd.models import resolve_model_name

    _, tokenizer = load_text_lm(resolve_model_name(args.respond_llm))  # its own vocabulary stands in for a student's
    responder = align.TextResponder(args.respond_llm, tokenizer)
    rng = random.Random(args.seed)
    pool = [(name, i) for name, reqs in requests.items() for i in range(len(reqs))]
    steps = [rng.sample(pool, args.per_step) for _ in range(args.steps)]

    per_step_s, step_ids = [], []
    for drawn in steps:
        t = time.perf_counter()
        step_ids.append(responder([requests[n][i] for n, i in drawn], align.RESPOND_TOKENS))
        per_step_s.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        table = align.request_targets(lambda: responder, requests, align.RESPOND_TOKENS,
                                      Path(tmp) / "request_targets.json", args.respond_llm)
        build_s = time.perf_counter() - t
    lookup_s, differ = [], 0
    for drawn, ids in zip(steps, step_ids):
        t = time.perf_counter()
        got = [table[n][i] for n, i in drawn]
        lookup_s.append(time.perf_counter() - t)
        differ += sum(a != b for a, b in zip(got, ids))

    mean_step, mean_lookup = sum(per_step_s) / len(per_step_s), sum(lookup_s) / len(lookup_s)
    result = {
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
        "load_before": load_before, "load_after": os.getloadavg(),
        "respond_llm": args.respond_llm, "pool": len(pool), "steps": args.steps, "per_step": args.per_step,
        "per_step_generation_s": round(mean_step, 3), "table_lookup_s": mean_lookup,
        "table_build_s": round(build_s, 1), "ratio_per_step_over_lookup": round(mean_step / max(mean_lookup, 1e-9)),
        "break_even_steps": round(build_s / mean_step),
        "targets_differing_by_batching": f"{differ}/{args.steps * args.per_step}",
    }
    print(json.dumps(result, indent=2))
    print(f"one step's {args.per_step} request targets: generated {mean_step:.2f} s vs looked up "
          f"{mean_lookup * 1e6:.1f} us; the table of {len(pool)} costs {build_s:.0f} s once "
          f"(= {result['break_even_steps']} steps of per-step generation)")
    out = Path(__file__).parent / "results" / "align_request_targets.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
