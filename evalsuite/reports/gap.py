"""The modality-gap report: text vs speech accuracy on the same items, with paired statistics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

from evalsuite.run import SPEECH, TEXT, Sample
from evalsuite.stats import (
    avg_drop_bootstrap_ci,
    benchmark_groups,
    flip_counts,
    mcnemar_exact,
    paired_bootstrap_ci,
    stratified_macro_bootstrap_ci,
)


def mode_key(s: Sample) -> str:
    return TEXT if s.mode == TEXT else f"{SPEECH}:{s.variant}"


def by_task_mode(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, Sample]]]:
    out: dict[str, dict[str, dict[str, Sample]]] = defaultdict(lambda: defaultdict(dict))
    for s in samples:
        out[s.task][mode_key(s)][s.id] = s
    return out


ERROR_RATE_THRESHOLD = 0.05  # a mode with more of its items errored than this is flagged in the report
OVERALL_LABEL = "overall (macro over tasks)"


def usable(rows: dict[str, Sample]) -> dict[str, Sample]:
    """The items that could be asked: an errored item (unreadable audio, a model that cannot take the input)
    has no answer, so it is no evidence about the model and is left out of every statistic -- counted in
    ``errors`` and flagged instead."""
    return {i: s for i, s in rows.items() if not s.error}


def mode_summary(rows: dict[str, Sample]) -> dict:
    n = len(rows)
    ok = usable(rows)
    n_usable = len(ok)
    failed = sum(1 for s in ok.values() if s.extracted is None)
    restated = sum(1 for s in ok.values() if s.method == "restates-question")
    correct = sum(1 for s in ok.values() if s.correct)
    return {
        "n": n,
        "n_usable": n_usable,
        "errors": n - n_usable,
        "error_rate": (n - n_usable) / n if n else float("nan"),
        "accuracy": correct / n_usable if n_usable else float("nan"),
        "extraction_fail_rate": failed / n_usable if n_usable else float("nan"),
        # a speech model that says the question back instead of answering it (evalsuite.extract.restates_question)
        "restated_rate": restated / n_usable if n_usable else float("nan"),
    }


def wilson_ci(correct: int, n: int, *, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``n`` (sound at 0, 1 and small n, unlike the
    normal approximation); [nan, nan] for no items."""
    if n == 0:
        return [float("nan"), float("nan")]
    z = float(norm.ppf(0.5 + confidence / 2))
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, float(center - half)), min(1.0, float(center + half))]


def with_accuracy_ci(summary: dict, rows: dict[str, Sample], confidence: float) -> dict:
    """``summary`` plus ``accuracy_ci``: the Wilson interval of this mode's accuracy over its usable items."""
    ok = usable(rows)
    correct = sum(1 for s in ok.values() if s.correct)
    return summary | {"accuracy_ci": wilson_ci(correct, len(ok), confidence=confidence)}


def error_flag(task: str, mode: str, summary: dict, rows: dict[str, Sample], threshold: float) -> dict | None:
    """A flag when more than ``threshold`` of a mode's items errored, naming the first error; else None."""
    if not summary["n"] or not summary["errors"] / summary["n"] > threshold:
        return None
    first = next(s.error for _, s in sorted(rows.items()) if s.error)
    rate = summary["errors"] / summary["n"]
    return {
        "task": task, "mode": mode, "errors": summary["errors"], "n": summary["n"], "error_rate": rate,
        "first_error": first,
        "message": f"{task} / {mode}: {summary['errors']} of {summary['n']} items could not be asked "
                   f"({100 * rate:.0f}% > {100 * threshold:g}%), left out of every statistic; first error: {first}",
    }


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
    """Per task and mode: the usable items' ids and 0/1 correctness, so the gate can re-pair two reports item by
    item, and the ids of the errored items (which are in no statistic)."""
    out: dict = {}
    for task, modes in grouped.items():
        out[task] = {}
        for mode, rows in modes.items():
            ok = usable(rows)
            out[task][mode] = {"ids": sorted(ok), "correct": [int(ok[i].correct) for i in sorted(ok)],
                               "errored": sorted(set(rows) - set(ok))}
    return out


