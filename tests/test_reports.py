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
    # the errored item (2) could not be asked: it is left out, not counted wrong (5 of the 9 others are right)
    assert modes["speech:clean"]["accuracy"] == pytest.approx(5 / 9)
    assert modes["speech:clean"]["errors"] == 1 and modes["speech:clean"]["n_usable"] == 9
    assert modes["speech:clean"]["n"] == 10
    assert modes["speech:clean"]["extraction_fail_rate"] == pytest.approx(0.0)
    g = rep["tasks"]["t"]["gap"]["speech:clean"]
    assert g["n"] == 9  # the items usable in both modes
    assert g["diff"] == pytest.approx(7 / 9 - 5 / 9)
    assert g["flips"] == [3, 1]  # text✓speech✗ at 1, 3, 8; text✗speech✓ at 6 (2 is out)
    assert g["mcnemar_p"] == pytest.approx(0.625)  # 2 * P(Binom(4, .5) <= 1) = 2 * 5/16
    assert g["ci"][0] <= 2 / 9 <= g["ci"][1]
    assert rep["paired"]["t"]["text"]["correct"] == text[:4] + [0] + text[5:]
    assert rep["paired"]["t"]["speech:clean"]["errored"] == ["t/2"]
    assert "t/2" not in rep["paired"]["t"]["speech:clean"]["ids"]
    md = format_gap_markdown(rep)
    assert "+22.2" in md and "3/1" in md
    assert rep["flags"][0]["mode"] == "speech:clean" and "1 of 10" in md  # 10% errored > 5%


def test_restated_questions_are_counted_per_mode_and_named_in_the_markdown() -> None:
    speech = _samples("t", "speech", "clean", [1, 0, 0, 0], extracted_none={1, 2, 3})
    for s in speech[1:3]:
        s.method = "restates-question"
    rep = gap_report(_samples("t", "text", "", [1, 1, 0, 1]) + speech, n_boot=200)
    assert rep["tasks"]["t"]["modes"]["speech:clean"]["restated_rate"] == pytest.approx(0.5)
    assert rep["tasks"]["t"]["modes"]["text"]["restated_rate"] == 0
    assert "restate the question" in format_gap_markdown(rep) and "speech:clean 50.0%" in format_gap_markdown(rep)
    plain = gap_report(_samples("t", "text", "", [1, 0]) + _samples("t", "speech", "clean", [0, 1]), n_boot=200)
    assert "restate" not in format_gap_markdown(plain)


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


# --- errored items, strict JSON, the macro overall row, Avg. Drop % over benchmarks with CIs ------------------


TEXT_LLM_ERROR = "message 0 holds audio, but 'smollm2-135m-instruct' is a text LLM"


def _errored(samples: list[Sample], which: set[int] | None = None, error: str = TEXT_LLM_ERROR) -> list[Sample]:
    for i, s in enumerate(samples):
        if which is None or i in which:
            s.error, s.response, s.extracted, s.correct = error, None, None, False
    return samples


def test_items_that_could_not_be_asked_are_in_no_statistic_and_flagged(tmp_path: Path) -> None:
    # a text LLM given the speech items: every one errors. Before: speech accuracy 0.0 and a "gap" of +60
    # with McNemar p 0.0313; now there is no speech accuracy, no gap, and a flag that says why.
    text = [1] * 6 + [0] * 4
    samples = _samples("t", "text", "", text) + _errored(_samples("t", "speech", "clean", [0] * 10))
    rep = gap_report(samples, n_boot=200)
    sp = rep["tasks"]["t"]["modes"]["speech:clean"]
    assert (sp["n"], sp["n_usable"], sp["errors"], sp["error_rate"]) == (10, 0, 10, 1.0)
    assert np.isnan(sp["accuracy"]) and np.isnan(sp["extraction_fail_rate"])
    assert rep["tasks"]["t"]["gap"] == {} and rep["overall"]["gap"] == {}
    errored = [f"t/{i}" for i in range(10)]
    assert rep["paired"]["t"]["speech:clean"] == {"ids": [], "correct": [], "errored": errored}
    assert rep["error_rate_threshold"] == 0.05
    [flag] = rep["flags"]
    assert (flag["task"], flag["mode"], flag["errors"], flag["n"]) == ("t", "speech:clean", 10, 10)
    assert flag["first_error"] == TEXT_LLM_ERROR
    md = format_gap_markdown(rep)
    assert "Flags" in md and "10 of 10 items could not be asked" in md and TEXT_LLM_ERROR in md

    # some bad audio files: 3 of 20 speech items error. Pairs are the 17 items usable in both modes.
    text = [1] * 15 + [0] * 5
    speech = [1] * 10 + [0] * 10
    samples = _samples("u", "text", "", text) + _errored(_samples("u", "speech", "clean", speech), {0, 1, 2},
                                                          error="audio: not a WAV file")
    rep = gap_report(samples, n_boot=200)
    sp = rep["tasks"]["u"]["modes"]["speech:clean"]
    assert sp["n_usable"] == 17 and sp["accuracy"] == pytest.approx(7 / 17)  # was 7/20 = 0.35
    g = rep["tasks"]["u"]["gap"]["speech:clean"]
    assert g["n"] == 17 and g["diff"] == pytest.approx(12 / 17 - 7 / 17)  # was 15/20 − 7/20 = +40
    assert g["flips"] == [5, 0]  # was [8, 0]: items 0-2 are no evidence
    assert [f["mode"] for f in rep["flags"]] == ["speech:clean"]  # 15% > 5%
    # under the threshold: counted, not flagged
    assert gap_report(samples, n_boot=50, error_rate_threshold=0.2)["flags"] == []

    # the teacher's errored items are left out of its accuracy too
    teacher = _errored(_samples("u", "text", "", [1] * 20), {0, 1})  # 10% > 5%
    rep = gap_report(samples, teacher_samples=teacher, n_boot=200)
    assert rep["teacher"]["text_accuracy"]["u"] == 1.0
    assert any(f["mode"] == "teacher text" for f in rep["flags"])


