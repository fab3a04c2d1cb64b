"""How fast the explorer shows a rollout: an absolute-time check against the issue's targets, not a comparison
with another tool.

Targets (issue 5): a 2,000-token rollout renders in under a second; a 10,000-rollout log opens without being
loaded whole. Measured here:

* ``render_2000``: building the HTML of one 2,000-token rollout (:func:`app.render.render_tokens`; decoded and
  raw views; teacher top-5 and both entropies in every tooltip), median of ``--repeats`` runs, and its size;
* ``log_10k``: a synthetic 10,000-rollout ``rollouts.jsonl`` (records built by
  :func:`xopd.rolloutlog.rollout_record` with SmolLM2's tokenizer, so pieces and multi-byte splits are real;
  lengths 32-512 tokens, one 2,000-token rollout among them) -- the time to index it
  (:meth:`analysis.logs.RolloutLog.open`, median of ``--repeats``), then to select, read and render that
  2,000-token rollout from it, and the Rollouts page end to end through Streamlit's AppTest (first run of a
  fresh app with an empty cache, and a rerun on the cached index).

Usage::

    .venv/bin/python bench/app_render.py [--repeats 20] [--rollouts 10000] [--keep DIR]

The log is written to a temporary directory (about 0.4 GB for 10,000 rollouts) and deleted afterwards unless
``--keep`` names a folder. Prints the numbers, the machine and its load average, and writes
``bench/results/app_render.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xopd.rollout_schema import rollout_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "app_render.json"
TARGET_RENDER_S = 1.0
LONG = 2000
TOPK = 5
TEXT = (
    "To find the difference, subtract the second number from the first: 63 − 80 = −17. Café owners in Zürich "
    "say the answer is “negative seventeen” 🙂 — but let's check it step by step.\n\n"
)


def set_environment() -> None:
    os.environ.setdefault("XOPD_HOME", str(ROOT / ".xopd-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from xopd.zoo import ensure

    return AutoTokenizer.from_pretrained(str(ensure("smollm2-135m-instruct")))


def make_record(tok: Any, ids: list[int], rng: random.Random, **fields: Any) -> dict[str, Any]:
    """A rollout-log record of ``ids`` with plausible numbers (the advantage wanders around zero, with a few
    tokens the teacher strongly dislikes)."""
    from xopd.rolloutlog import rollout_record

    n = len(ids)
    student = [-abs(rng.gauss(0.8, 1.0)) for _ in range(n)]
    adv = [rng.gauss(0.0, 0.3) - (4.0 if rng.random() < 0.02 else 0.0) for _ in range(n)]
    teacher = [s + a for s, a in zip(student, adv, strict=True)]
    topk_ids = [[rng.randrange(tok.vocab_size) for _ in range(TOPK)] for _ in range(n)]
    topk_lp = [sorted((-abs(rng.gauss(1.5, 1.0)) for _ in range(TOPK)), reverse=True) for _ in range(n)]
    return rollout_record(
        token_ids=ids, student_lp=student, teacher_lp=teacher, advantage=adv, sampler_lp=student,
        finished=False, tokenizer=tok, topk_ids=topk_ids, topk_lp=topk_lp,
        student_entropy=[abs(rng.gauss(2.0, 1.0)) for _ in range(n)],
        teacher_entropy=[abs(rng.gauss(2.0, 1.0)) for _ in range(n)], **fields,
    )  # fmt: skip


def write_log(path: Path, tok: Any, rollouts: int, rng: random.Random) -> dict[str, Any]:
    """``rollouts`` records (64 distinct bodies of 32-512 tokens, re-labelled by step / prompt / modality /
    sample), with the 2,000-token one in the middle; returns the long record's key."""
    text_ids = tok(TEXT * 400, add_special_tokens=False)["input_ids"]
    base = dict(kind="xopd", prompt_text="What is 63 minus 80?\nAnswer with the number only.", variant=None)
    bodies = []
    for i in range(64):
        n = rng.choice([32, 64, 128, 256, 512])
        start = rng.randrange(len(text_ids) - n)
        modality = "speech" if i % 2 else "text"
        bodies.append(make_record(
            tok, text_ids[start : start + n], rng, step=1, prompt_id="p", modality=modality, sample=0,
            spoken_text="What is 63 minus 80?" if modality == "speech" else None,
            audio_path=None, **base))  # fmt: skip
    long_key = {"step": rollouts // 16 // 2 + 1, "prompt_id": "arithmetic/long/0000", "modality": "speech",
                "sample": 0}
    long = make_record(tok, text_ids[:LONG], rng, spoken_text="What is 63 minus 80?", audio_path=None,
                       **long_key, **base)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rollouts):
            if i == rollouts // 2:
                fh.write(rollout_line(long))
                continue
            body = bodies[i % len(bodies)]
            # 16 rollouts per step: 4 prompts x 2 modalities x 2 samples, the trainer's key order kept
            rec = dict(body, step=i // 16 + 1, prompt_id=f"arithmetic/synthetic/{(i // 4) % 4:04d}",
                       modality=("text", "speech")[(i // 2) % 2], sample=i % 2)
            fh.write(rollout_line(rec))
    return long_key


def median_time(fn: Any, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rollouts", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, help="write the synthetic log here and keep it")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)
    set_environment()
    from analysis.logs import RolloutLog
    from app.render import render_tokens

    load_before = [round(x, 2) for x in os.getloadavg()]
    rng = random.Random(0)
    tok = tokenizer()
    result: dict[str, Any] = {
        "note": "absolute-time targets from issue 5 (not a comparison with another tool)",
        "targets": {"render_2000_tokens_s": TARGET_RENDER_S, "log_10k": "opens without loading every record"},
    }

    # 1. one 2,000-token rollout
    rec = make_record(tok, tok(TEXT * 100, add_special_tokens=False)["input_ids"][:LONG], rng, step=1,
                      prompt_id="p", modality="speech", sample=0, spoken_text="x", audio_path=None,
                      kind="xopd",
                      prompt_text="q", variant=None)
    assert rec["num_tokens"] == LONG
    render: dict[str, Any] = {"tokens": LONG, "topk_in_tooltip": TOPK}
    for view in ("decoded", "raw"):
        raw = view == "raw"
        render_tokens(rec["tokens"], raw=raw)  # warm
        med, times = median_time(lambda raw=raw: render_tokens(rec["tokens"], raw=raw), args.repeats)
        size = len(render_tokens(rec["tokens"], raw=raw).html.encode("utf-8"))
        render[view] = {"median_s": med, "max_s": max(times), "html_bytes": size,
                        "bytes_per_token": round(size / LONG)}
    render["meets_target"] = max(render["decoded"]["median_s"], render["raw"]["median_s"]) < TARGET_RENDER_S
    result["render_2000"] = render

    # 2. a 10,000-rollout log
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "rollouts.jsonl"
        t = time.perf_counter()
        long_key = write_log(path, tok, args.rollouts, rng)
        written = time.perf_counter() - t
        repeats = max(3, args.repeats // 4)
        med_open, open_times = median_time(lambda: RolloutLog.open(path), repeats)
        log = RolloutLog.open(path)
        assert len(log) == args.rollouts and not log.problems, log.problems[:3]

        def show_long() -> int:
            (entry,) = [e for e in log.select(step=long_key["step"], modality="speech",
                                              prompt_id=long_key["prompt_id"]) if e.sample == 0]
            return len(render_tokens(log.read(entry)["tokens"]).html)

        med_show, _ = median_time(show_long, args.repeats)
        page = app_page_times(folder, long_key)
        result["log_10k"] = {
            "rollouts": len(log), "file_mb": round(path.stat().st_size / 2**20, 1),
            "write_s": round(written, 1),
            "index_s_median": med_open, "index_s_all": open_times,
            "select_read_render_2000_s_median": med_show,
            "rollouts_page": page,
        }  # fmt: skip

    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform()}
    result["load_average"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    r, lg = result["render_2000"], result["log_10k"]
    print(f"2,000-token rollout -> HTML: decoded {1e3 * r['decoded']['median_s']:.1f} ms "
          f"({r['decoded']['html_bytes'] / 1e3:.0f} kB, {r['decoded']['bytes_per_token']} B/token), raw "
          f"{1e3 * r['raw']['median_s']:.1f} ms (median of {args.repeats}; target < {TARGET_RENDER_S:g} s)")
    print(f"{lg['rollouts']:,}-rollout log ({lg['file_mb']} MB): index {lg['index_s_median']:.2f} s; "
          f"select + read + render the 2,000-token rollout "
          f"{1e3 * lg['select_read_render_2000_s_median']:.0f} ms")
    p = lg["rollouts_page"]
    print(f"Rollouts page (AppTest, deep link to that rollout): fresh app {p['first_run_s']:.2f} s "
          f"(imports + index + render), fresh session on a cold cache {p['cold_cache_s']:.2f} s, "
          f"rerun {p['rerun_s']:.2f} s")
    print(f"machine: {result['machine']['affinity']} CPUs; load average {load_before} -> "
          f"{result['load_average']['after']}; wrote {args.output}")
    return 0


def app_page_times(folder: Path, key: dict[str, Any]) -> dict[str, float]:
    """The Rollouts page deep-linked to the long rollout: a fresh app (Streamlit and page imports included),
    a fresh session after clearing the caches (the log is indexed again), and a rerun (cached index)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["XOPD_APP_LOGDIR"] = str(folder)
    q = {k: str(v) for k, v in key.items()}

    def session() -> tuple[AppTest, float]:
        at = AppTest.from_file(str(ROOT / "app" / "explorer.py"), default_timeout=300)
        at.query_params.update(q)
        t = time.perf_counter()
        at.run()
        dt = time.perf_counter() - t
        assert not at.exception and any('class="xo-tokens"' in h.body for h in at.html), "page did not render"
        return at, dt

    _, first = session()
    st.cache_resource.clear()
    st.cache_data.clear()
    at, cold = session()
    t = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - t
    return {"first_run_s": first, "cold_cache_s": cold, "rerun_s": rerun}


if __name__ == "__main__":
    raise SystemExit(main())
