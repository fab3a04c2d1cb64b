"""Tests for analysis/: the rollout-log reader, the token table, aggregates, figures, xopd-eval divergence.

Aggregates are pinned against values computed by hand on a three-record log written here; the reader's
robustness (truncated, garbage, wrong-schema, empty logs; paths escaping the run directory) is checked on
small files; then everything runs on a real rollout log the trainer writes on the tiny fixtures, and
``xopd-eval divergence`` scores the fixture student with the fixture teacher (whose language model it *is*:
on text the two agree exactly).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis import aggregate
from analysis.figures import write_figures
from analysis.logs import LogError, RolloutLog, RunDir, check_record, read_jsonl, resolve_inside
from analysis.table import entry_table, token_table

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def record(step, modality, prompt_id, s_lp, t_lp, pieces, *, sample=0, extra_tokens=None, **fields):
    """A schema-1 rollout record with keys in the trainer's order (``tokens`` last)."""
    t = len(s_lp)
    tokens = {
        "id": list(range(10, 10 + t)),
        "piece": pieces,
        "student_lp": s_lp,
        "teacher_lp": t_lp,
        "sampler_lp": s_lp,
        "advantage": [b - a for a, b in zip(s_lp, t_lp, strict=True)],
    } | (extra_tokens or {})
    rec = {
        "schema": 1,
        "step": step,
        "kind": "xopd",
        "prompt_id": prompt_id,
        "modality": modality,
        "sample": sample,
        "prompt_text": "What is 2 plus 3?",
        "spoken_text": None,
        "audio_path": None,
        "variant": None,
        "completion": "".join(pieces),
        "finished": True,
        "num_tokens": t,
        "reverse_kl": sum(a - b for a, b in zip(s_lp, t_lp, strict=True)) / t,
    } | fields
    rec["tokens"] = tokens
    return rec


# per-token KL (student - teacher): R1 [0, 2, 0]; R2 [1.5, 0.5]; R3 [0, 0, 0, 0, 3]
R1 = record(
    1,
    "text",
    "p/1",
    [-1.0, -2.0, -0.5],
    [-1.0, -4.0, -0.5],
    ["A", "x", "."],
    extra_tokens={
        "student_entropy": [0.1, 0.2, 0.3],
        "teacher_topk": {
            "id": [[1, 2]] * 3,
            "piece": [["a", "b"]] * 3,
            "lp": [[math.log(0.25), math.log(0.5)]] * 3,
        },
    },
)
R2 = record(1, "speech", "p/1", [-0.5, -1.0], [-2.0, -1.5], ["A", "y"])
R3 = record(2, "speech", "p/2", [-1.0] * 5, [-1.0, -1.0, -1.0, -1.0, -4.0], ["B", "B", "B", "B", "x"])


