"""reports/demo/world.{json,md} are built from real `xopd-eval gap` and `perception` reports (here of the tiny
fixtures, flite voices): the issue's schema, the numbers taken from the right places, the checks marked."""

from __future__ import annotations

import json

import pytest

from evalsuite.cli import main as eval_main
from xopd.world import report as wr

KEYS = {"text_acc", "speech_acc_seen", "speech_acc_heldout", "gap_heldout", "gap_heldout_ci", "n_paired",
        "repeat_wer", "whisper_wer", "perception_gap", "delta_s", "delta_t"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    common = ["--tasks", "sums,syllogism", "--limit", "3", "--backend", "hf", "--max-new-tokens", "6",
              "--n-boot", "200"]
    assert eval_main(["gap", "--model", "fixture:qwen2_audio", "--teacher", "fixture:teacher", "--variants",
                      "flite-slt,flite-kal", "--output", str(out / "gap"), *common]) == 0
    assert eval_main(["perception", "--model", "fixture:qwen2_audio", "--variants", "flite-slt",
                      "--output", str(out / "perception"), *common]) == 0
    return (json.loads((out / "gap" / "report.json").read_text()),
            json.loads((out / "perception" / "report.json").read_text()), out)


def test_world_numbers_follow_the_schema_and_the_reports(reports):
    gap, perception, _ = reports
    w = wr.world_numbers(gap, perception, seen="flite-slt", held_out="flite-kal")
    assert set(w["teacher"]) == {"text_acc", "per_task"} and KEYS <= set(w["student"])
    s = w["student"]
    assert s["text_acc"] == gap["overall"]["macro"]["text"]
    assert s["speech_acc_heldout"] == gap["overall"]["macro"]["speech:flite-kal"]
    assert s["gap_heldout"] == gap["overall"]["gap"]["speech:flite-kal"]["diff"] and s["n_paired"] == 6
    assert s["repeat_wer"] == perception["overall"]["model_wer"]
    assert s["perception_gap"] == perception["overall"]["reasoning"]["diff"]
    assert set(s["per_task"]) == {"sums", "syllogism"} and s["per_task"]["syllogism"]["chance"] == 0.5
    assert w["teacher"]["text_acc"] == pytest.approx(sum(gap["teacher"]["text_accuracy"].values()) / 2)
    checks = dict(wr.checks(w))
    assert checks[">= 600 paired items"] is False  # 6 items: the check says so
    md = wr.markdown(w, [])
    assert "| **overall (macro)** |" in md and "- [ ] >= 600 paired items" in md


def test_cli_writes_json_and_md_and_refuses_a_report_without_teacher(reports, tmp_path):
    gap, perception, out = reports
    with pytest.raises(SystemExit, match="voice 'hibari'"):  # the defaults name the demo world's voices
        wr.main(["--gap", str(out / "gap" / "report.json"), "--perception", str(out / "perception" / "report.json"),
                 "--out", str(tmp_path / "world")])
    assert wr.main(["--gap", str(out / "gap" / "report.json"), "--perception",
                    str(out / "perception" / "report.json"), "--out", str(tmp_path / "world"),
                    "--seen", "flite-slt", "--held-out", "flite-kal"]) == 0
    w = json.loads((tmp_path / "world.json").read_text())
    assert w["student"]["n_paired"] == 6 and w["checks"][">= 600 paired items"] is False
    assert (tmp_path / "world.md").read_text().startswith("# The demo world, measured")
    no_teacher = {k: v for k, v in gap.items() if k != "teacher"}
    (tmp_path / "g.json").write_text(json.dumps(no_teacher))
    with pytest.raises(SystemExit, match="no teacher"):
        wr.world_numbers(no_teacher, perception)