def benchmark_of(*sample_lists: Sequence[Sample] | None) -> dict[str, str]:
    """task -> its ``benchmark:`` group, for the tasks whose samples name one."""
    out: dict[str, str] = {}
    for samples in sample_lists:
        for s in samples or ():
            b = getattr(s, "benchmark", None)
            if b:
                out.setdefault(s.task, b)
    return out


def _paired_arrays(x: dict[str, Sample], y: dict[str, Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of the items usable in both ``x`` and ``y``, in id order."""
    x, y = usable(x), usable(y)
    ids = sorted(set(x) & set(y))
    return np.array([x[i].correct for i in ids], bool), np.array([y[i].correct for i in ids], bool)


def _mean_defined(values) -> float:
    vals = [float(v) for v in values if v is not None and v == v]
    return float(np.mean(vals)) if vals else float("nan")


def gap_report(samples: Sequence[Sample], *, teacher_samples: Sequence[Sample] | None = None,
               confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0,
               error_rate_threshold: float = ERROR_RATE_THRESHOLD) -> dict:
    """The gap report of a student's samples (and, with ``teacher_samples``, the paper's ΔT and ΔS).

    Errored items are left out of every statistic: accuracies are over each mode's usable items
    (``n_usable``), and a gap pairs the items usable in both modes. A mode whose error rate is above
    ``error_rate_threshold`` is listed in ``flags``. The overall row is a macro over tasks throughout: mean
    accuracies, the mean of the per-task gaps with a bootstrap stratified by task (McNemar p and flips pooled).
    """
    grouped = by_task_mode(samples)
    tasks: dict[str, dict] = {}
    flags: list[dict] = []
    strata: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
    for task, modes in grouped.items():
        summaries = {m: with_accuracy_ci(mode_summary(rows), rows, confidence) for m, rows in modes.items()}
        for m, rows in modes.items():
            flag = error_flag(task, m, summaries[m], rows, error_rate_threshold)
            if flag:
                flags.append(flag)
        entry: dict = {"modes": summaries, "gap": {}, "chance": task_chance(modes)}
        text = modes.get(TEXT, {})
        for m, rows in modes.items():
            if m == TEXT:
                continue
            a, b = _paired_arrays(text, rows)
            if len(a):
                entry["gap"][m] = paired_stats(a, b, confidence=confidence, n_boot=n_boot, seed=seed) | {
                    "text_accuracy": float(a.mean()), "speech_accuracy": float(b.mean())}
                strata[m].append((task, a, b))
        tasks[task] = entry

    overall: dict = {"definition": OVERALL_LABEL, "gap": {}, "macro": {}, "pooled": {}}
    for m, rows in strata.items():
        diff, lo, hi = stratified_macro_bootstrap_ci([(a, b) for _, a, b in rows], confidence=confidence,
                                                     n_boot=n_boot, seed=seed)
        a_all = np.concatenate([a for _, a, _ in rows])
        b_all = np.concatenate([b for _, _, b in rows])
        pooled = paired_stats(a_all, b_all, confidence=confidence, n_boot=n_boot, seed=seed)
        overall["pooled"][m] = pooled
        overall["gap"][m] = {
            "diff": diff, "ci": [lo, hi], "mcnemar_p": pooled["mcnemar_p"], "flips": pooled["flips"],
            "n": pooled["n"], "tasks": [t for t, _, _ in rows],
            "text_accuracy": float(np.mean([a.mean() for _, a, _ in rows])),
            "speech_accuracy": float(np.mean([b.mean() for _, _, b in rows])),
        }
    for m in sorted({m for e in tasks.values() for m in e["modes"]}, key=lambda m: (m != TEXT, m)):
        overall["macro"][m] = _mean_defined(e["modes"][m]["accuracy"] for e in tasks.values() if m in e["modes"])

    report: dict = {"kind": "gap", "tasks": tasks, "overall": overall, "paired": paired_vectors(grouped),
                    "error_rate_threshold": error_rate_threshold, "flags": flags}
    if teacher_samples:
        t_grouped = by_task_mode(teacher_samples)
        t_summaries = {t: mode_summary(m[TEXT]) for t, m in t_grouped.items() if TEXT in m}
        for t, summary in t_summaries.items():
            flag = error_flag(t, "teacher text", summary, t_grouped[t][TEXT], error_rate_threshold)
            if flag:
                flags.append(flag)
        teacher_text = {t: summary["accuracy"] for t, summary in t_summaries.items()}
        teacher_ci = {t: with_accuracy_ci({}, m[TEXT], confidence)["accuracy_ci"]
                      for t, m in t_grouped.items() if TEXT in m}
        report["teacher"] = {"text_accuracy": teacher_text, "text_accuracy_ci": teacher_ci,
                             "paired": paired_vectors(t_grouped)}
        group_of = benchmark_of(samples, teacher_samples)
        drops, cis, excluded = {}, {}, set()
        for m in overall["macro"]:
            # the teacher's text and the student's mode m on the same items, usable in both
            pairs = {}
            for t, modes in grouped.items():
                if m in modes and TEXT in t_grouped.get(t, {}):
                    base, score = _paired_arrays(t_grouped[t][TEXT], modes[m])
                    if len(base):
                        pairs[t] = (base, score)
            # a relative drop from a teacher score of 0 is undefined: such benchmarks are left out and listed
            undefined = {t for ts in benchmark_groups(pairs, group_of).values()
                         if not np.mean([pairs[t][0].mean() for t in ts]) > 0 for t in ts}
            excluded |= undefined
            keep = {t: v for t, v in pairs.items() if t not in undefined}
            if keep:
                point, lo, hi = avg_drop_bootstrap_ci(keep, group_of, confidence=confidence, n_boot=n_boot, seed=seed)
            else:
                point, lo, hi = float("nan"), float("nan"), float("nan")
            drops[m], cis[m] = point, [lo, hi]
        report["avg_drop_excluded"] = sorted(excluded)
        # The paper's ΔT (student text vs teacher text) and ΔS (student speech vs teacher text), in %.
        report["avg_drop_percent"] = drops
        report["avg_drop"] = {
            "definition": "mean over benchmarks of (teacher text − score) / teacher text × 100; a benchmark's "
                          "score is the mean of its tasks' accuracies on the items usable in both runs; CI: "
                          "paired bootstrap over items within each task",
            "percent": drops,
            "ci": cis,
            "groups": benchmark_groups(list(tasks), group_of),
            "excluded": sorted(excluded),
        }
    return report


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _pct(x: float | None) -> str:
    x = _num(x)
    return "—" if x != x else f"{100 * x:.1f}"


def _signed(x: float | None) -> str:
    x = _num(x)
    return "—" if x != x else f"{100 * x:+.1f}"


def format_gap_markdown(report: dict) -> str:
    speech_modes = sorted({m for e in report["tasks"].values() for m in e["modes"] if m != TEXT})
    teacher = report.get("teacher", {}).get("text_accuracy", {})
    head = ["task", "n"] + (["teacher text"] if teacher else []) + ["text"]
    for m in speech_modes:
        head += [m, f"gap ({m}) [95% CI]", "McNemar p", "flips T✓S✗/T✗S✓"]
    head += ["extract fail T/S", "errors T/S"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, modes: dict, gaps: dict, n: int, t_acc: float | None) -> str:
        cells = [name, str(n)] + ([_pct(t_acc)] if teacher else [])
        cells.append(_pct(modes.get(TEXT, {}).get("accuracy")))
        fails = [_pct(modes.get(TEXT, {}).get("extraction_fail_rate"))]
        errors = [str(modes.get(TEXT, {}).get("errors", "—"))]
        for m in speech_modes:
            g = gaps.get(m)
            cells.append(_pct(modes.get(m, {}).get("accuracy")))
            if g:
                cells += [f"{_signed(g['diff'])} [{_signed(g['ci'][0])}, {_signed(g['ci'][1])}]",
                          f"{_num(g['mcnemar_p']):.3g}", f"{g['flips'][0]}/{g['flips'][1]}"]
            else:
                cells += ["—", "—", "—"]
            fails.append(_pct(modes.get(m, {}).get("extraction_fail_rate")))
            errors.append(str(modes.get(m, {}).get("errors", "—")))
        cells += ["/".join(fails), "/".join(errors)]
        return "| " + " | ".join(cells) + " |"

    for task, e in report["tasks"].items():
        n = e["modes"].get(TEXT, next(iter(e["modes"].values())))["n"]
        lines.append(row(task, e["modes"], e["gap"], n, teacher.get(task)))
    ov = report["overall"]
    overall_modes = {m: {"accuracy": a} for m, a in ov["macro"].items()}
    for m in overall_modes:
        overall_modes[m]["errors"] = sum(e["modes"].get(m, {}).get("errors", 0) for e in report["tasks"].values())
    n_all = sum(e["modes"].get(TEXT, {}).get("n", 0) for e in report["tasks"].values())
    t_macro = _mean_defined(teacher.values()) if teacher else None
    lines.append(row(f"**{ov.get('definition', 'overall')}**", overall_modes, ov["gap"], n_all, t_macro))
    lines.append("")
    lines.append("Accuracies in %, over the items that could be asked (errored items are left out of every "
                 "number; n counts all); gap = text − speech on the items usable in both modes (paired bootstrap "
                 "CI, exact McNemar test).")
    if ov.get("definition"):
        lines.append(f"Overall row: means over the {len(report['tasks'])} tasks of the per-task accuracies and "
                     "gaps (the gap's CI resamples items within each task); McNemar p and flips pooled over items.")
    if "avg_drop_percent" in report:
        ad = report.get("avg_drop") or {}
        ci = ad.get("ci") or {}

        def drop(m: str, v) -> str:
            v = _num(v)
            if v != v:
                return f"{m}: —"
            lo, hi = (_num(x) for x in ci.get(m, [None, None]))
            return f"{m}: {v:.1f}%" + (f" [{lo:.1f}, {hi:.1f}]" if lo == lo and hi == hi else "")

        drops = ", ".join(drop(m, v) for m, v in report["avg_drop_percent"].items())
        lines.append(f"Avg. Drop % vs the teacher's text score (ΔT for text, ΔS for speech; 95% paired bootstrap "
                     f"CI): {drops}")
        groups = ad.get("groups")
        if groups:
            named = "; ".join(g if ts == [g] else f"{g} = {' + '.join(ts)}" for g, ts in groups.items())
            lines.append(f"Averaged over {len(groups)} benchmarks (a benchmark's score is the mean of its tasks'): "
                         f"{named}")
        if report.get("avg_drop_excluded"):
            lines.append(f"Left out of Avg. Drop % (teacher text score 0): {', '.join(report['avg_drop_excluded'])}")
    restated = {m: _mean_defined(e["modes"].get(m, {}).get("restated_rate") for e in report["tasks"].values())
                for m in [TEXT, *speech_modes]}
    if any(v > 0 for v in restated.values()):  # nan > 0 is False
        lines.append("Responses that only restate the question (extraction failures, scored wrong; mean over "
                     "tasks): " + ", ".join(f"{m} {_pct(v)}%" for m, v in restated.items()))
    flags = report.get("flags") or []
    if flags:
        thr = _num(report.get("error_rate_threshold"))
        lines.append("")
        lines.append(f"**Flags** (error rate above {100 * thr:g}%):")
        lines += [f"- ⚠ {f['message']}" for f in flags]
    return "\n".join(lines)
