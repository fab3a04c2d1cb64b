"""PNG charts for reports (matplotlib, no display needed).

The gap chart: per task, one bar per mode (the teacher's text score first when there is a teacher, then the
student's text, then each speech variant), each with its confidence interval; the chance level of the task as
a dashed line over its bars; n under each task's name; an "overall" group (the macro mean over tasks) last.
The title names the student and the teacher.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from xopd.paths import atomic_write_bytes

TEACHER = "teacher text"
OVERALL = "overall"
CHANCE_GID = "chance"  # the gid of each chance line, so tests (and readers of the figure) can find them

_COLORS = {TEACHER: "#9a9a9a", "text": "#1f5fa8"}
_SPEECH_COLORS = ["#e8702a", "#c23b3b", "#8a5cb8", "#3c9a5f", "#b8860b", "#d45d9a"]


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _wilson(acc: float, n: int, confidence: float) -> tuple[float, float]:
    """For reports written before ``accuracy_ci`` existed: the Wilson interval from accuracy and n."""
    from evalsuite.reports.gap import wilson_ci  # late, as below: scipy, needed only for old reports

    if not n or acc != acc:
        return float("nan"), float("nan")
    lo, hi = wilson_ci(round(acc * n), n, confidence=confidence)
    return lo, hi


def _macro_ci(accs: list[float], ns: list[int], confidence: float) -> tuple[float, float]:
    """Interval of a macro mean of independent per-task accuracies: the Wilson interval at the mean with the
    effective sample size T² / Σ 1/n_i (the total n when tasks are equal in size). At most as narrow as the
    exact variance Σ p_i(1-p_i)/n_i / T² implies, and, unlike a normal interval, not of zero width at 0 or
    1.
    NaN when any task lacks a number."""
    from evalsuite.reports.gap import wilson_ci

    if not accs or any(a != a or not n for a, n in zip(accs, ns)):
        return float("nan"), float("nan")
    mean = sum(accs) / len(accs)
    n_eff = len(accs) ** 2 / sum(1 / n for n in ns)
    lo, hi = wilson_ci(mean * n_eff, n_eff, confidence=confidence)  # type: ignore[arg-type]
    return lo, hi


def _series(report: dict, tasks: list[str], confidence: float, with_overall: bool) -> list[dict]:
    """One dict per bar series: label, and per group (tasks, then overall) accuracy, CI low and high."""
    entries = report["tasks"]
    modes = sorted({m for e in entries.values() for m in e["modes"]}, key=lambda m: (m != "text", m))
    teacher = report.get("teacher") or {}
    t_acc = teacher.get("text_accuracy") or {}
    out = []
    if t_acc:
        t_ci = teacher.get("text_accuracy_ci") or {}
        t_n = {t: len(v.get("text", {}).get("correct", [])) for t, v in (teacher.get("paired") or {}).items()}
        acc = [_nan(t_acc.get(t)) for t in tasks]
        ci = [tuple(t_ci[t]) if t in t_ci else _wilson(a, t_n.get(t, 0), confidence)
              for t, a in zip(tasks, acc)]
        if with_overall:
            known = [t for t in tasks if t in t_acc]
            acc.append(sum(t_acc[t] for t in known) / len(known) if known else float("nan"))
            ci.append(_macro_ci([t_acc[t] for t in known], [t_n.get(t, 0) for t in known], confidence))
        out.append({"label": TEACHER, "acc": acc, "ci": ci})
    for m in modes:
        rows = [entries[t]["modes"].get(m) for t in tasks]
        acc = [_nan(r["accuracy"]) if r else float("nan") for r in rows]
        ci = [tuple(r["accuracy_ci"]) if r and "accuracy_ci" in r
              else _wilson(a, r["n"] if r else 0, confidence) for r, a in zip(rows, acc)]
        if with_overall:
            macro = (report.get("overall") or {}).get("macro") or {}
            have = [(a, r["n"]) for a, r in zip(acc, rows) if r]
            acc.append(_nan(macro.get(m)))
            ci.append(_macro_ci([a for a, _ in have], [n for _, n in have], confidence))
        out.append({"label": m, "acc": acc, "ci": ci})
    return out


def _tick_name(task: str, width: int = 18) -> str:
    """Long task names broken at underscores, so that neighbouring tick labels do not run into each other."""
    lines: list[str] = []
    for part in task.split("_"):
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "_" + part
        else:
            lines.append(part if not lines else "_" + part)
    return "\n".join(lines)


def _legend_label(series: str) -> str:
    """``teacher text`` as is; the student's modes as ``student text``, ``student speech (clean)``."""
    if series == TEACHER:
        return series
    mode, _, variant = series.partition(":")
    return f"student {mode}" + (f" ({variant})" if variant else "")


