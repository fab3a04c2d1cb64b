"""Paired statistics for text-vs-speech (and run-vs-run) accuracy: bootstrap CIs, McNemar, flips, the gate.

Every function takes per-item correctness of two systems on the *same* items, as equal-length boolean arrays
(an answer the scorer could not read counts as incorrect; an item that could not be asked at all -- bad audio,
a model that cannot hear -- is no answer, and callers leave it out of both arrays and report how many). Pairing
is kept throughout: an unpaired test on paired data wastes most of its power (lm-eval #3831).

The bootstrap resamples items jointly. The mean paired difference depends on a resample only through how many
items of each kind it drew (a✓b✗, a✗b✓, or concordant), so drawing those three counts from one multinomial per
replicate gives exactly the distribution of resampling item indices, in O(B) rather than O(B·n) time/memory.
The interval is the percentile interval of the replicates themselves — not std/√B, lighteval's bug that makes
an interval ~√B times too narrow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

__all__ = [
    "GateResult",
    "avg_drop_bootstrap_ci",
    "avg_drop_percent",
    "benchmark_groups",
    "flip_counts",
    "gate_check",
    "mcnemar_exact",
    "one_sided_lower_bound",
    "paired_bootstrap_ci",
    "stratified_macro_bootstrap_ci",
]


def _as_bool(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-item correctness, got shape {arr.shape}")
    if arr.dtype != bool:
        # 0/1 ints or floats are fine; anything else (NaN for a failed item, scores) is a caller bug.
        if arr.size and not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))][:3]
            raise ValueError(f"{name}: per-item correctness must be boolean or 0/1, found values like {bad}")
        arr = arr.astype(bool)
    return arr


def _paired(a, b, names: tuple[str, str] = ("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bool(a, names[0]), _as_bool(b, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"paired arrays differ in length: {names[0]} has {a.size} items, {names[1]} has {b.size}; "
            "both must hold the same items in the same order"
        )
    if a.size == 0:
        raise ValueError("no items: paired statistics need at least one item")
    return a, b


def flip_counts(a, b) -> tuple[int, int]:
    """(a✓b✗, a✗b✓): the discordant pairs, e.g. (text right & speech wrong, text wrong & speech right)."""
    a, b = _paired(a, b)
    return int(np.count_nonzero(a & ~b)), int(np.count_nonzero(~a & b))


def _bootstrap_rng(confidence: float, n_boot: int, seed: int) -> np.random.Generator:
    """The replicates' generator, once ``confidence`` and ``n_boot`` are checked."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed)