def write_log(path: Path, records, tail: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return path


@pytest.fixture()
def hand_table(tmp_path) -> pd.DataFrame:
    log = RolloutLog.open(write_log(tmp_path / "rollouts.jsonl", [R1, R2, R3]))
    assert log.problems == [] and len(log) == 3
    return token_table(log.iter_records())


# ------------------------------------------------------------------------------------------------------------
# the token table and the aggregates, against hand-computed values
# ------------------------------------------------------------------------------------------------------------


def test_token_table_rows_and_optional_columns(hand_table):
    t = hand_table
    assert len(t) == 10
    assert list(t["position"]) == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert list(t["piece"]) == ["A", "x", ".", "A", "y", "B", "B", "B", "B", "x"]
    assert t["kl"].tolist() == pytest.approx([0, 2, 0, 1.5, 0.5, 0, 0, 0, 0, 3])
    assert t["advantage"].tolist() == pytest.approx([0, -2, 0, -1.5, -0.5, 0, 0, 0, 0, -3])
    # the entropy only R1 logs: its values there, NaN elsewhere; nobody logs teacher_entropy
    assert t["student_entropy"].iloc[:3].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert t["student_entropy"].iloc[3:].isna().all() and t["teacher_entropy"].isna().all()
    # teacher top-k as (piece, probability), likeliest first; [] where the record has none
    assert t["teacher_topk"].iloc[0] == [("b", pytest.approx(0.5)), ("a", pytest.approx(0.25))]
    assert t["teacher_topk"].iloc[5] == []
    assert "teacher_topk" not in token_table([R1], topk=False).columns
    assert token_table([]).empty and "kl" in token_table([]).columns


def test_kl_by_modality_and_step(hand_table):
    m = aggregate.kl_by_modality(hand_table).set_index("modality")
    assert m.loc["text", "tokens"] == 3 and m.loc["text", "kl"] == pytest.approx(2 / 3)
    assert m.loc["speech", "tokens"] == 7 and m.loc["speech", "kl"] == pytest.approx(5 / 7)
    assert m.loc["speech", "rollouts"] == 2 and m.loc["speech", "mean_length"] == pytest.approx(3.5)
    s = aggregate.kl_by_step(hand_table).set_index(["step", "modality"])["kl"]
    assert s.to_dict() == pytest.approx({(1, "speech"): 1.0, (1, "text"): 2 / 3, (2, "speech"): 0.6})
    overall = aggregate.kl_by_step(hand_table, by_modality=False).set_index("step")["kl"]
    assert overall.to_dict() == pytest.approx({1: 4 / 5, 2: 3 / 5})


def test_kl_by_step_from_the_index_alone(tmp_path, hand_table):
    log = RolloutLog.open(write_log(tmp_path / "rollouts.jsonl", [R1, R2, R3]))
    entries = entry_table(log.entries)
    assert list(entries["line"]) == [1, 2, 3] and list(entries["num_tokens"]) == [3, 2, 5]
    fast = aggregate.kl_by_step_from_entries(entries)
    full = aggregate.kl_by_step(hand_table)
    pd.testing.assert_frame_equal(fast, full, check_dtype=False)
    overall = aggregate.kl_by_step_from_entries(entries, by_modality=False)["kl"]
    assert overall.tolist() == pytest.approx([0.8, 0.6])


def test_kl_by_position_buckets(hand_table):
    p = aggregate.kl_by_position(hand_table).set_index(["modality", "bucket"])
    assert p["tokens"].to_dict() == {("speech", "0-3"): 6, ("speech", "4-7"): 1, ("text", "0-3"): 3}
    assert p["kl"].to_dict() == pytest.approx(
        {("speech", "0-3"): 2 / 6, ("speech", "4-7"): 3.0, ("text", "0-3"): 2 / 3}
    )
    single = aggregate.kl_by_position(hand_table, edges=[0, 1, 2]).set_index(["modality", "bucket"])
    assert single.loc[("text", "1"), "kl"] == pytest.approx(2.0)
    assert single.loc[("speech", "2+"), "tokens"] == 3
    with pytest.raises(ValueError, match="start at 0"):
        aggregate.kl_by_position(hand_table, edges=[1, 4])


def test_first_divergence(hand_table):
    assert aggregate.first_divergence_position([0.0, -0.5, -1.0, -1.1]) == 3  # strictly below -1
    assert aggregate.first_divergence_position([float("nan"), None, 0.0]) is None
    fd = aggregate.first_divergence(hand_table).set_index(["prompt_id", "modality"])["first_divergence"]
    assert fd.to_dict() == {("p/1", "text"): 1, ("p/1", "speech"): 0, ("p/2", "speech"): 4}
    strict = aggregate.first_divergence(hand_table, threshold=-2.5).set_index("modality")
    assert strict["first_divergence"].isna().sum() == 2  # only R3's -3 crosses -2.5
    summary = aggregate.first_divergence_summary(aggregate.first_divergence(hand_table)).set_index("modality")
    assert summary.loc["speech", "diverged"] == 2 and summary.loc["speech", "median_position"] == 2.0


def test_divergent_tokens(hand_table):
    d = aggregate.divergent_tokens(hand_table, top=None)
    assert list(d["piece"]) == ["x", "A", "y", "B", "."]  # ties on mean advantage: the more frequent first
    x = d.iloc[0]
    assert (x["count"], x["mean_advantage"], x["min_advantage"]) == (2, pytest.approx(-2.5), -3)
    assert list(aggregate.divergent_tokens(hand_table, min_count=2, top=None)["piece"]) == ["x", "A", "B"]
    assert list(aggregate.divergent_tokens(hand_table, modality="text", top=1)["piece"]) == ["x"]


def test_text_vs_speech(hand_table):
    pairs, summary = aggregate.text_vs_speech(hand_table)
    assert len(pairs) == 1  # p/2 has no text rollout
    row = pairs.iloc[0]
    assert (row["step"], row["prompt_id"]) == (1, "p/1")
    assert (row["kl_text"], row["kl_speech"], row["diff"]) == pytest.approx((2 / 3, 1.0, 1 / 3))
    assert summary["prompts"] == 1 and summary["speech_higher"] == 1.0
    only_speech = hand_table[hand_table["modality"] == "speech"]
    assert aggregate.text_vs_speech(only_speech)[1]["prompts"] == 0


def test_summary_is_json_and_printable(hand_table):
    s = aggregate.summarize(hand_table)
    json.dumps(s, allow_nan=False)  # NaN -> None throughout
    assert s["rollouts"] == 3 and s["tokens"] == 10 and s["steps"] == [1, 2]
    text = aggregate.format_summary(s)
    assert "speech - text +0.3333" in text and '"x"' in text
    empty = aggregate.summarize(token_table([]))
    assert empty["rollouts"] == 0 and "no prompt" in aggregate.format_summary(empty)


def test_figures_written_atomically(hand_table, tmp_path):
    written = write_figures(hand_table, tmp_path / "figs")
    names = sorted(p.name for p in written)
    assert names == ["first_divergence.png", "kl_by_position.png", "kl_over_steps.png", "text_vs_speech.png"]
    assert all(p.read_bytes().startswith(PNG) for p in written)
    assert sorted(os.listdir(tmp_path / "figs")) == names  # no temporary leftovers
    assert write_figures(token_table([]), tmp_path / "none") == []


# ------------------------------------------------------------------------------------------------------------
# reading logs that are truncated, malformed, empty, or changed
# ------------------------------------------------------------------------------------------------------------


def test_truncated_garbage_and_wrong_schema_lines_become_problems(tmp_path):
    bad_schema = dict(R2, schema=2)
    no_step = {k: v for k, v in R3.items() if k != "step"}
    lines = [R1, "garbage", bad_schema, no_step, R2]
    path = tmp_path / "rollouts.jsonl"
    partial = json.dumps(R3).encode()[:150]
    path.write_bytes(
        b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in lines)
        + b"\n"
        + partial
    )
    log = RolloutLog.open(path)
    assert [e.line for e in log.entries] == [1, 5]
    assert [e.modality for e in log.entries] == ["text", "speech"]
    problems = "\n".join(log.problems)
    assert len(log.problems) == 4
    assert "rollouts.jsonl line 2: not JSON" in problems
    assert "rollouts.jsonl line 3: schema 2" in problems
    assert "rollouts.jsonl line 4: no 'step' field" in problems
    assert "rollouts.jsonl line 7: truncated (the run may still be writing it)" in problems
    assert log.read(log.entries[1])["tokens"]["piece"] == ["A", "y"]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(json.dumps(R1).encode() + b"\n" + json.dumps(R2).encode())
    log = RolloutLog.open(path)
    assert len(log) == 2 and log.problems == []