def _title(report: dict) -> str:
    cfg = report.get("config") or {}
    student = cfg.get("model") or "(not recorded)"
    teacher = cfg.get("teacher")
    names = f"student: {student}" + (f"   ·   teacher: {teacher}" if teacher else "")
    return "Text vs speech accuracy\n" + textwrap.fill(names, 110)


def gap_figure(report: dict):
    """The gap chart of a gap report as a matplotlib Figure (no pyplot state: safe in servers and threads)."""
    from matplotlib.figure import Figure  # late, as the next one: matplotlib is slow to import
    from matplotlib.lines import Line2D

    cfg = report.get("config") or {}
    confidence = float(cfg.get("confidence") or 0.95)
    entries = report["tasks"]
    tasks = list(entries)
    with_overall = bool((report.get("overall") or {}).get("macro")) and len(tasks) > 0
    series = _series(report, tasks, confidence, with_overall)

    def n_of(e: dict) -> int:
        return max((m.get("n", 0) for m in e["modes"].values()), default=0)

    labels = [f"{_tick_name(t)}\nn={n_of(entries[t])}" for t in tasks]
    chances = [entries[t].get("chance") for t in tasks]
    if with_overall:
        labels.append(f"{OVERALL} (macro)\n{len(tasks)} tasks, n={sum(n_of(e) for e in entries.values())}")
        known = [c for c in chances if c is not None]
        chances.append(sum(known) / len(known) if known and len(known) == len(tasks) else None)

    groups = len(labels)
    k = max(1, len(series))
    width = 0.8 / k
    x = np.arange(groups, dtype=float)
    fig = Figure(figsize=(max(7.5, 0.36 * k * groups + 0.45 * groups + 2.8), 5.0), layout="constrained")
    ax = fig.add_subplot()
    speech_colors = iter(_SPEECH_COLORS * 4)
    for i, s in enumerate(series):
        xs = x + (i - (k - 1) / 2) * width
        acc = 100 * np.array(s["acc"], float)
        lo = 100 * np.array([c[0] for c in s["ci"]], float)
        hi = 100 * np.array([c[1] for c in s["ci"]], float)
        color = _COLORS.get(s["label"]) or next(speech_colors)
        ax.bar(xs, np.nan_to_num(acc), width * 0.92, label=_legend_label(s["label"]), color=color, zorder=2)
        for xv, av in zip(xs, acc):  # the number, at the foot of its bar (the whiskers own the top)
            if av == av:
                inside = av >= 9
                ax.text(xv, 1.5 if inside else av + 1.0, f"{av:.0f}", ha="center", va="bottom", fontsize=7,
                        color="white" if inside else "#333333", zorder=5,
                        bbox=None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 0.6})
        err = np.vstack([np.clip(acc - lo, 0, None), np.clip(hi - acc, 0, None)])
        ax.errorbar(xs, acc, yerr=err, fmt="none", ecolor="#222222", elinewidth=1.1, capsize=3, zorder=3,
                    label="_nolegend_")
    for g, c in enumerate(chances):
        if c is None or not c > 0:  # free-form answers: chance is 0, on the axis already
            continue
        ax.hlines(100 * c, x[g] - 0.45, x[g] + 0.45, colors="#111111", linestyles=(0, (4, 2.5)),
                  linewidth=1.4, zorder=4, gid=CHANCE_GID)
    if with_overall:
        ax.axvspan(groups - 1.5, groups - 0.5, color="#f0f0f0", zorder=0)
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_xlim(-0.6, groups - 0.4)
    ax.set_ylim(0, 105)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(_title(report), fontsize=11)
    handles, names = ax.get_legend_handles_labels()
    if any(c is not None and c > 0 for c in chances):
        handles.append(Line2D([], [], color="#111111", linestyle=(0, (4, 2.5)), linewidth=1.4))
        names.append("chance")
    ax.legend(handles, names, fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    pct = round(100 * confidence)
    fig.supxlabel(f"error bars: {pct}% Wilson CI (macro mean: at its effective n)   ·   "
                  "dashes: chance (accuracy of a uniform guess)", fontsize=7.5, color="#555555")
    return fig


def gap_chart(report: dict, path: Path) -> Path:
    """Write the gap chart of ``report`` as a PNG at ``path`` (atomically); returns the path."""
    fig = gap_figure(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
