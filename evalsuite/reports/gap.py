"""The modality-gap report: text vs speech accuracy on the same items, with paired statistics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from evalsuite.run import SPEECH, TEXT, Sample
from evalsuite.stats import avg_drop_percent, flip_counts, mcnemar_exact, paired_bootstrap_ci


def mode_key(s: Sample) -> str:
    return TEXT if s.mode == TEXT else f"{SPEECH}:{s.variant}"


def by_task_mode(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, Sample]]]:
    out: dict[str, dict[str, dict[str, Sample]]] = defaultdict(lambda: defaultdict(dict))
    for s in samples:
        out[s.task][mode_key(s)][s.id] = s
    return out


def mode_summary(rows: dict[str, Sample]) -> dict:
    n = len(rows)
    errors = sum(1 for s in rows.values() if s.error)
    failed = sum(1 for s in rows.values() if not s.error and s.extracted is None)
    correct = sum(1 for s in rows.values() if s.correct)
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "extraction_fail_rate": failed / (n - errors) if n - errors else float("nan"),
        "errors": errors,
    }


def wilson_ci(correct: int, n: int, *, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``n`` (sound at 0, 1 and small n, unlike the
    normal approximation); [nan, nan] for no items."""
    if n == 0:
        return [float("nan"), float("nan")]
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, float(center - half)), min(1.0, float(center + half))]


def with_accuracy_ci(summary: dict, rows: dict[str, Sample], confidence: float) -> dict:
    """``summary`` plus ``accuracy_ci``: the Wilson interval of this mode's accuracy (errored items count as
    wrong, as in ``accuracy``)."""
    correct = sum(1 for s in rows.values() if s.correct)
    return summary | {"accuracy_ci": wilson_ci(correct, len(rows), confidence=confidence)}


def task_chance(modes: dict[str, dict[str, Sample]]) -> float | None:
    """Accuracy of uniform guessing on a task: the mean over its items of each item's chance level (yesno 0.5,
    choice 1/len(choices), number and text 0); None when the samples do not say (records from before
    ``chance``)."""
    per_item: dict[str, float] = {}
    for rows in modes.values():
        for i, s in rows.items():
            if getattr(s, "chance", None) is not None:
                per_item.setdefault(i, float(s.chance))
    return float(np.mean(list(per_item.values()))) if per_item else None


def paired_stats(a: np.ndarray, b: np.ndarray, *, confidence: float, n_boot: int, seed: int) -> dict:
    diff, lo, hi = paired_bootstrap_ci(a, b, confidence=confidence, n_boot=n_boot, seed=seed)
    a_only, b_only = flip_counts(a, b)
    return {"diff": diff, "ci": [lo, hi], "mcnemar_p": mcnemar_exact(a, b), "flips": [a_only, b_only], "n": len(a)}


def paired_vectors(grouped: dict[str, dict[str, dict[str, Sample]]]) -> dict:
    """Per task and mode: item ids and 0/1 correctness, so the gate can re-pair two reports item by item."""
    return {
        task: {mode: {"ids": sorted(rows), "correct": [int(rows[i].correct) for i in sorted(rows)]} for mode, rows in modes.items()}
        for task, modes in grouped.items()
    }


