"""The numbers behind the Training and Gap charts, as long tables: pure functions, records in, frames out.

Training: the reverse-KL estimate (mean over tokens of ``student_lp - teacher_lp``) per modality and step from
three places that answer different questions -- ``metrics.jsonl`` (the training batch of that step),
``eval.jsonl`` (held-out prompts, sampled fresh at evaluation steps) and the rollout log's index (the logged
rollouts, token-weighted, read from line headers without touching the token arrays).

Gap: accuracies and the paired text - speech gap (with its bootstrap CI) of every ``xopd-eval gap`` report,
and the model - base deltas of every ``forgetting`` report, by the step their folder names (``step-NNNNNN``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.logs import LogEntry

SOURCES = {  # short: they are chart legend labels (the page's caption names the files)
    "metrics": "training batch",
    "eval": "held-out eval",
    "rollouts": "logged rollouts",
}
OVERALL = "overall"
_KL_PREFIX = "kl_"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _kl_rows(records: Iterable[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """``kl_<modality>`` fields of step records (``kl_sampled_*`` and ``kl_mean`` are other quantities)."""
    rows = []
    for r in records:
        step = r.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for key, v in r.items():
            if not key.startswith(_KL_PREFIX) or key.startswith("kl_sampled_") or key == "kl_mean":
                continue
            if _finite(v):
                modality = key[len(_KL_PREFIX) :]
                rows.append({"step": step, "modality": modality, "source": SOURCES[source], "kl": v})
    return rows


def rollout_kl(entries: Sequence[LogEntry]) -> list[dict[str, Any]]:
    """Token-weighted mean reverse KL of the logged rollouts per (step, modality), from the index alone."""
    acc: dict[tuple[int, str], list[float]] = {}
    for e in entries:
        if e.reverse_kl is None or not math.isfinite(e.reverse_kl) or e.num_tokens <= 0:
            continue
        a = acc.setdefault((e.step, e.modality), [0.0, 0.0, 0])
        a[0] += e.reverse_kl * e.num_tokens
        a[1] += e.num_tokens
        a[2] += 1
    return [
        {"step": s, "modality": m, "source": SOURCES["rollouts"], "kl": tot / n, "rollouts": k}
        for (s, m), (tot, n, k) in sorted(acc.items())
    ]


def training_kl(
    metrics: Iterable[dict[str, Any]], evals: Iterable[dict[str, Any]], entries: Sequence[LogEntry]
) -> pd.DataFrame:
    """Long table ``step, modality, source, kl`` of every KL series the run logged."""
    rows = _kl_rows(metrics, "metrics") + _kl_rows(evals, "eval") + rollout_kl(entries)
    df = pd.DataFrame(rows, columns=["step", "modality", "source", "kl", "rollouts"])
    return df.sort_values(["source", "modality", "step"], kind="stable").reset_index(drop=True)


def other_metrics(metrics: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Long table ``step, metric, value`` of metrics.jsonl's other numbers (loss, grad norm, lengths...)."""
    rows = []
    for r in metrics:
        step = r.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for key, v in r.items():
            if key != "step" and not key.startswith(_KL_PREFIX) and _finite(v):
                rows.append({"step": step, "metric": key, "value": float(v)})
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


# ------------------------------------------------------------------------------------------------------------
# evalsuite reports
# ------------------------------------------------------------------------------------------------------------


def _label(step: int | None, path: Path, root: Path) -> str:
    if step is not None:
        return f"step {step}"
    try:
        return str(path.parent.relative_to(root)) or "."
    except ValueError:
        return str(path.parent)