def test_empty_and_missing_logs(tmp_path):
    (tmp_path / "rollouts.jsonl").write_bytes(b"")
    log = RolloutLog.open(tmp_path / "rollouts.jsonl")
    assert len(log) == 0 and "empty" in log.problems[0]
    with pytest.raises(LogError, match="nothing.jsonl"):
        RolloutLog.open(tmp_path / "nothing.jsonl")
    assert RunDir(tmp_path / ".").metrics() == ([], [])
    (tmp_path / "rollouts.jsonl").unlink()
    assert RunDir(tmp_path).rollouts() is None and RunDir(tmp_path).config() is None
    with pytest.raises(LogError, match="does not exist"):
        RunDir(tmp_path / "missing")
    with pytest.raises(LogError, match="not a directory"):
        RunDir(write_log(tmp_path / "file.jsonl", [R1]))


def test_header_index_is_robust(tmp_path):
    # the header cut must not be fooled by the key text inside a string, and a reordered record still indexes
    tricky = record(3, "text", 'id with , "tokens": inside', [-1.0], [-1.0], ["z"])
    reordered = {"tokens": R2["tokens"], **{k: v for k, v in R2.items() if k != "tokens"}}
    log = RolloutLog.open(write_log(tmp_path / "r.jsonl", [tricky, reordered]))
    assert log.problems == []
    assert log.entries[0].prompt_id == 'id with , "tokens": inside' and log.entries[1].modality == "speech"
    assert [r["step"] for r in log.iter_records()] == [3, 1]
    assert log.select(step=1, modality="speech") == [log.entries[1]] and log.steps() == [1, 3]


