"""The forgetting report: what a trained model lost (or gained) against its base, item by item.

Paired deltas (model − base) with bootstrap CIs on text accuracy and speech accuracy per task and mode, and the
ASR word error rate of each speech model asked to transcribe the spoken prompts (corpus WER on normalised text;
the CI resamples items jointly for both models).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evalsuite.reports.gap import by_task_mode, mode_summary, paired_stats, paired_vectors, usable
from evalsuite.run import Sample
from evalsuite.textnorm import normalize
from xopd.prompting import TRANSCRIBE_INSTRUCTION  # noqa: F401 - re-exported: the CLI imports it from here


def word_errors(references: Sequence[str], hypotheses: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item (errors, reference words) on normalised text; a missing hypothesis deletes every word."""
    import jiwer  # late: importing jiwer takes a while; only the ASR check needs it

    errs, words = [], []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r = normalize(ref)
        n = len(r.split())
        if not hyp or not normalize(hyp):
            errs.append(n)
        else:
            o = jiwer.process_words(r, normalize(hyp))
            errs.append(o.substitutions + o.deletions + o.insertions)
        words.append(n)
    return np.array(errs, float), np.array(words, float)


def paired_wer_delta(words: np.ndarray, err_base: np.ndarray, err_model: np.ndarray, *, confidence: float = 0.95,
                     n_boot: int = 10_000, seed: int = 0) -> dict:
    """Corpus WER of both models and the bootstrap CI of (model − base), items resampled jointly."""
    rng = np.random.default_rng(seed)
    n = len(words)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = words[idx].sum(1)
    w[w == 0] = np.nan
    deltas = (err_model[idx].sum(1) - err_base[idx].sum(1)) / w
    alpha = 1 - confidence
    lo, hi = np.nanquantile(deltas, [alpha / 2, 1 - alpha / 2])
    base, model = err_base.sum() / words.sum(), err_model.sum() / words.sum()
    return {"base_wer": float(base), "model_wer": float(model), "delta": float(model - base),
            "ci": [float(lo), float(hi)], "n": int(n)}


def forgetting_report(base: Sequence[Sample], model: Sequence[Sample], *, asr: dict | None = None,
                      confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> dict:
    gb, gm = by_task_mode(base), by_task_mode(model)
    tasks: dict[str, dict] = {}
    for task in gb:
        entry = {}
        for mode, b_rows in gb[task].items():
            m_rows = gm.get(task, {}).get(mode, {})
            # pairs of items both models could be asked: an errored item is in no statistic
            ids = sorted(set(usable(b_rows)) & set(usable(m_rows)))
            if not ids:
                continue
            a = np.array([m_rows[i].correct for i in ids], bool)
            b = np.array([b_rows[i].correct for i in ids], bool)
            entry[mode] = {"base": mode_summary(b_rows), "model": mode_summary(m_rows),
                           **paired_stats(a, b, confidence=confidence, n_boot=n_boot, seed=seed)}
        tasks[task] = entry
    report = {"kind": "forgetting", "tasks": tasks, "paired": {"base": paired_vectors(gb), "model": paired_vectors(gm)}}
    if asr is not None:
        report["asr"] = asr
    return report


def format_forgetting_markdown(report: dict) -> str:
    lines = ["| task | mode | n | base | model | Δ model − base [95% CI] | McNemar p |", "|---|---|---|---|---|---|---|"]
    for task, modes in report["tasks"].items():
        for mode, e in modes.items():
            def pct(x: float | None) -> str:
                return "—" if x is None else f"{100 * x:.1f}"

            lines.append(
                f"| {task} | {mode} | {e['n']} | {pct(e['base']['accuracy'])} | {pct(e['model']['accuracy'])} | "
                f"{100 * e['diff']:+.1f} [{100 * e['ci'][0]:+.1f}, {100 * e['ci'][1]:+.1f}] | {e['mcnemar_p']:.3g} |"
            )
    if "asr" in report:
        a = report["asr"]
        lines.append("")
        lines.append(f"ASR (asked to transcribe, corpus WER, n={a['n']}): base {100 * a['base_wer']:.1f}%, "
                     f"model {100 * a['model_wer']:.1f}%, Δ {100 * a['delta']:+.1f} "
                     f"[{100 * a['ci'][0]:+.1f}, {100 * a['ci'][1]:+.1f}] points")
    return "\n".join(lines)
