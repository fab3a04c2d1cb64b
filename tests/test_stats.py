"""Paired statistics: McNemar against scipy, bootstrap coverage on simulated data, the gate's A/A false-alarm
rate and power, and the paper's Avg. Drop % against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from evalsuite.stats import (
    GateResult,
    avg_drop_percent,
    flip_counts,
    gate_check,
    mcnemar_exact,
    one_sided_lower_bound,
    paired_bootstrap_ci,
)


def _table(n11: int, n10: int, n01: int, n00: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness arrays with the given 2×2 counts (a✓b✓, a✓b✗, a✗b✓, a✗b✗), in shuffled order."""
    a = np.array([1] * n11 + [1] * n10 + [0] * n01 + [0] * n00, dtype=bool)
    b = np.array([1] * n11 + [0] * n10 + [1] * n01 + [0] * n00, dtype=bool)
    order = np.random.default_rng(seed).permutation(a.size)
    return a[order], b[order]


def simulate_paired(
    rng: np.random.Generator, sims: int, n: int, *, base_acc: float, diff: float, discordance: float
) -> tuple[np.ndarray, np.ndarray]:
    """`sims` datasets of n paired items with true mean(new) − mean(base) = diff.

    The pair is correlated the way two evaluations of similar systems are: most items are right (or wrong) for
    both, and a fraction `discordance` flips, split so that the flips favour `new` by exactly `diff`.
    """
    p_new_only, p_base_only = (discordance + diff) / 2, (discordance - diff) / 2
    p_both = base_acc - p_base_only
    assert min(p_new_only, p_base_only, p_both, 1 - p_new_only - p_base_only - p_both) >= 0
    cell = np.searchsorted(np.cumsum([p_new_only, p_base_only, p_both]), rng.random((sims, n)), side="right")
    new = (cell == 0) | (cell == 2)
    base = (cell == 1) | (cell == 2)
    return new, base


# --- flips and McNemar --------------------------------------------------------------------------------------


def test_flip_counts_by_hand() -> None:
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert flip_counts(a, b) == (2, 1)
    assert flip_counts(b, a) == (1, 2)
    assert flip_counts([1, 0, 1], [1, 0, 1]) == (0, 0)  # 0/1 ints are accepted


@pytest.mark.parametrize(
    ("n10", "n01", "expected"),
    [
        (3, 0, 0.25),  # 2 · (1/2)^3
        (5, 1, 14 / 64),  # 2 · (C(6,0) + C(6,1)) / 2^6
        (4, 4, 1.0),  # a perfectly balanced split is no evidence at all
        (0, 0, 1.0),  # no discordant pairs: defined as 1
        (1, 0, 1.0),  # 2 · 1/2 = 1
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_hand_computed(n10: int, n01: int, expected: float) -> None:
    a, b = _table(7, n10, n01, 5)
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(expected, rel=1e-12)  # two-sided: symmetric


def test_mcnemar_matches_scipy_binomtest_on_random_tables() -> None:
    rng = np.random.default_rng(1234)
    checked = 0
    for _ in range(300):
        n11, n10, n01, n00 = (int(x) for x in rng.integers(0, 60, size=4))
        if rng.random() < 0.2:  # lopsided tables reach the far tails
            n01 = int(rng.integers(0, 4))
        a, b = _table(n11, n10, n01, n00, seed=checked)
        ours = mcnemar_exact(a, b)
        if n10 + n01 == 0:
            assert ours == 1.0
            continue
        ref = binomtest(n10, n10 + n01, 0.5, alternative="two-sided").pvalue
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-300), (n10, n01)
        checked += 1
    assert checked > 250


# --- bootstrap ----------------------------------------------------------------------------------------------


def test_bootstrap_point_estimate_determinism_and_degenerate_case() -> None:
    a, b = _table(50, 30, 10, 10)
    diff, lo, hi = paired_bootstrap_ci(a, b, n_boot=2000, seed=3)
    assert diff == pytest.approx(0.2)
    assert lo < diff < hi
    assert paired_bootstrap_ci(a, b, n_boot=2000, seed=3) == (diff, lo, hi)
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0, 0.0)  # no discordant pairs: nothing varies


