"""PNG charts for reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def gap_chart(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xopd.paths import atomic_write_bytes

    tasks = list(report["tasks"])
    modes = sorted({m for e in report["tasks"].values() for m in e["modes"]}, key=lambda m: (m != "text", m))
    teacher = report.get("teacher", {}).get("text_accuracy", {})
    series = ([("teacher text", [teacher.get(t, np.nan) for t in tasks])] if teacher else []) + [
        (m, [report["tasks"][t]["modes"].get(m, {}).get("accuracy", np.nan) for t in tasks]) for m in modes
    ]
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks) + 2), 4))
    for k, (label, vals) in enumerate(series):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, 100 * np.array(vals, float), width, label=label)
    ax.set_xticks(x, tasks, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"text vs speech: {report.get('config', {}).get('model', '')}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
