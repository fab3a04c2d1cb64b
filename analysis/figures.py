"""PNG figures of the divergence aggregates (matplotlib, Agg; no display, no pyplot global state).

Each ``plot_*`` function takes an aggregate from :mod:`analysis.aggregate` and returns a
:class:`matplotlib.figure.Figure` (the explorer can show it as is); :func:`save` writes a figure as PNG
atomically; :func:`write_figures` makes all four from a token table.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import DEFAULT_THRESHOLD, aggregate
from xopd.paths import atomic_write_bytes

MODALITY_ORDER = ("text", "speech")
COLORS = {"text": "#1f77b4", "speech": "#d62728"}


def _modalities(values: pd.Series) -> list[str]:
    present = set(values)
    return [m for m in MODALITY_ORDER if m in present] + sorted(present - set(MODALITY_ORDER))


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Figure, ax: object, xlabel: str, ylabel: str, title: str, *, legend: bool = True) -> Figure:
    """``fig`` with its axis labels, title and (by default) legend, laid out."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend()
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (never a half-written image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def plot_kl_by_position(by_position: pd.DataFrame) -> Figure:
    """Grouped bars: mean sampled-token reverse KL per position bucket, one colour per modality."""
    fig, ax = _figure()
    buckets = by_position.drop_duplicates("start").sort_values("start")
    x = np.arange(len(buckets))
    where = {s: i for i, s in enumerate(buckets["start"])}
    mods = _modalities(by_position["modality"])
    width = 0.8 / max(1, len(mods))
    for k, m in enumerate(mods):
        d = by_position[by_position["modality"] == m]
        xs = np.array([where[s] for s in d["start"]]) + (k - (len(mods) - 1) / 2) * width
        ax.bar(xs, d["kl"], width, label=m, color=COLORS.get(m))
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x, list(buckets["bucket"]))
    ylabel = "mean reverse KL (student lp - teacher lp)"
    return _finish(fig, ax, "completion position", ylabel, "where the student leaves the teacher")


def plot_kl_over_steps(by_step: pd.DataFrame) -> Figure:
    """Mean sampled-token reverse KL per training step, one line per modality."""
    fig, ax = _figure()
    for m in _modalities(by_step["modality"]):
        d = by_step[by_step["modality"] == m].sort_values("step")
        ax.plot(d["step"], d["kl"], marker="o", label=m, color=COLORS.get(m))
    ax.axhline(0, color="black", linewidth=0.6)
    return _finish(fig, ax, "training step", "mean reverse KL", "divergence over training")


def plot_first_divergence(fd: pd.DataFrame, threshold: float) -> Figure:
    """Histogram of first-divergence positions per modality (rollouts that never diverge are counted in the
    legend, not the bars)."""
    fig, ax = _figure()
    pos = fd["first_divergence"].dropna().astype(int)
    top = int(pos.max()) if len(pos) else 1
    bins = np.arange(0, top + 2) - 0.5 if top < 40 else 40
    for m in _modalities(fd["modality"]):
        d = fd[fd["modality"] == m]["first_divergence"]
        hit = d.dropna().astype(int)
        label = f"{m} ({len(hit)}/{len(d)} diverge)"
        ax.hist(hit, bins=bins, alpha=0.6, label=label, color=COLORS.get(m))
    return _finish(fig, ax, f"first position with advantage < {threshold}", "rollouts", "first divergence")


def plot_text_vs_speech(pairs: pd.DataFrame) -> Figure:
    """Per prompt (and step): KL of its text rollouts vs KL of its speech rollouts, with the diagonal."""
    fig, ax = _figure(5.0, 5.0)
    ax.scatter(pairs["kl_text"], pairs["kl_speech"], s=18, alpha=0.7, color=COLORS["speech"])
    vals = np.concatenate([pairs["kl_text"].to_numpy(float), pairs["kl_speech"].to_numpy(float)])
    lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="gray", linewidth=0.8, linestyle="--")
    title = f"text vs speech, same prompt ({len(pairs)})"
    return _finish(fig, ax, "KL on the text prompt", "KL on the spoken prompt", title, legend=False)


def write_figures(
    table: pd.DataFrame, out_dir: str | Path, *, threshold: float = DEFAULT_THRESHOLD
) -> list[Path]:
    """The four PNGs for ``table`` under ``out_dir``; a figure without data (no tokens; fewer than two steps
    for the steps plot; no prompt in both modalities for the scatter) is not written."""
    out = Path(out_dir)
    written: list[Path] = []
    if table.empty:
        return written
    written.append(save(plot_kl_by_position(aggregate.kl_by_position(table)), out / "kl_by_position.png"))
    by_step = aggregate.kl_by_step(table)
    if by_step["step"].nunique() > 1:
        written.append(save(plot_kl_over_steps(by_step), out / "kl_over_steps.png"))
    fd = aggregate.first_divergence(table, threshold)
    written.append(save(plot_first_divergence(fd, threshold), out / "first_divergence.png"))
    pairs, _ = aggregate.text_vs_speech(table)
    if len(pairs):
        written.append(save(plot_text_vs_speech(pairs), out / "text_vs_speech.png"))
    return written
