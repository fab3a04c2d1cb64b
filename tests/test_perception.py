"""`xopd-eval perception`: the gap split into form, hearing and reasoning over speech.

The report's arithmetic on hand-made samples (the three terms add up to the gap, errored items are left out of
every way), then the command end to end on the tiny real Qwen2-Audio fixture with real TTS and the zoo's real
Whisper tiny.en: the typed "heard" prompt is the model's own transcript, and a rerun is served from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalsuite.cli import main
from evalsuite.perception import TRANSCRIPT, format_perception_markdown, perception_report
from evalsuite.run import SPEECH, TEXT, Sample

INSTRUCTION = "Answer with the number only."


def _samples(way: str, correct: list[int], errored: tuple[int, ...] = ()) -> list[Sample]:
    mode = SPEECH if way == "speech" else TEXT
    out = []
    for i, c in enumerate(correct):
        s = Sample(f"t/{i}", "t", mode, way if way in ("words", "heard") else "", f"what is {i} plus one", "1",
                   response="1", correct=bool(c))
        if i in errored:
            s.error = "audio: broken"
        out.append(s)
    return out


def test_terms_add_up_to_the_gap_and_errored_items_are_left_out():
    result = {
        "samples": {
            "written": _samples("written", [1, 1, 1, 0, 1]),
            "words": _samples("words", [1, 1, 0, 0, 1]),
            "heard": _samples("heard", [1, 0, 0, 0, 1]),
            "speech": _samples("speech", [0, 0, 0, 0, 1], errored=(4,)),  # item 4: in no number at all
        },
        "transcripts": [Sample(f"t/{i}", "t", TRANSCRIPT, "", f"what is {i} plus one", "1", response=r)
                        for i, r in enumerate(["what is zero plus one", "what is one plus", "what is two plus one",
                                               None, "what is four plus one"])],
        "asr": {("t", f"t/{i}"): f"what is {i} plus one" for i in range(5)},
    }
    report = perception_report(result, n_boot=500)
    t = report["tasks"]["t"]
    assert (t["n"], t["n_used"], t["excluded"]) == (5, 4, 1)
    assert t["acc"] == {"written": 0.75, "words": 0.5, "heard": 0.25, "speech": 0.0}
    assert [t[k]["diff"] for k in ("form", "hearing", "reasoning", "gap")] == [0.25, 0.25, 0.25, 0.75]
    assert t["form"]["diff"] + t["hearing"]["diff"] + t["reasoning"]["diff"] == pytest.approx(t["gap"]["diff"])
    # references "what is i plus one" (the spoken prompt), 5 words each over the 4 usable items (0-3), numbers
    # normalised to words: item 0 "zero" for "0" is right; item 1 drops "one": 1 deletion; item 3 has no
    # transcript: 5 deletions
    assert t["model_wer"] == pytest.approx((0 + 1 + 0 + 5) / 20)
    assert t["asr_wer"] == 0.0
    o = report["overall"]
    assert o["gap"]["diff"] == pytest.approx(0.75) and o["wer_minus_asr"]["diff"] == pytest.approx(6 / 20)
    assert o["gap"]["ci"][0] <= 0.75 <= o["gap"]["ci"][1]
    table = format_perception_markdown(report)
    assert "| t | 4 | 75.0 | 50.0 | 25.0 | 0.0 | +75.0" in table


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[int, Path, list[str]]:
    out = tmp_path_factory.mktemp("perception")
    argv = ["perception", "--model", "fixture:qwen2_audio", "--tasks", "sums", "--limit", "3", "--backend", "hf",
            "--variants", "flite-slt", "--max-new-tokens", "6", "--n-boot", "200", "--output", str(out)]
    return main(argv), out, argv


def test_end_to_end_on_a_real_tiny_speech_llm(run):
    rc, out, _ = run
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    t = report["tasks"]["sums"]
    assert t["n_used"] == 3 and set(t["acc"]) == {"written", "words", "heard", "speech"}
    assert report["config"]["variant"] == "flite-slt" and report["config"]["asr"] == "whisper-tiny.en"
    assert 0.0 <= report["overall"]["asr_wer"] < 0.5  # Whisper hears flite's clear digits-as-words
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    by_way: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_way.setdefault(r["way"], {})[r["id"]] = r
    assert sorted(by_way) == ["asr", "heard", "speech", "transcript", "words", "written"]
    assert all(len(v) == 3 for v in by_way.values())
    for i, heard in by_way["heard"].items():
        # the typed prompt of "heard" is the model's own transcript of that clip, then the instruction
        assert heard["prompt"] == f"{by_way['transcript'][i]['response'].strip()}\n{INSTRUCTION}"
        # and "words" is what was spoken: digit-free
        assert not any(ch.isdigit() for ch in by_way["words"][i]["prompt"].split("\n")[0])


def test_rerun_is_served_from_the_cache(run):
    _, out, argv = run
    before = (out / "cache.jsonl").read_text()
    first = json.loads((out / "report.json").read_text())
    assert main(argv) == 0
    assert (out / "cache.jsonl").read_text() == before  # nothing generated again
    again = json.loads((out / "report.json").read_text())
    assert again["tasks"] == first["tasks"]


def test_a_text_llm_is_refused_in_one_line(tmp_path, capsys):
    rc = main(["perception", "--model", "fixture:teacher", "--tasks", "sums", "--limit", "2", "--backend", "hf",
               "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "not a speech LLM" in err[-1] and "Traceback" not in "\n".join(err)