def test_report_json_is_strict_json_null_not_nan(tmp_path: Path) -> None:
    samples = _samples("t", "text", "", [1, 0]) + _errored(_samples("t", "speech", "clean", [0, 0]))
    rep = gap_report(samples, n_boot=50) | {"version": REPORT_VERSION, "np": np.float64("nan"), "i": np.int64(3)}
    path = tmp_path / "report.json"
    write_json(path, rep)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    back = json.loads(text, parse_constant=reject)
    assert back["tasks"]["t"]["modes"]["speech:clean"]["extraction_fail_rate"] is None
    assert back["tasks"]["t"]["modes"]["speech:clean"]["accuracy"] is None
    assert back["np"] is None and back["i"] == 3
    assert read_report(path)["kind"] == "gap"
    # what the explorer and the gate do with it: the markdown renders, the gate pairs
    assert "| t | 2 |" in format_gap_markdown(back)
    assert run_gate(back, back, max_drop=0.05, n_boot=50)[0].passed


def test_overall_row_is_a_macro_over_tasks_with_a_stratified_bootstrap() -> None:
    # task a (10 items): text 10/10, speech 0/10 -> gap +100; task b (40 items): 20/40 in both, same items -> 0.
    # Macro accuracies 75 and 25: the row's gap is now their difference, +50 [+50, +50] (each task's gap is
    # fixed under resampling within it); before it showed the pooled +20 [+10, +32] next to them.
    samples = _samples("a", "text", "", [1] * 10) + _samples("a", "speech", "clean", [0] * 10)
    samples += _samples("b", "text", "", [1] * 20 + [0] * 20) + _samples("b", "speech", "clean", [1] * 20 + [0] * 20)
    rep = gap_report(samples, n_boot=1000)
    ov = rep["overall"]
    assert ov["definition"] == "overall (macro over tasks)"
    assert ov["macro"] == pytest.approx({"text": 0.75, "speech:clean": 0.25})
    g = ov["gap"]["speech:clean"]
    assert g["diff"] == pytest.approx(0.5) == pytest.approx(ov["macro"]["text"] - ov["macro"]["speech:clean"])
    assert g["ci"] == pytest.approx([0.5, 0.5])
    assert (g["n"], g["flips"], g["tasks"]) == (50, [10, 0], ["a", "b"])  # McNemar and flips: pooled items
    assert g["mcnemar_p"] == pytest.approx(2 * 0.5 ** 10)
    assert ov["pooled"]["speech:clean"]["diff"] == pytest.approx(0.2)  # the micro number, kept and named
    md = format_gap_markdown(rep)
    assert "| **overall (macro over tasks)** | 50 |" in md and "+50.0 [+50.0, +50.0]" in md

    # the stratified bootstrap has width when tasks vary, and holds the macro
    rng = np.random.default_rng(0)
    mixed = []
    for task, n in (("x", 30), ("y", 120)):
        mixed += _samples(task, "text", "", (rng.random(n) < 0.8).astype(int).tolist())
        mixed += _samples(task, "speech", "clean", (rng.random(n) < 0.5).astype(int).tolist())
    g = gap_report(mixed, n_boot=2000)["overall"]["gap"]["speech:clean"]
    per_task = [e["gap"]["speech:clean"]["diff"] for e in gap_report(mixed, n_boot=10)["tasks"].values()]
    assert g["diff"] == pytest.approx(np.mean(per_task)) and g["ci"][0] < g["diff"] < g["ci"][1]


def _with_benchmark(samples: list[Sample], benchmark: str | None) -> list[Sample]:
    for s in samples:
        s.benchmark = benchmark
    return samples


