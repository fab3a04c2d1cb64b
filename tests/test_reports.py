"""Gap, forgetting and gate reports from per-sample records; `xopd-eval gate` exit codes on real report files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalsuite.reports import REPORT_VERSION, read_report, write_json
from evalsuite.reports.forgetting import forgetting_report, paired_wer_delta, word_errors
from evalsuite.reports.gap import format_gap_markdown, gap_report
from evalsuite.reports.gate import run_gate
from evalsuite.reports.plot import gap_chart
from evalsuite.run import Sample


def _samples(task: str, mode: str, variant: str, correct: list[int], extracted_none: set[int] = frozenset(),
             errors: set[int] = frozenset()) -> list[Sample]:
    out = []
    for i, c in enumerate(correct):
        s = Sample(f"{task}/{i}", task, mode, variant, "p", "1", response="r", extracted="1", correct=bool(c))
        if i in extracted_none:
            s.extracted, s.correct = None, False
        if i in errors:
            s.error, s.response, s.extracted, s.correct = "audio: missing", None, None, False
        out.append(s)
    return out


def test_gap_report_numbers_by_hand() -> None:
    text = [1, 1, 1, 1, 0, 1, 0, 1, 1, 1]
    speech = [1, 0, 1, 0, 0, 1, 1, 1, 0, 1]
    samples = _samples("t", "text", "", text, extracted_none={4}) + _samples(
        "t", "speech", "clean", speech, errors={2}
    )
    rep = gap_report(samples, n_boot=2000)
    modes = rep["tasks"]["t"]["modes"]
    assert modes["text"]["accuracy"] == pytest.approx(0.8)
    assert modes["text"]["extraction_fail_rate"] == pytest.approx(0.1)
    assert modes["speech:clean"]["accuracy"] == pytest.approx(0.5)  # the errored item counts as wrong
    assert modes["speech:clean"]["errors"] == 1
    assert modes["speech:clean"]["extraction_fail_rate"] == pytest.approx(0.0)
    g = rep["tasks"]["t"]["gap"]["speech:clean"]
    assert g["diff"] == pytest.approx(0.3)
    assert g["flips"] == [4, 1]  # text✓speech✗ at 1, 2, 3, 8; text✗speech✓ at 6
    assert g["mcnemar_p"] == pytest.approx(0.375)  # 2 * P(Binom(5, .5) <= 1) = 2 * 6/32
    assert g["ci"][0] <= 0.3 <= g["ci"][1]
    assert rep["paired"]["t"]["text"]["correct"] == text[:4] + [0] + text[5:]
    md = format_gap_markdown(rep)
    assert "+30.0" in md and "4/1" in md


def test_gap_report_with_teacher_avg_drop() -> None:
    student = _samples("a", "text", "", [1] * 6 + [0] * 4) + _samples("a", "speech", "clean", [1] * 3 + [0] * 7)
    teacher = _samples("a", "text", "", [1] * 8 + [0] * 2)
    rep = gap_report(student, teacher_samples=teacher, n_boot=500)
    assert rep["teacher"]["text_accuracy"]["a"] == pytest.approx(0.8)
    assert rep["avg_drop_percent"]["text"] == pytest.approx((0.8 - 0.6) / 0.8 * 100)
    assert rep["avg_drop_percent"]["speech:clean"] == pytest.approx((0.8 - 0.3) / 0.8 * 100)


def test_avg_drop_leaves_out_tasks_the_teacher_scores_zero_on() -> None:
    student = _samples("a", "text", "", [1] * 6 + [0] * 4) + _samples("a", "speech", "clean", [1] * 3 + [0] * 7)
    student += _samples("z", "text", "", [0] * 10) + _samples("z", "speech", "clean", [1] + [0] * 9)
    teacher = _samples("a", "text", "", [1] * 8 + [0] * 2) + _samples("z", "text", "", [0] * 10)
    rep = gap_report(student, teacher_samples=teacher, n_boot=200)
    assert rep["avg_drop_excluded"] == ["z"]  # (0 - s) / 0 is undefined: z is listed, not averaged
    assert rep["avg_drop_percent"]["speech:clean"] == pytest.approx((0.8 - 0.3) / 0.8 * 100)
    only_zero = gap_report(_samples("z", "text", "", [0] * 4), teacher_samples=_samples("z", "text", "", [0] * 4))
    assert np.isnan(only_zero["avg_drop_percent"]["text"])


def _report_file(tmp_path: Path, name: str, correct: np.ndarray, *, kind: str = "gap") -> Path:
    samples = _samples("t", "text", "", correct.tolist())
    rep = gap_report(samples, n_boot=200) | {"version": REPORT_VERSION, "config": {"backend": "hf"}}
    path = tmp_path / name
    write_json(path, rep)
    return path


def _gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalsuite.cli", "gate", *args], capture_output=True, text=True)


def test_gate_cli_passes_equal_and_fails_a_real_drop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.7
    worse = base.copy()
    worse[np.flatnonzero(base)[:80]] = False  # an 8-point drop
    b = _report_file(tmp_path, "base.json", base)
    same = _report_file(tmp_path, "same.json", base)
    bad = _report_file(tmp_path, "bad.json", worse)
    ok = _gate("--report", str(same), "--baseline", str(b), "--max-drop", "0.02")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "gate passed" in ok.stdout
    fail = _gate("--report", str(bad), "--baseline", str(b), "--max-drop", "0.02")
    assert fail.returncode == 1
    assert "GATE FAILED on 1 of 1: t/text" in fail.stdout
    missing = _gate("--report", str(tmp_path / "nope.json"), "--baseline", str(b), "--max-drop", "0.02")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_gate_fails_on_a_vanished_task(tmp_path: Path) -> None:
    base = read_report(_report_file(tmp_path, "b.json", np.ones(50, bool)))
    new = json.loads(json.dumps(base))
    new["paired"] = {}
    rows = run_gate(new, base, max_drop=0.05, n_boot=200)
    assert [r.passed for r in rows] == [False] and "missing" in rows[0].note


def test_forgetting_report_and_gate_without_baseline() -> None:
    base = _samples("t", "text", "", [1] * 30 + [0] * 10)
    model = _samples("t", "text", "", [0] * 15 + [1] * 15 + [0] * 10)  # lost 15 items: −37.5 points
    rep = forgetting_report(base, model, n_boot=500)
    e = rep["tasks"]["t"]["text"]
    assert e["diff"] == pytest.approx(-15 / 40)
    assert e["flips"] == [0, 15]
    rows = run_gate(rep, None, max_drop=0.05, n_boot=500)
    assert not rows[0].passed


def test_wer_delta_by_hand() -> None:
    refs = ["there are twelve eggs", "is seven greater than four"]
    e_base, words = word_errors(refs, ["there are 12 eggs", "is seven greater than four"])
    e_model, _ = word_errors(refs, ["there are eggs", None])
    assert words.tolist() == [4, 5] and e_base.tolist() == [0, 0] and e_model.tolist() == [1, 5]
    d = paired_wer_delta(words, e_base, e_model, n_boot=500)
    assert d["base_wer"] == 0 and d["model_wer"] == pytest.approx(6 / 9)
    assert d["ci"][0] <= d["delta"] <= d["ci"][1]


def test_gap_chart_is_a_png(tmp_path: Path) -> None:
    rep = gap_report(_samples("t", "text", "", [1, 0]) + _samples("t", "speech", "clean", [0, 0]), n_boot=100)
    path = gap_chart(rep, tmp_path / "gap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gap_chart_shows_cis_chance_teacher_overall_and_names_both_models(tmp_path: Path) -> None:
    from matplotlib.container import ErrorbarContainer

    from evalsuite.reports.plot import CHANCE_GID, gap_figure
    from evalsuite.run import chance_level

    assert chance_level("yesno", ("yes", "no")) == 0.5 and chance_level("choice", ("a", "b", "c", "d")) == 0.25
    assert chance_level("number", ()) == 0.0 and chance_level("text", ()) == 0.0

    def with_chance(samples: list[Sample], chance: float) -> list[Sample]:
        for s in samples:
            s.chance = chance
        return samples

    student, teacher = [], []
    for task, chance, text, speech in (("yn", 0.5, [1] * 7 + [0] * 3, [1] * 5 + [0] * 5),
                                       ("mc", 0.25, [1] * 6 + [0] * 4, [1] * 2 + [0] * 8),
                                       ("num", 0.0, [1] * 4 + [0] * 6, [1] + [0] * 9)):
        student += with_chance(_samples(task, "text", "", text) + _samples(task, "speech", "clean", speech), chance)
        teacher += with_chance(_samples(task, "text", "", [1] * 9 + [0]), chance)
    rep = gap_report(student, teacher_samples=teacher, n_boot=200)
    rep["config"] = {"model": "student-speech-llm", "teacher": "teacher-text-llm", "confidence": 0.95}

    # the report: chance per task, a Wilson CI per mode (around its accuracy), the teacher's CI
    assert {t: e["chance"] for t, e in rep["tasks"].items()} == {"yn": 0.5, "mc": 0.25, "num": 0.0}
    for e in rep["tasks"].values():
        for m in e["modes"].values():
            lo, hi = m["accuracy_ci"]
            assert 0 <= lo < m["accuracy"] < hi <= 1
    assert rep["tasks"]["yn"]["modes"]["text"]["accuracy_ci"] == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert rep["teacher"]["text_accuracy_ci"]["yn"][0] < 0.9 < rep["teacher"]["text_accuracy_ci"]["yn"][1]
    old = _samples("o", "text", "", [1, 0])  # records from before `chance`: None, not a made-up number
    assert gap_report(old, n_boot=10)["tasks"]["o"]["chance"] is None

    fig = gap_figure(rep)
    ax = fig.axes[0]
    assert "student-speech-llm" in ax.get_title() and "teacher-text-llm" in ax.get_title()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[:3] == ["yn\nn=10", "mc\nn=10", "num\nn=10"] and ticks[3].startswith("overall")
    # one errorbar container per series (teacher text, student text, student speech), one bar per group
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    assert all(len(c.lines[2][0].get_segments()) == 4 for c in bars)  # 3 tasks + overall
    seg = bars[1].lines[2][0].get_segments()[0]  # student text on "yn": its Wilson CI, in %
    assert [seg[0][1], seg[1][1]] == pytest.approx([39.68, 89.22], abs=0.01)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "teacher text", "student text", "student speech (clean)", "chance"]
    # chance: 50 % over yn, 25 % over mc, none drawn for the free-form number task, 25 % = mean over overall
    chance = sorted((round(float(np.mean([p[0] for p in c.get_segments()[0]]))), float(c.get_segments()[0][0][1]))
                    for c in ax.collections if c.get_gid() == CHANCE_GID)
    assert chance == [(0, 50.0), (1, 25.0), (3, 25.0)]
    path = gap_chart(rep, tmp_path / "gap.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