def gap_frames(
    reports: Sequence[tuple[int | None, Path, dict[str, Any]]], root: Path, problems: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From gap reports: accuracies ``step, at, task, mode, accuracy, n, extraction_fail_rate`` (task
    ``overall`` = the macro mean over tasks) and gaps ``step, at, task, mode, diff, ci_lo, ci_hi, mcnemar_p,
    n`` (``overall`` = items pooled over tasks). ``at`` labels the report: its step, else its folder. A report
    whose fields do not have the expected shape is left out and named in ``problems``."""
    acc, gap = _report_rows(reports, "gap", _gap_report_rows, root, problems)
    acc_cols = ["step", "at", "task", "mode", "accuracy", "n", "extraction_fail_rate"]
    gap_cols = ["step", "at", "task", "mode", "diff", "ci_lo", "ci_hi", "mcnemar_p", "n"]
    return _numeric(pd.DataFrame(acc, columns=acc_cols)), _numeric(pd.DataFrame(gap, columns=gap_cols))


def _report_rows(
    reports: Sequence[tuple[int | None, Path, dict[str, Any]]],
    kind: str,
    rows_of: Any,
    root: Path,
    problems: list[str] | None,
) -> tuple[list[dict], list[dict]]:
    """``rows_of(step, label, report) -> (rows, rows)`` over the reports of ``kind``, concatenated; a report
    whose fields do not have the expected shape is left out and named in ``problems``."""
    first, second = [], []
    for step, path, rep in reports:
        if rep.get("kind") != kind:
            continue
        try:
            a, b = rows_of(step, _label(step, path, root), rep)
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
            if problems is not None:
                problems.append(f"{path}: not a well-formed {kind} report ({exc!r})")
            continue
        first += a
        second += b
    return first, second


def _gap_report_rows(step: int | None, at: str, rep: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    acc, gap = [], []
    for task, entry in (rep.get("tasks") or {}).items():
        for mode, m in (entry.get("modes") or {}).items():
            acc.append({"step": step, "at": at, "task": task, "mode": mode, "accuracy": m.get("accuracy"),
                        "n": m.get("n"), "extraction_fail_rate": m.get("extraction_fail_rate")})
        for mode, g in (entry.get("gap") or {}).items():
            gap.append(_gap_row(step, at, task, mode, g))
    overall = rep.get("overall") or {}
    for mode, a in (overall.get("macro") or {}).items():
        acc.append({"step": step, "at": at, "task": OVERALL, "mode": mode, "accuracy": a, "n": None,
                    "extraction_fail_rate": None})
    for mode, g in (overall.get("gap") or {}).items():
        gap.append(_gap_row(step, at, OVERALL, mode, g))
    teacher = (rep.get("teacher") or {}).get("text_accuracy") or {}
    for task, a in teacher.items():
        acc.append({"step": step, "at": at, "task": task, "mode": "teacher text", "accuracy": a, "n": None,
                    "extraction_fail_rate": None})
    if teacher:
        acc.append({"step": step, "at": at, "task": OVERALL, "mode": "teacher text", "n": None,
                    "accuracy": sum(teacher.values()) / len(teacher), "extraction_fail_rate": None})
    return acc, gap


def _gap_row(step: int | None, at: str, task: str, mode: str, g: dict[str, Any]) -> dict[str, Any]:
    ci = g.get("ci") or [None, None]
    return {"step": step, "at": at, "task": task, "mode": mode, "diff": g.get("diff"), "ci_lo": ci[0],
            "ci_hi": ci[1], "mcnemar_p": g.get("mcnemar_p"), "n": g.get("n")}


def forgetting_frames(
    reports: Sequence[tuple[int | None, Path, dict[str, Any]]], root: Path, problems: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From forgetting reports: deltas ``step, at, task, mode, base, model, diff, ci_lo, ci_hi, mcnemar_p``
    and the ASR word error rates ``step, at, base_wer, model_wer, delta, ci_lo, ci_hi``."""
    rows, asr = _report_rows(reports, "forgetting", _forgetting_report_rows, root, problems)
    cols = ["step", "at", "task", "mode", "base", "model", "diff", "ci_lo", "ci_hi", "mcnemar_p"]
    asr_cols = ["step", "at", "base_wer", "model_wer", "delta", "ci_lo", "ci_hi"]
    return _numeric(pd.DataFrame(rows, columns=cols)), _numeric(pd.DataFrame(asr, columns=asr_cols))


def _forgetting_report_rows(step: int | None, at: str, rep: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    rows, asr = [], []
    for task, modes in (rep.get("tasks") or {}).items():
        for mode, e in (modes or {}).items():
            ci = e.get("ci") or [None, None]
            rows.append({"step": step, "at": at, "task": task, "mode": mode,
                         "base": (e.get("base") or {}).get("accuracy"),
                         "model": (e.get("model") or {}).get("accuracy"), "diff": e.get("diff"),
                         "ci_lo": ci[0], "ci_hi": ci[1], "mcnemar_p": e.get("mcnemar_p")})
    a = rep.get("asr")
    if isinstance(a, dict):
        ci = a.get("ci") or [None, None]
        asr.append({"step": step, "at": at, "base_wer": a.get("base_wer"), "model_wer": a.get("model_wer"),
                    "delta": a.get("delta"), "ci_lo": ci[0], "ci_hi": ci[1]})
    return rows, asr


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as floats (a report's NaN arrives as NaN, a missing value as None): charts need one dtype."""
    for c in df.columns:
        if c not in ("at", "task", "mode", "step"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    df["step"] = pd.array(df["step"], dtype="Int64")
    return df