def test_avg_drop_is_averaged_over_benchmarks_with_paired_bootstrap_cis() -> None:
    # Big Bench Audio is two task files here: bba_1 (speech drop 100 %) and bba_2 (0 %); sums (0 %) has no
    # group. Per benchmark: BBA 50 %, sums 0 % -> ΔS = 25 %; the old mean over task files gave 33.3 %.
    student, teacher = [], []
    for task, bench, speech in (("bba_1", "big_bench_audio", [0] * 10), ("bba_2", "big_bench_audio", [1] * 10),
                                ("sums", None, [1] * 10)):
        student += _with_benchmark(_samples(task, "text", "", [1] * 10) + _samples(task, "speech", "clean", speech),
                                   bench)
        teacher += _with_benchmark(_samples(task, "text", "", [1] * 10), bench)
    rep = gap_report(student, teacher_samples=teacher, n_boot=500)
    assert rep["avg_drop_percent"] == pytest.approx({"text": 0.0, "speech:clean": 25.0})
    ad = rep["avg_drop"]
    assert ad["groups"] == {"big_bench_audio": ["bba_1", "bba_2"], "sums": ["sums"]}
    assert ad["ci"]["speech:clean"] == pytest.approx([25.0, 25.0]) and ad["ci"]["text"] == pytest.approx([0, 0])
    md = format_gap_markdown(rep)
    assert "speech:clean: 25.0% [25.0, 25.0]" in md
    assert "Averaged over 2 benchmarks" in md and "big_bench_audio = bba_1 + bba_2; sums" in md

    # with varying answers: ΔS and ΔT each get an interval around them (teacher and student paired by item)
    rng = np.random.default_rng(3)
    student, teacher = [], []
    for task in ("p", "q"):
        t = rng.random(60) < 0.85
        student += _samples(task, "text", "", (t & (rng.random(60) < 0.9)).astype(int).tolist())
        student += _samples(task, "speech", "clean", (t & (rng.random(60) < 0.6)).astype(int).tolist())
        teacher += _samples(task, "text", "", t.astype(int).tolist())
    rep = gap_report(student, teacher_samples=teacher, n_boot=2000)
    for m in ("text", "speech:clean"):
        lo, hi = rep["avg_drop"]["ci"][m]
        assert lo < rep["avg_drop_percent"][m] < hi
    assert rep["avg_drop"]["groups"] == {"p": ["p"], "q": ["q"]}


def test_task_files_name_their_benchmark_and_samples_carry_it() -> None:
    from evalsuite.run import TEXT, prepare
    from evalsuite.tasks.spec import TaskSpecError, load_spec, parse_spec
    from evalsuite.types import Item

    tasks_dir = Path(__file__).resolve().parents[1] / "evalsuite" / "tasks"
    groups = {p.stem: load_spec(p).benchmark for p in sorted(tasks_dir.glob("*.yaml"))}
    assert {t for t, b in groups.items() if b == "big_bench_audio"} == {
        "big_bench_audio_formal_fallacies", "big_bench_audio_navigate", "big_bench_audio_object_counting",
        "big_bench_audio_web_of_lies"}
    assert {t for t, b in groups.items() if b == "voicebench"} == {"voicebench_mmsu", "voicebench_openbookqa"}
    assert groups["sums"] is None
    data = {"name": "x", "source": {"jsonl": "x.jsonl"}, "answer_type": "number", "prompt": "{question}"}
    assert parse_spec(data | {"benchmark": "bench"}, "x.yaml").benchmark == "bench"
    with pytest.raises(TaskSpecError, match="benchmark"):
        parse_spec(data | {"benchmark": 3}, "x.yaml")

    class _Task:  # what prepare() reads of a task
        name = "x"
        spec = parse_spec(data | {"benchmark": "bench"}, "x.yaml")

        def render_text(self, item: Item) -> str:
            return item.question

        render_spoken = render_text

    [p] = prepare(_Task(), [Item(id="x/0", question="1 + 1?", answer="2")], (TEXT,), ())
    assert p.sample.benchmark == "bench" and p.sample.as_dict()["benchmark"] == "bench"


def test_forgetting_pairs_only_items_both_models_could_answer():
    from evalsuite.reports.forgetting import forgetting_report
    from evalsuite.run import Sample

    def s(i, correct, error=None):
        return Sample(id=f"t/{i}", task="t", mode="text", variant=None, prompt="q", answer="1", response="1",
                      extracted="1" if correct else "2", correct=correct, error=error)

    base = [s(0, True), s(1, True), s(2, False, error="audio: missing file"), s(3, False)]
    model = [s(0, True), s(1, False), s(2, True), s(3, False, error="audio: corrupt")]
    e = forgetting_report(base, model, n_boot=200)["tasks"]["t"]["text"]
    assert e["n"] == 2 and e["diff"] == pytest.approx(-0.5)  # items 0 and 1 only: 1/2 - 2/2