def test_bootstrap_width_is_the_spread_of_replicates_not_std_over_sqrt_b() -> None:
    """Analytic SE of a paired difference: sqrt((q − d²)/n), q = discordance. lighteval's std/√B would be
    ~100× narrower at B = 10 000."""
    n, q, d = 1000, 0.2, 0.04
    a, b = _table(500, int(n * (q + d) / 2), int(n * (q - d) / 2), n - 500 - int(n * q))
    _, lo, hi = paired_bootstrap_ci(a, b)
    se = np.sqrt((q - d**2) / n)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_multinomial_bootstrap_equals_explicit_index_resampling() -> None:
    """The implementation draws cell counts; resampling item indices must give the same interval."""
    a, b = _table(60, 25, 15, 50, seed=5)
    n, n_boot = a.size, 20_000
    idx = np.random.default_rng(99).integers(0, n, size=(n_boot, n))
    explicit = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    ref_lo, ref_hi = np.quantile(explicit, [0.025, 0.975])
    _, lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=7)
    assert lo == pytest.approx(ref_lo, abs=1.01 / n) and hi == pytest.approx(ref_hi, abs=1.01 / n)
    ref_lb = np.quantile(explicit, 0.05)
    assert one_sided_lower_bound(a, b, n_boot=n_boot, seed=7) == pytest.approx(ref_lb, abs=1.01 / n)


def test_bootstrap_ci_covers_true_difference_at_nominal_rate() -> None:
    """1000 simulated paired datasets (n = 200, 60% base accuracy, 20% discordance, true difference +5
    points): the 95% interval must contain the truth 95% ± 3 points of the time (Monte-Carlo SE ≈ 0.7)."""
    sims, n, diff = 1000, 200, 0.05
    rng = np.random.default_rng(2024)
    new, base = simulate_paired(rng, sims, n, base_acc=0.6, diff=diff, discordance=0.2)
    covered = 0
    for i in range(sims):
        _, lo, hi = paired_bootstrap_ci(new[i], base[i], n_boot=2000, seed=i)
        covered += lo <= diff <= hi
    rate = covered / sims
    print(f"two-sided 95% bootstrap coverage: {rate:.3f}")
    assert 0.92 <= rate <= 0.98


def test_one_sided_bound_is_below_the_truth_at_nominal_rate() -> None:
    sims, n, diff = 1000, 300, -0.03
    new, base = simulate_paired(np.random.default_rng(7), sims, n, base_acc=0.7, diff=diff, discordance=0.15)
    below = sum(one_sided_lower_bound(new[i], base[i], n_boot=2000, seed=i) <= diff for i in range(sims))
    rate = below / sims
    print(f"one-sided 95% lower bound coverage: {rate:.3f}")
    assert 0.92 <= rate <= 0.98


# --- the gate -----------------------------------------------------------------------------------------------


def test_gate_false_alarms_and_power() -> None:
    """A/A: no true change must fail ≤ 5% of the time; a true 3-point drop at n = 1000 must fail ≥ 80%.

    The gate fails when LB = diff − z₀.₉₅·SE < −max_drop, with SE = sqrt((q − d²)/n) for discordance q (the
    fraction of items right in one run and wrong in the other). Hence
      A/A false alarms ≤ 5%  ⇔  max_drop ≥ 2·1.645·SE,
      power ≥ 80% at d = −0.03  ⇔  max_drop ≤ 0.03 + (1.645 − 0.842)·SE.
    At n = 1000 both hold only while SE ≲ 0.012, i.e. q ≲ 15%: with more churn than that, 1000 items cannot
    separate "no change" from "3 points worse". We use q = 6% (a fine-tuned checkpoint against its parent on a
    reasoning set; SE ≈ 0.77 points) and max_drop = 0.03, the window being [0.026, 0.036]: theory says ≈ 1.3%
    false alarms and ≈ 95% power.
    """
    sims, n, q, max_drop = 600, 1000, 0.06, 0.03
    rng = np.random.default_rng(11)

    def fail_rate(diff: float) -> float:
        new, base = simulate_paired(rng, sims, n, base_acc=0.6, diff=diff, discordance=q)
        return float(np.mean([not gate_check(new[i], base[i], max_drop=max_drop, n_boot=2000, seed=i).passed
                              for i in range(sims)]))

    false_alarms, power = fail_rate(0.0), fail_rate(-0.03)
    print(f"A/A false alarms {false_alarms:.3f}, power against a 3-point drop {power:.3f}")
    assert false_alarms <= 0.05
    assert power >= 0.80