def _bootstrap_diffs(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot replicates of mean(a) − mean(b) under joint resampling of the n items (see module docstring)."""
    n = a.size
    a_only, b_only = flip_counts(a, b)
    probs = np.array([a_only, b_only, n - a_only - b_only], dtype=float) / n
    counts = rng.multinomial(n, probs, size=n_boot)
    return (counts[:, 0] - counts[:, 1]) / n


def paired_bootstrap_ci(
    a, b, *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(a) − mean(b), lo, hi): a two-sided percentile bootstrap interval of the paired difference."""
    a, b = _paired(a, b)
    diffs = _bootstrap_diffs(a, b, n_boot, _bootstrap_rng(confidence, n_boot, seed))
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def one_sided_lower_bound(
    new, base, *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> float:
    """The one-sided lower confidence bound of mean(new) − mean(base) (percentile bootstrap)."""
    new, base = _paired(new, base, ("new", "base"))
    diffs = _bootstrap_diffs(new, base, n_boot, _bootstrap_rng(confidence, n_boot, seed))
    return float(np.quantile(diffs, 1.0 - confidence))


def mcnemar_exact(a, b) -> float:
    """Two-sided exact McNemar p-value: a binomial test of a✓b✗ against a✗b✓ with p = 0.5.

    Concordant pairs carry no information about which system is better, so only the discordant ones count;
    with none at all there is no evidence of a difference (p = 1).
    """
    n01, n10 = flip_counts(a, b)
    n = n01 + n10
    if n == 0:
        return 1.0
    # Binomial(n, 1/2) is symmetric, so the two-sided exact p is twice the smaller tail (capped at 1).
    return float(min(1.0, 2.0 * binom.cdf(min(n01, n10), n, 0.5)))


def benchmark_groups(tasks, groups: Mapping[str, str | None] | None = None) -> dict[str, list[str]]:
    """{benchmark: [its tasks]} for ``tasks``, in first-seen order; a task that ``groups`` maps to no benchmark
    (absent or None) is a benchmark of its own, named after itself."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        g = (groups or {}).get(t) or t
        out.setdefault(g, []).append(t)
    return out


def avg_drop_percent(base_text: dict[str, float], scores: dict[str, float],
                     groups: Mapping[str, str | None] | None = None) -> float:
    """The paper's Avg. Drop %: mean over benchmarks of (base_text − score) / base_text × 100.

    ``base_text`` is the text teacher's own text score per task; ``scores`` the scores to compare (speech
    scores for ΔS, the student's text scores for ΔT), in the same units. ``groups`` maps a task to the benchmark
    it is part of (Big Bench Audio is four task files); a benchmark's score is the mean of its tasks' scores,
    and a task without a group is a benchmark of its own. Averages over the benchmarks of the tasks in
    ``scores``; each must have a positive base score.
    """
    if not scores:
        raise ValueError("avg_drop_percent: no benchmark scores given")
    missing = sorted(set(scores) - set(base_text))
    if missing:
        raise ValueError(f"avg_drop_percent: no base text score for benchmark(s) {', '.join(missing)}")
    drops = []
    for name, tasks in benchmark_groups(scores, groups).items():
        base = float(np.mean([base_text[t] for t in tasks]))
        score = float(np.mean([scores[t] for t in tasks]))
        if not base > 0:
            raise ValueError(f"avg_drop_percent: base text score of {name!r} is {base}; drop undefined")
        drops.append((base - score) / base * 100.0)
    return float(np.mean(drops))


def _quantiles(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates (NaN replicates left out; NaN if all are)."""
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [tail, 1.0 - tail])
    return float(lo), float(hi)


def stratified_macro_bootstrap_ci(
    strata: Sequence[tuple[Sequence, Sequence]], *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(macro, lo, hi) of the macro paired difference: the mean over strata (tasks) of each stratum's
    mean(a) − mean(b), with a percentile bootstrap that resamples items *within* each stratum (each task keeps
    its size) and recomputes the macro. Every task weighs the same whatever its size, unlike the pooled
    difference over all items.

    ``strata`` holds one (a, b) pair of equal-length 0/1 arrays per task (the same items in both).
    """
    if not strata:
        raise ValueError("no strata: a macro difference needs at least one task")
    rng = _bootstrap_rng(confidence, n_boot, seed)
    point, reps = [], np.zeros(n_boot)
    for k, (a, b) in enumerate(strata):
        a, b = _paired(a, b, (f"strata[{k}].a", f"strata[{k}].b"))
        reps += _bootstrap_diffs(a, b, n_boot, rng)
        point.append(a.mean() - b.mean())
    lo, hi = _quantiles(reps / len(strata), confidence)
    return float(np.mean(point)), lo, hi


def avg_drop_bootstrap_ci(
    pairs: Mapping[str, tuple[Sequence, Sequence]],
    groups: Mapping[str, str | None] | None = None,
    *,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(Avg. Drop %, lo, hi): :func:`avg_drop_percent` of per-task accuracies, with a paired percentile bootstrap.

    ``pairs[task] = (base, score)``: per-item 0/1 correctness of the teacher's text answers and of the compared
    answers (the student's speech for ΔS, its text for ΔT) on the same items, in the same order. A replicate
    resamples items within each task, the two correctnesses of an item together, and recomputes the task
    accuracies, the benchmark scores (``groups``, as in :func:`avg_drop_percent`) and their mean drop. A
    replicate in which some benchmark's base score is 0 has no drop and is left out of the interval.
    """
    if not pairs:
        raise ValueError("avg_drop_bootstrap_ci: no tasks given")
    rng = _bootstrap_rng(confidence, n_boot, seed)
    base_acc: dict[str, float] = {}
    score_acc: dict[str, float] = {}
    base_reps: dict[str, np.ndarray] = {}
    score_reps: dict[str, np.ndarray] = {}
    for task, (base, score) in pairs.items():
        base, score = _paired(base, score, (f"{task}: base", f"{task}: score"))
        n = base.size
        # the four kinds of item: both right, base only, score only, neither
        cells = np.array([np.count_nonzero(base & score), np.count_nonzero(base & ~score),
                          np.count_nonzero(~base & score), np.count_nonzero(~base & ~score)], dtype=float)
        counts = rng.multinomial(n, cells / n, size=n_boot)
        base_acc[task], score_acc[task] = float(base.mean()), float(score.mean())
        base_reps[task] = (counts[:, 0] + counts[:, 1]) / n
        score_reps[task] = (counts[:, 0] + counts[:, 2]) / n
    point = avg_drop_percent(base_acc, score_acc, groups)
    drops = []
    for tasks in benchmark_groups(pairs, groups).values():
        b = np.mean([base_reps[t] for t in tasks], axis=0)
        s = np.mean([score_reps[t] for t in tasks], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            drops.append(np.where(b > 0, (b - s) / np.where(b > 0, b, 1.0) * 100.0, np.nan))
    lo, hi = _quantiles(np.mean(drops, axis=0), confidence)
    return point, lo, hi


@dataclass(frozen=True)
class GateResult:
    diff: float  # mean(new) − mean(base), accuracy units
    lower_bound: float  # one-sided lower confidence bound of diff
    max_drop: float  # the tolerated drop, accuracy units (0.03 = 3 points)
    passed: bool  # lower_bound >= −max_drop
    n: int  # paired items


def gate_check(
    new, base, *, max_drop: float, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> GateResult:
    """Fail when the one-sided lower confidence bound of (new − base) is below −max_drop.

    The bound widens as n shrinks, so a small run cannot pass on luck the way a fixed-tolerance gate lets it.
    """
    if not 0.0 <= max_drop < 1.0:
        raise ValueError(f"max_drop is in accuracy units (0.03 = 3 points) within [0, 1), got {max_drop}")
    new, base = _paired(new, base, ("new", "base"))
    lb = one_sided_lower_bound(new, base, confidence=confidence, n_boot=n_boot, seed=seed)
    return GateResult(
        diff=float(new.mean() - base.mean()),
        lower_bound=lb,
        max_drop=float(max_drop),
        passed=bool(lb >= -max_drop),
        n=int(new.size),
    )