def test_read_checks_the_schema_and_detects_rewrites(tmp_path):
    short = json.loads(json.dumps(R1))
    short["tokens"]["advantage"] = short["tokens"]["advantage"][:2]
    path = write_log(tmp_path / "rollouts.jsonl", [R2, short])
    log = RolloutLog.open(path)
    assert len(log) == 2  # the header is fine; the arrays are checked on read
    with pytest.raises(LogError, match=r"rollouts.jsonl line 2: tokens.advantage has 2 values for num_tok"):
        log.read(log.entries[1])
    problems: list[str] = []
    assert [r["modality"] for r in log.iter_records(problems=problems)] == ["speech"]
    assert len(problems) == 1 and "line 2" in problems[0]
    with pytest.raises(LogError, match="line 1"):
        check_record({**R2, "tokens": {"id": [1, 2]}}, "x line 1")
    write_log(path, [R3, R1])  # a resumed run rewrote the file under us
    with pytest.raises(LogError, match="changed since it was opened"):
        log.read(log.entries[0])


def test_metrics_jsonl_problems(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\nnope\n{"step": 2}\n{"step": 3, "lo')
    records, problems = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2]
    assert problems == [
        "metrics.jsonl line 2: not a JSON object",
        "metrics.jsonl line 3: not JSON: Expecting value: line 1 column 1 (char 0)",
        "metrics.jsonl line 5: truncated (the run may still be writing it)",
    ]


def test_paths_escaping_the_run_dir_are_refused(tmp_path):
    run = tmp_path / "run"
    outside = tmp_path / "secret"
    (run / "audio").mkdir(parents=True)
    outside.mkdir()
    (outside / "a.wav").write_bytes(b"RIFF")
    (run / "audio" / "ok.wav").write_bytes(b"RIFF")
    (run / "audio" / "out.wav").symlink_to(outside / "a.wav")
    (run / "linkdir").symlink_to(outside)
    rd = RunDir(run)
    assert rd.audio("audio/ok.wav") == (run / "audio" / "ok.wav").resolve()
    assert resolve_inside(run, "audio/../audio/ok.wav") == rd.audio("audio/ok.wav")
    for bad in ("../secret/a.wav", "audio/../../secret/a.wav", str(outside / "a.wav"), "audio/out.wav",
                "linkdir/a.wav", "/etc/passwd"):
        with pytest.raises(LogError, match="outside|absolute"):
            rd.audio(bad)
    with pytest.raises(LogError, match="does not exist"):
        rd.audio("audio/missing.wav")
    # a rollout log that is a symlink out of the run dir is not read either
    write_log(outside / "rollouts.jsonl", [R1])
    (run / "rollouts.jsonl").symlink_to(outside / "rollouts.jsonl")
    with pytest.raises(LogError, match="outside"):
        rd.rollouts()


def test_reports_by_step(tmp_path):
    from evalsuite.reports import write_json

    run = tmp_path / "run"
    gap = {"version": 1, "kind": "gap", "paired": {}, "tasks": {}}
    write_json(run / "evals" / "step-000004" / "report.json", gap)
    write_json(run / "evals" / "step-000000" / "report.json", gap | {"kind": "forgetting"})
    write_json(run / "extra" / "report.json", gap)
    (run / "evals" / "step-000002").mkdir(parents=True)
    (run / "evals" / "step-000002" / "report.json").write_text("{not json")
    outside = tmp_path / "elsewhere"
    write_json(outside / "report.json", gap)
    (run / "evals" / "step-000006").mkdir()
    (run / "evals" / "step-000006" / "report.json").symlink_to(outside / "report.json")
    problems: list[str] = []
    reports = RunDir(run).reports(problems)
    assert [(s, r["kind"]) for s, _, r in reports] == [(0, "forgetting"), (4, "gap"), (None, "gap")]
    assert len(problems) == 2
    assert any("step-000002" in p and "not valid JSON" in p for p in problems)
    assert any("step-000006" in p and "outside" in p for p in problems)


def test_open_time_of_a_large_log(tmp_path):
    # 10,000 rollouts of 50 tokens (top-5): the index reads headers only
    t = 50
    topk = {"id": [[1] * 5] * t, "piece": [["w"] * 5] * t, "lp": [[-1.0] * 5] * t}
    rec = record(1, "speech", "p", [-1.0] * t, [-1.5] * t, ["w"] * t, extra_tokens={"teacher_topk": topk})
    line = json.dumps(rec)
    with open(tmp_path / "rollouts.jsonl", "w") as fh:
        for i in range(10_000):
            fh.write(line.replace('"step": 1,', f'"step": {i // 100 + 1},', 1) + "\n")
    started = time.perf_counter()
    log = RolloutLog.open(tmp_path / "rollouts.jsonl")
    seconds = time.perf_counter() - started
    assert len(log) == 10_000 and log.steps() == list(range(1, 101)) and log.problems == []
    assert seconds < 3.0, f"indexing 10k rollouts took {seconds:.2f} s"
    assert log.read(log.select(step=100)[-1])["step"] == 100


# ------------------------------------------------------------------------------------------------------------
# a real rollout log from the trainer, and xopd-eval divergence on the tiny fixtures
# ------------------------------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from xopd.config import load_config
    from xopd.trainer import train

    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("analysis") / "run"
    cfg = load_config(
        ROOT / "recipes" / "tiny.yaml",
        [f"output_dir={out}", "logging.progress=false", "schedule.steps=2", "schedule.batch_prompts=2",
         "rollout.max_new_tokens=8", "eval.at_start=false", "eval.at_end=false", "checkpoint.every=0"],
    )
    train(cfg)
    return out


def test_real_trainer_log(trained_run, tmp_path):
    before = tree_state(trained_run)
    rd = RunDir(trained_run)
    log = rd.rollouts()
    assert log is not None and log.problems == []
    assert len(log) == 2 * 2 * 2 * 2  # steps x prompts x modalities x n
    assert log.steps() == [1, 2] and sorted({e.modality for e in log.entries}) == ["speech", "text"]
    metrics, problems = rd.metrics()
    assert problems == [] and [m["step"] for m in metrics] == [1, 2]
    assert rd.config()["models"]["student"] == "fixture:qwen2_audio"
    records = list(log.iter_records())
    table = token_table(records)
    assert len(table) == sum(r["num_tokens"] for r in records)
    # the aggregates reproduce the trainer's own per-step KL (it averages the unrounded values)
    by_step = aggregate.kl_by_step(table).set_index(["step", "modality"])["kl"]
    fast = aggregate.kl_by_step_from_entries(entry_table(log.entries)).set_index(["step", "modality"])["kl"]
    assert fast.to_dict() == pytest.approx(by_step.to_dict(), abs=1e-5)
    for m in metrics:
        for mod in ("text", "speech"):
            assert by_step[(m["step"], mod)] == pytest.approx(m[f"kl_{mod}"], abs=1e-4)
    # before the first update the student's language model is the teacher: no divergence on text
    step1_text = table[(table["step"] == 1) & (table["modality"] == "text")]
    assert step1_text["kl"].abs().max() < 1e-4
    for r in records:
        if r["modality"] == "speech":
            assert rd.audio(r["audio_path"]).read_bytes()[:4] == b"RIFF"
    assert write_figures(table, tmp_path / "figs")
    assert tree_state(trained_run) == before  # reading never writes into the run directory


def test_divergence_cli_on_a_logdir(trained_run, tmp_path, capsys):
    from evalsuite.cli import main

    before = tree_state(trained_run)
    out = tmp_path / "summary"
    assert main(["divergence", "--logdir", str(trained_run), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean KL" in printed and "text vs speech on the same prompts (4)" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollouts"] == 16 and summary["steps"] == [1, 2]
    assert (out / "kl_over_steps.png").read_bytes().startswith(PNG)
    assert main(["divergence", "--logdir", str(trained_run), "--output", str(trained_run / "x")]) == 2
    assert "read only" in capsys.readouterr().err
    assert tree_state(trained_run) == before
    assert main(["divergence", "--logdir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_divergence_cli_scores_fixture_models(tmp_path, capsys):
    from evalsuite.cli import main

    out = tmp_path / "div"
    args = ["divergence", "--model", "fixture:qwen2_audio", "--teacher", "fixture:teacher",
            "--tasks", "sums", "--limit", "2", "--n", "2", "--max-new-tokens", "6", "--topk", "3",
            "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "text vs speech on the same prompts (2)" in printed
    rd = RunDir(out)
    log = rd.rollouts()
    assert log.problems == [] and len(log) == 2 * 2 * 2
    records = list(log.iter_records())
    assert {(r["step"], r["kind"]) for r in records} == {(0, "score")}
    assert sorted({(r["prompt_id"], r["modality"], r["sample"]) for r in records}) == sorted(
        {(p, m, s) for p in {r["prompt_id"] for r in records} for m in ("text", "speech") for s in (0, 1)}
    )
    for r in records:
        assert len(r["tokens"]["teacher_topk"]["id"][0]) == 3
        if r["modality"] == "text":  # the student's LM is the teacher: same prompt, same log-probs
            assert max(abs(a) for a in r["tokens"]["advantage"]) < 1e-4
        else:
            assert r["variant"] == "clean" and rd.audio(r["audio_path"]).read_bytes()[:4] == b"RIFF"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "divergence" and summary["config"]["teacher"] == "fixture:teacher"
    assert summary["tokens"] == sum(r["num_tokens"] for r in records)
    assert (out / "text_vs_speech.png").read_bytes().startswith(PNG)
    # bad input: a clear message and exit code 2, no traceback
    assert main(["divergence", "--model", "fixture:qwen2_audio", "--teacher", "fixture:teacher",
                 "--tasks", "no_such_task", "--output", str(tmp_path / "bad")]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert main(["divergence", "--model", "fixture:qwen2_audio", "--output", str(tmp_path / "bad")]) == 2
    assert "--teacher" in capsys.readouterr().err