def test_gate_result_fields_and_clear_cases() -> None:
    a, b = _table(800, 0, 0, 200)
    result = gate_check(a, b, max_drop=0.0)
    assert result == GateResult(diff=0.0, lower_bound=0.0, max_drop=0.0, passed=True, n=1000)
    worse, base = _table(700, 0, 100, 200)  # new lost 10 points, gained nothing
    result = gate_check(worse, base, max_drop=0.03)
    assert result.diff == pytest.approx(-0.1) and result.lower_bound < -0.1 and not result.passed
    assert gate_check(worse, base, max_drop=0.2).passed


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="differ in length: new has 3 items, base has 2"):
        gate_check([1, 0, 1], [1, 0], max_drop=0.03)
    with pytest.raises(ValueError, match="no items"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="boolean or 0/1"):
        flip_counts([1, 0.5], [1, 0])
    with pytest.raises(ValueError, match="accuracy units"):
        gate_check([1, 0], [1, 0], max_drop=3)
    with pytest.raises(ValueError, match="confidence"):
        one_sided_lower_bound([1, 0], [1, 0], confidence=95)


# --- Avg. Drop % --------------------------------------------------------------------------------------------


def test_avg_drop_percent_by_hand() -> None:
    teacher_text = {"gsm": 0.80, "navigate": 0.50, "counting": 0.40}
    speech = {"gsm": 0.60, "navigate": 0.50, "counting": 0.50}
    # (0.2/0.8 + 0/0.5 + (−0.1)/0.4) / 3 × 100 = (25 + 0 − 25) / 3 = 0
    assert avg_drop_percent(teacher_text, speech) == pytest.approx(0.0, abs=1e-12)
    # (0.4/0.8 + 0.1/0.5) / 2 × 100 = (50 + 20) / 2 = 35; benchmarks outside `scores` are not averaged
    assert avg_drop_percent(teacher_text, {"gsm": 0.40, "navigate": 0.40}) == pytest.approx(35.0)
    # units cancel: percentages give the same answer
    assert avg_drop_percent({"x": 80.0}, {"x": 60.0}) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="no base text score for benchmark.*arith"):
        avg_drop_percent(teacher_text, {"arith": 0.3})
    with pytest.raises(ValueError, match="'z'.*undefined"):
        avg_drop_percent({"z": 0.0}, {"z": 0.1})


# --- macro over tasks and the paper's Avg. Drop % over benchmarks, with their bootstrap intervals ----------------


def test_stratified_macro_bootstrap_by_hand() -> None:
    from evalsuite.stats import stratified_macro_bootstrap_ci

    # task x: 2 items, both a✓b✗ (gap 1); task y: 8 concordant items (gap 0). Resampling within each task
    # cannot change either gap, so the macro is 0.5 with a zero-width interval -- the pooled gap is 2/10.
    x = ([1, 1], [0, 0])
    y = ([1] * 4 + [0] * 4, [1] * 4 + [0] * 4)
    assert stratified_macro_bootstrap_ci([x, y], n_boot=2000) == (0.5, 0.5, 0.5)
    pooled = paired_bootstrap_ci(x[0] + y[0], x[1] + y[1], n_boot=2000)
    assert pooled[0] == pytest.approx(0.2)
    # task x': items a✓b✗ and a✓b✓: its resampled gap is 1, 1/2 or 0 with probabilities 1/4, 1/2, 1/4, so the
    # macro with y is 1/2, 1/4 or 0: the 95% interval is [0, 1/2] and the 40% one (30th-70th percentile) 1/4.
    x2 = ([1, 1], [0, 1])
    assert stratified_macro_bootstrap_ci([x2, y], n_boot=4000) == (0.25, 0.0, 0.5)
    assert stratified_macro_bootstrap_ci([x2, y], confidence=0.4, n_boot=4000) == (0.25, 0.25, 0.25)
    # one task: exactly the paired bootstrap (same seed, same draws)
    a, b = _table(30, 12, 5, 13)
    assert stratified_macro_bootstrap_ci([(a, b)], n_boot=3000, seed=4) == pytest.approx(
        paired_bootstrap_ci(a, b, n_boot=3000, seed=4))
    with pytest.raises(ValueError, match="no strata"):
        stratified_macro_bootstrap_ci([])
    with pytest.raises(ValueError, match="differ in length"):
        stratified_macro_bootstrap_ci([([1, 0], [1])])