def gap_report(samples: Sequence[Sample], *, teacher_samples: Sequence[Sample] | None = None,
               confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict:
    grouped = by_task_mode(samples)
    tasks: dict[str, dict] = {}
    pooled: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for task, modes in grouped.items():
        summaries = {m: with_accuracy_ci(mode_summary(rows), rows, confidence) for m, rows in modes.items()}
        entry: dict = {"modes": summaries, "gap": {}, "chance": task_chance(modes)}
        text = modes.get(TEXT, {})
        for m, rows in modes.items():
            if m == TEXT:
                continue
            ids = sorted(set(text) & set(rows))
            a = np.array([text[i].correct for i in ids], bool)
            b = np.array([rows[i].correct for i in ids], bool)
            if len(ids):
                entry["gap"][m] = paired_stats(a, b, confidence=confidence, n_boot=n_boot, seed=seed)
                pooled[m][0].extend(a.tolist())
                pooled[m][1].extend(b.tolist())
        tasks[task] = entry

    overall: dict = {"gap": {}, "macro": {}}
    for m, (a, b) in pooled.items():
        overall["gap"][m] = paired_stats(np.array(a, bool), np.array(b, bool), confidence=confidence, n_boot=n_boot, seed=seed)
    for m in {m for e in tasks.values() for m in e["modes"]}:
        accs = [e["modes"][m]["accuracy"] for e in tasks.values() if m in e["modes"]]
        overall["macro"][m] = float(np.mean(accs)) if accs else float("nan")

    report: dict = {"kind": "gap", "tasks": tasks, "overall": overall, "paired": paired_vectors(grouped)}
    if teacher_samples:
        t_grouped = by_task_mode(teacher_samples)
        teacher_text = {t: mode_summary(m[TEXT])["accuracy"] for t, m in t_grouped.items() if TEXT in m}
        teacher_ci = {t: with_accuracy_ci({}, m[TEXT], confidence)["accuracy_ci"]
                      for t, m in t_grouped.items() if TEXT in m}
        report["teacher"] = {"text_accuracy": teacher_text, "text_accuracy_ci": teacher_ci,
                             "paired": paired_vectors(t_grouped)}
        drops = {}
        # a relative drop from a teacher score of 0 is undefined: such tasks are left out and listed
        undefined = sorted(t for t, acc in teacher_text.items() if not acc > 0)
        for m in overall["macro"]:
            scores = {t: e["modes"][m]["accuracy"] for t, e in tasks.items()
                      if m in e["modes"] and teacher_text.get(t, 0.0) > 0}
            base = {t: teacher_text[t] for t in scores}
            drops[m] = avg_drop_percent(base, scores) if scores else float("nan")
        report["avg_drop_excluded"] = undefined
        # The paper's ΔT (student text vs teacher text) and ΔS (student speech vs teacher text), in %.
        report["avg_drop_percent"] = drops
    return report


def _pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.1f}"


def format_gap_markdown(report: dict) -> str:
    speech_modes = sorted({m for e in report["tasks"].values() for m in e["modes"] if m != TEXT})
    teacher = report.get("teacher", {}).get("text_accuracy", {})
    head = ["task", "n"] + (["teacher text"] if teacher else []) + ["text"]
    for m in speech_modes:
        head += [m, f"gap ({m}) [95% CI]", "McNemar p", "flips T✓S✗/T✗S✓"]
    head += ["extract fail T/S"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, modes: dict, gaps: dict, n: int, t_acc: float | None) -> str:
        cells = [name, str(n)] + ([_pct(t_acc) if t_acc is not None else "—"] if teacher else [])
        cells.append(_pct(modes.get(TEXT, {}).get("accuracy", float("nan"))))
        fails = [_pct(modes.get(TEXT, {}).get("extraction_fail_rate", float("nan")))]
        for m in speech_modes:
            g = gaps.get(m)
            cells.append(_pct(modes.get(m, {}).get("accuracy", float("nan"))))
            if g:
                cells += [f"{100 * g['diff']:+.1f} [{100 * g['ci'][0]:+.1f}, {100 * g['ci'][1]:+.1f}]",
                          f"{g['mcnemar_p']:.3g}", f"{g['flips'][0]}/{g['flips'][1]}"]
            else:
                cells += ["—", "—", "—"]
            fails.append(_pct(modes.get(m, {}).get("extraction_fail_rate", float("nan"))))
        cells.append("/".join(fails))
        return "| " + " | ".join(cells) + " |"

    for task, e in report["tasks"].items():
        n = e["modes"].get(TEXT, next(iter(e["modes"].values())))["n"]
        lines.append(row(task, e["modes"], e["gap"], n, teacher.get(task)))
    ov = report["overall"]
    overall_modes = {m: {"accuracy": a} for m, a in ov["macro"].items()}
    n_all = sum(e["modes"].get(TEXT, {}).get("n", 0) for e in report["tasks"].values())
    t_macro = float(np.mean(list(teacher.values()))) if teacher else None
    lines.append(row("**overall**", overall_modes, ov["gap"], n_all, t_macro))
    lines.append("")
    lines.append("Accuracies in %; gap = text − speech on the same items (paired bootstrap CI, exact McNemar test).")
    if "avg_drop_percent" in report:
        drops = ", ".join(f"{m}: {v:.1f}%" for m, v in report["avg_drop_percent"].items())
        lines.append(f"Avg. Drop % vs the teacher's text score (ΔT for text, ΔS for speech): {drops}")
    return "\n".join(lines)