def test_avg_drop_percent_averages_over_benchmarks() -> None:
    base = {"a1": 0.8, "a2": 0.6, "b": 0.5}
    scores = {"a1": 0.4, "a2": 0.6, "b": 0.5}
    # per task file: (50 + 0 + 0) / 3; per benchmark: A = a1 + a2 scores 0.5 against 0.7 -> 200/7 %, b 0 %
    assert avg_drop_percent(base, scores) == pytest.approx(50 / 3)
    assert avg_drop_percent(base, scores, {"a1": "A", "a2": "A"}) == pytest.approx((0.2 / 0.7 * 100 + 0) / 2)
    assert avg_drop_percent(base, scores, {"a1": "A", "a2": "A", "b": None}) == pytest.approx(100 / 7)
    with pytest.raises(ValueError, match="'A'"):
        avg_drop_percent({"a1": 0.0, "a2": 0.0}, {"a1": 0.1, "a2": 0.1}, {"a1": "A", "a2": "A"})


def test_avg_drop_bootstrap_ci_by_hand() -> None:
    from evalsuite.stats import avg_drop_bootstrap_ci

    # teacher right on both items, student on one: drop 50 %; resampled, the student's accuracy is 1, 1/2 or 0
    # (p = 1/4, 1/2, 1/4), so the drop is 0, 50 or 100 %: 95% interval [0, 100], 40% interval [50, 50]
    one = {"t": ([1, 1], [1, 0])}
    assert avg_drop_bootstrap_ci(one, n_boot=4000) == (50.0, 0.0, 100.0)
    assert avg_drop_bootstrap_ci(one, confidence=0.4, n_boot=4000) == (50.0, 50.0, 50.0)
    # benchmarks: A = a1 (drop 100 %) + a2 (drop 0) scores 1/2 against 1 -> 50 %; b 0 %: Avg. Drop 25 %
    # (33.3 % averaged over the three task files). Every cell is homogeneous: a zero-width interval.
    pairs = {"a1": ([1] * 3, [0] * 3), "a2": ([1] * 3, [1] * 3), "b": ([1] * 4, [1] * 4)}
    assert avg_drop_bootstrap_ci(pairs, {"a1": "A", "a2": "A"}, n_boot=500) == (25.0, 25.0, 25.0)
    assert avg_drop_bootstrap_ci(pairs, n_boot=500)[0] == pytest.approx(100 / 3)
    # the teacher's and student's correctness of an item are resampled together: teacher [1, 0], student
    # [0, 0] gives base 1 or 1/2 with score 0 (drop 100 %), or base 0 (no drop: that replicate is left out)
    assert avg_drop_bootstrap_ci({"t": ([1, 0], [0, 0])}, n_boot=1000) == (100.0, 100.0, 100.0)
    # a real-sized case: the interval holds the point and has width
    rng = np.random.default_rng(1)
    t = rng.random(200) < 0.8
    s = t & (rng.random(200) < 0.7)
    point, lo, hi = avg_drop_bootstrap_ci({"t": (t, s)}, n_boot=2000)
    assert lo < point < hi and point == pytest.approx((t.mean() - s.mean()) / t.mean() * 100)
