"""The Streamlit explorer (app/): its token HTML as pure functions, each page through Streamlit's AppTest on a
real trainer log (tiny fixtures, with the trainer's xopd-eval gap hook writing real reports), broken logs,
refused paths, and the ``xopd-app`` launcher."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app import cli
from app.render import (
    SCALES,
    STEPS,
    auto_limit,
    bucket,
    escape_text,
    plain_text,
    render_tokens,
    token_tooltip,
)
from app.runs import find_runs
from app.series import gap_frames, training_kl

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "app" / "explorer.py")


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------


class _Spans(HTMLParser):
    """Collects, from rendered token HTML, the text and title of every ``<span title>`` and the classes of the
    colour runs; checks that tags balance."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[dict] = []
        self.units: list[dict] = []  # one per titled span: {"title", "text", "cls" (the enclosing run's)}
        self.runs: list[str] = []
        self.subs: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "style":
            self.in_style = True
        node = {"tag": tag, "attrs": a, "text": ""}
        is_run = tag == "span" and "title" not in a and (a.get("class") or "").startswith("xo-")
        if is_run and self._in_tokens():
            self.runs.append(a["class"])
        self.stack.append(node)

    def _in_tokens(self) -> bool:
        views = ("xo-tokens", "xo-raw")
        return any(n["tag"] == "div" and n["attrs"].get("class") in views for n in self.stack)

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False
        node = self.stack.pop()
        assert node["tag"] == tag, f"unbalanced HTML: </{tag}> closes <{node['tag']}>"
        if tag == "span" and "title" in node["attrs"] and self._in_tokens():
            self.units.append({"title": node["attrs"]["title"], "text": node["text"],
                               "cls": node["attrs"].get("class") or (self.runs[-1] if self.runs else "")})
        if tag == "sub":
            self.subs.append(node["text"])
        if self.stack:
            self.stack[-1]["text"] += node["text"] if tag != "sub" else ""

    def handle_data(self, data):
        if self.stack and not self.in_style:
            self.stack[-1]["text"] += data


def parse(fragment: str) -> _Spans:
    p = _Spans()
    p.feed(fragment)
    p.close()
    assert not p.stack, "unclosed tags"
    return p


def make_tokens(pieces, advantage, *, topk=True):
    """A tokens object in the rollout-log layout (teacher lp = student lp + advantage)."""
    n = len(pieces)
    student = [-1.0 - 0.1 * i for i in range(n)]
    tok = {
        "id": list(range(100, 100 + n)),
        "piece": list(pieces),
        "student_lp": student,
        "teacher_lp": [s + a for s, a in zip(student, advantage, strict=True)],
        "sampler_lp": student,
        "advantage": list(advantage),
    }
    if topk:
        tok["teacher_topk"] = {"id": [[1, 2]] * n, "piece": [['<b>"alt"&', "\x07bell"]] * n,
                               "lp": [[-0.5, -2.0]] * n}
    return tok


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


# ------------------------------------------------------------------------------------------------------------
# render: pure
# ------------------------------------------------------------------------------------------------------------


def test_buckets_are_signed_and_centred_on_zero():
    adv = SCALES["advantage"]
    assert bucket(adv, 0.0, 1.0) == 0 and bucket(adv, 0.04, 1.0) == 0 and bucket(adv, -0.04, 1.0) == 0
    assert bucket(adv, 1.0, 1.0) == STEPS and bucket(adv, -1.0, 1.0) == -STEPS
    assert bucket(adv, -7.0, 1.0) == -STEPS and bucket(adv, 7.0, 1.0) == STEPS  # saturates
    assert bucket(adv, -0.5, 1.0) == -bucket(adv, 0.5, 1.0) < 0
    assert bucket(adv, None, 1.0) is None and bucket(adv, float("nan"), 1.0) is None
    lp = SCALES["teacher_lp"]  # one-sided: a log-prob of 0 is uncoloured, very unlikely is darkest
    assert bucket(lp, 0.0, 5.0) == 0 and bucket(lp, -5.0, 5.0) == STEPS and bucket(lp, -50.0, 5.0) == STEPS
    assert auto_limit(adv, [0.0, 0.0]) == 1.0 and auto_limit(adv, [None]) == 1.0
    assert auto_limit(adv, [0.03, -0.07, 0.01]) == 0.1  # 98th percentile of |A|, rounded up to 1/2/2.5/5
    assert auto_limit(adv, [-3.2, 0.1]) == 5.0 and auto_limit(adv, [0.2, -0.21]) == 0.25


def test_escaping_of_hostile_token_text():
    pieces = ['<script>alert("x")</script>', " & ", "'q'", "\x00\x1b\x7f\x85", "\ud800", "\n", "tab\t"]
    tok = make_tokens(pieces, [0.0, -2.0, 2.0, 0.0, 0.5, 0.0, -0.3])
    out = render_tokens(tok, limit=2.0)
    assert "<script" not in out.html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in out.html
    assert not {"\x00", "\x1b", "\x7f", "\x85"} & set(out.html)
    assert "\ud800" not in out.html
    out.html.encode("utf-8")  # a lone surrogate would make this (and Streamlit's protobuf) fail
    p = parse(out.html)
    text = "".join(u["text"] for u in p.units)
    # what a reader sees: the same text, with control characters as pictures and the surrogate as U+FFFD
    assert text == '<script>alert("x")</script> & \'q\'␀␛␡\\x85\ufffd\ntab\t'
    # the tooltip survives attribute escaping intact, top-k pieces included
    assert p.units[0]["title"] == token_tooltip(tok, 0)
    assert '“<b>"alt"&”' in p.units[0]["title"] and "“␇bell”" in p.units[0]["title"]
    assert escape_text("a b\n", raw=True) == "a·b↵" and plain_text("\x02x\n") == "␂x↵"


def test_same_colour_runs_share_a_span_and_multibyte_tokens_stay_whole():
    # tokens 0-1 agree, 2-3 are strongly negative, 4 ("" = first bytes of a character) glues to 5 ("é")
    tok = make_tokens(["The", " cat", " sat", " down", "", "é!"], [0.0, 0.001, -2.0, -1.9, -0.6, 0.0])
    out = render_tokens(tok, limit=2.0)
    p = parse(out.html)
    assert [u["text"] for u in p.units] == ["The", " cat", " sat", " down", "é!"]
    assert out.runs == 3 and p.runs == ["xo-d0", "xo-dn5", "xo-dn2"]  # the glued pair takes its extreme value
    assert "#4" in p.units[-1]["title"] and "#5" in p.units[-1]["title"]
    assert "".join(u["text"] for u in p.units) == "".join(tok["piece"])
    # the tooltip: position, id, piece, advantage, both log-probs with probabilities, the top-k sorted
    t = p.units[2]["title"]
    assert t.splitlines()[0] == "#2  id 102  “ sat”" and "advantage -2.000" in t
    assert "teacher lp -3.200" in t and "student lp -1.200 (p 30%)" in t
    assert t.index("61%") < t.index("14%")  # exp(-0.5), exp(-2): likeliest first


def test_raw_view_shows_every_token_with_its_id():
    tok = make_tokens(["Hi", " there", "", "é", "\n", "ok"], [0.1, -0.1, 0.0, 0.0, 0.0, 1.0])
    out = render_tokens(tok, raw=True, limit=1.0)
    p = parse(out.html)
    assert p.subs == [str(i) for i in tok["id"]]
    assert [u["text"] for u in p.units] == ["Hi", "·there", "∅", "é", "↵", "ok"]
    assert 'class="xo-raw"' in out.html and out.runs == 6
    assert 'class="xo-br"' in out.html  # a newline token ends the row


def test_colour_fields_windows_and_missing_values():
    tok = make_tokens(["a", "b", "c", "d"], [0.0, -1.0, 1.0, 0.0])
    tok["student_entropy"] = [0.0, 1.0, None, 3.0]
    out = render_tokens(tok, color_by="student_entropy", limit=3.0)
    assert [u["cls"] for u in parse(out.html).units] == ["xo-o0", "xo-o2", "xo-na", "xo-o5"]
    assert "no value" in out.html and "student entropy 1.000" in token_tooltip(tok, 1)
    win = render_tokens(tok, start=1, stop=3, limit=1.0)
    assert [u["text"] for u in parse(win.html).units] == ["b", "c"]
    with pytest.raises(ValueError, match="teacher_entropy is not in this log"):
        render_tokens(tok, color_by="teacher_entropy")
    tok["advantage"] = [0.0]
    with pytest.raises(ValueError, match="advantage has 1 values for 4 tokens"):
        render_tokens(tok)


def test_a_2000_token_rollout_renders_in_well_under_a_second():
    n = 2000
    tok = make_tokens([f" w{i}" for i in range(n)], [math.sin(i / 7) * 2 for i in range(n)])
    tok["teacher_topk"] = {"id": [list(range(5))] * n, "piece": [[f" alt{j}" for j in range(5)]] * n,
                           "lp": [[-0.5, -1.0, -2.0, -3.0, -4.0]] * n}
    render_tokens(tok)  # warm
    started = time.perf_counter()
    out = render_tokens(tok)
    seconds = time.perf_counter() - started
    assert len(parse(out.html).units) == n
    assert seconds < 1.0, f"{seconds:.2f} s"
    assert len(out.html) / n < 500  # bytes of markup per token, tooltip with 5 alternatives included


# ------------------------------------------------------------------------------------------------------------
# a real run: the tiny recipe, with the trainer's gap-eval hook writing real xopd-eval reports
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import torch

    from xopd.config import load_config
    from xopd.trainer import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("app") / "run"
    cfg = load_config(
        ROOT / "recipes" / "tiny.yaml",
        [f"output_dir={out}", "logging.progress=false", "schedule.steps=4", "schedule.batch_prompts=2",
         "eval.every=2", "checkpoint.every=0", "eval.gap_tasks=[sums]", "eval.gap_limit=3",
         "eval.gap_max_new_tokens=4"],
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def app_test(logdir: Path, monkeypatch, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("XOPD_APP_LOGDIR", str(logdir))
    at = AppTest.from_file(SCRIPT, default_timeout=60)
    if query:
        at.query_params.update({k: str(v) for k, v in query.items()})
    return at


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def token_view(at) -> _Spans:
    """The token view on the page (the st.html that holds coloured tokens)."""
    bodies = [h.body for h in at.html if 'class="xo-tokens"' in h.body or 'class="xo-raw"' in h.body]
    assert bodies, "no token view on the page"
    return parse(bodies[0])


def test_rollouts_page_deep_link_to_a_speech_rollout(run_dir, records, monkeypatch):
    rec = next(r for r in records if r["modality"] == "speech" and r["step"] == 2 and r["sample"] == 1)
    q = {"step": 2, "prompt": rec["prompt_id"], "modality": "speech", "sample": 1}
    at = app_test(run_dir, monkeypatch, q).run()
    no_exceptions(at)
    assert at.subheader[0].value == rec["prompt_id"]
    view = token_view(at)
    # the decoded text is the completion, coloured by advantage on the signed scale, with real tooltips
    assert "".join(u["text"] for u in view.units) == plain_text(rec["completion"])
    limit = auto_limit(SCALES["advantage"], rec["tokens"]["advantage"])
    assert view.runs and all(c.startswith(("xo-d", "xo-na")) for c in view.runs)
    for u in view.units:
        i = int(u["title"].split()[0][1:])
        if rec["tokens"]["piece"][i]:
            want = bucket(SCALES["advantage"], rec["tokens"]["advantage"][i], limit)
            assert u["cls"] == (f"xo-d{want}" if want >= 0 else f"xo-dn{-want}")
    top = rec["tokens"]["teacher_topk"]
    assert f"teacher top-{len(top['piece'][0])}:" in view.units[0]["title"]
    assert f"teacher lp {rec['tokens']['teacher_lp'][0]:.3f}" in view.units[0]["title"]
    # the spoken prompt: an audio player of the run's WAV, beside the words spoken
    audio = at.get("audio")
    assert len(audio) == 1
    assert any(c.value == rec["spoken_text"] for c in at.code)
    assert at.query_params["modality"] == "speech" and at.query_params["sample"] == "1"

    # colour by the teacher's log-prob instead: the one-sided purple scale
    at.selectbox(key="ro_color").set_value("teacher_lp").run()
    assert {c[:4] for c in token_view(at).runs} <= {"xo-p", "xo-n"}
    assert at.query_params["color"] == "teacher_lp"
    # the student's entropy: the one-sided orange scale, and in every tooltip
    at.selectbox(key="ro_color").set_value("student_entropy").run()
    assert {c[:4] for c in token_view(at).runs} <= {"xo-o", "xo-n"} and not at.info
    assert f"student entropy {rec['tokens']['student_entropy'][0]:.3f}" in token_view(at).units[0]["title"]
    # raw mode: one box per token with its id
    at.selectbox(key="ro_color").set_value("advantage")
    at.radio(key="ro_view").set_value("raw").run()
    assert token_view(at).subs == [str(i) for i in rec["tokens"]["id"]]
    no_exceptions(at)


def test_rollouts_page_text_rollout_and_widgets(run_dir, records, monkeypatch):
    at = app_test(run_dir, monkeypatch).run()
    no_exceptions(at)
    steps = sorted({r["step"] for r in records})
    assert at.selectbox(key="ro_step").value == steps[-1]  # the newest step first
    assert at.radio(key="ro_modality").value == "speech"  # the interesting modality first
    at.radio(key="ro_modality").set_value("text").run()
    assert not at.get("audio")
    pid, sample = at.selectbox(key="ro_prompt").value, at.radio(key="ro_sample").value
    rec = next(r for r in records if (r["step"], r["prompt_id"], r["modality"], r["sample"])
               == (steps[-1], pid, "text", sample))
    assert any(c.value == rec["prompt_text"] for c in at.code)
    assert "".join(u["text"] for u in token_view(at).units) == plain_text(rec["completion"])
    # a link to something the log lacks is reported, not silently replaced
    at2 = app_test(run_dir, monkeypatch, {"step": 999}).run()
    assert any("step = 999" in w.value for w in at2.warning)
    no_exceptions(at2)


def test_compare_page_shows_text_and_speech_side_by_side(run_dir, records, monkeypatch):
    rec = next(r for r in records if r["modality"] == "speech" and r["step"] == 1)
    at = app_test(run_dir, monkeypatch).run()
    at.query_params.update({"step": "1", "prompt": rec["prompt_id"]})
    at.switch_page("views/compare.py").run()
    no_exceptions(at)
    views = [parse(h.body) for h in at.html if 'class="xo-tokens"' in h.body]
    assert len(views) == 2
    texts = ["".join(u["text"] for u in v.units) for v in views]
    pair = {m: next(r for r in records if (r["step"], r["prompt_id"], r["modality"], r["sample"])
                    == (1, rec["prompt_id"], m, 0)) for m in ("text", "speech")}
    assert texts == [plain_text(pair["text"]["completion"]), plain_text(pair["speech"]["completion"])]
    assert [m.value for m in at.markdown if m.value.startswith("####")] == [
        "#### :material/article: text · sample 0", "#### :material/hearing: speech · sample 0"]
    assert len(at.get("audio")) == 1
    table = at.dataframe[0].value
    assert list(table["modality"]) == ["text", "speech"]
    # one legend, one scale for both sides
    assert sum('class="xo-legend"' in h.body for h in at.html) == 1


def test_training_page_shows_divergence_per_modality_over_steps(run_dir, records, monkeypatch):
    at = app_test(run_dir, monkeypatch).run()
    at.switch_page("views/training.py").run()
    no_exceptions(at)
    assert at.get("vega_lite_chart")
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    numbers = at.dataframe[0].value  # the "Numbers" table behind the chart
    for modality in ("text", "speech"):
        col = numbers[f"{modality} · training batch"]
        assert col.dropna().to_dict() == pytest.approx({m["step"]: m[f"kl_{modality}"] for m in metrics})
        held = numbers[f"{modality} · held-out eval"].dropna().to_dict()
        assert held == pytest.approx({e["step"]: e[f"kl_{modality}"] for e in evals})
        assert set(numbers[f"{modality} · logged rollouts"].dropna().index) == {r["step"] for r in records}
    # the logged rollouts' token-weighted KL is the trainer's per-step number (it logs every rollout here)
    assert numbers["speech · logged rollouts"].dropna().to_dict() == pytest.approx(
        numbers["speech · training batch"].dropna().to_dict(), abs=1e-4)
    # pick a step: a link to its rollouts, and its aggregates
    at.selectbox(key="tr_step").set_value(1).run()
    no_exceptions(at)
    links = at.get("page_link")
    assert any("step 1" in link.proto.label and "step=1" in link.proto.query_string for link in links)
    by_mod = at.dataframe[1].value
    assert list(by_mod["modality"]) == ["speech", "text"] and set(by_mod["rollouts"]) == {
        sum(1 for r in records if r["step"] == 1 and r["modality"] == m) for m in ("speech", "text")}


def test_gap_page_charts_the_trainer_reports(run_dir, monkeypatch):
    reports = sorted((run_dir / "evals").glob("step-*/report.json"))
    assert [p.parent.name for p in reports] == ["step-000000", "step-000002", "step-000004"]
    at = app_test(run_dir, monkeypatch).run()
    at.switch_page("views/gap.py").run()
    no_exceptions(at)
    assert len(at.get("vega_lite_chart")) >= 2  # accuracy by mode, gap with its CI
    assert at.selectbox(key="gap_report").options == ["step 0", "step 2", "step 4"]
    assert any("| sums |" in m.value for m in at.markdown)
    assert at.selectbox(key="gap_task").options == ["overall (macro mean over tasks)", "sums"]
    acc, gap = gap_frames([(int(p.parent.name[5:]), p, json.loads(p.read_text())) for p in reports], run_dir)
    assert sorted(set(acc["mode"])) == ["speech:clean", "text"] and list(gap["step"].unique()) == [0, 2, 4]


def test_gap_page_charts_forgetting_reports_over_steps(tmp_path, monkeypatch):
    """Forgetting reports (evalsuite's own builder and writer) at two steps: deltas with CIs and ASR WER."""
    import numpy as np

    from evalsuite.reports import REPORT_VERSION, write_json
    from evalsuite.reports.forgetting import forgetting_report, paired_wer_delta
    from evalsuite.run import Sample

    def samples(correct: list[bool]) -> list[Sample]:
        return [Sample(id=f"t/{i}", task="t", mode=m, variant="" if m == "text" else "clean", prompt="q",
                       answer="1", correct=c) for m in ("text", "speech") for i, c in enumerate(correct)]

    base = samples([True] * 6 + [False] * 6)
    for step, model_right in ((2, 5), (4, 3)):
        model = samples([True] * model_right + [False] * (12 - model_right))
        asr = paired_wer_delta(np.full(12, 5.0), np.full(12, 1.0), np.full(12, 2.0), n_boot=200)
        rep = forgetting_report(base, model, n_boot=200, asr=asr)
        write_json(tmp_path / "evals" / f"step-{step:06d}" / "report.json", rep | {"version": REPORT_VERSION})
    at = app_test(tmp_path, monkeypatch).run()
    at.switch_page("views/gap.py").run()
    no_exceptions(at)
    assert any(s.value.startswith("Forgetting") for s in at.subheader)
    assert len(at.get("vega_lite_chart")) == 2  # deltas, WER
    assert any("| t | speech:clean |" in m.value for m in at.markdown)


def test_pages_never_write_into_the_logdir(run_dir, records, monkeypatch):
    before = tree_state(run_dir)
    at = app_test(run_dir, monkeypatch).run()
    for page in ("views/compare.py", "views/training.py", "views/gap.py", "views/rollouts.py"):
        at.switch_page(page).run()
        no_exceptions(at)
    assert tree_state(run_dir) == before


# ------------------------------------------------------------------------------------------------------------
# broken logs and refused paths
# ------------------------------------------------------------------------------------------------------------


def _copy_run(run_dir: Path, dest: Path, lines: list[str], *, tail: str = "") -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(run_dir / "audio", dest / "audio")
    for name in ("metrics.jsonl", "eval.jsonl", "config.yaml"):
        shutil.copy(run_dir / name, dest / name)
    (dest / "rollouts.jsonl").write_text("".join(x + "\n" for x in lines) + tail)
    return dest


def test_malformed_and_truncated_logs_get_messages_not_tracebacks(run_dir, records, tmp_path, monkeypatch):
    good = [r for r in records if r["step"] == 1]
    bad_arrays = dict(good[1], tokens=dict(good[1]["tokens"], advantage=good[1]["tokens"]["advantage"][:2]))
    wrong_schema = dict(good[2], schema=99)
    lines = [json.dumps(good[0]), "this is not JSON {", json.dumps(wrong_schema), json.dumps(bad_arrays)]
    d = _copy_run(run_dir, tmp_path / "bad", lines, tail=json.dumps(good[3])[:200])  # a write cut short
    with (d / "metrics.jsonl").open("a") as fh:
        fh.write("{broken\n")
    (d / "evals" / "step-000001").mkdir(parents=True)
    (d / "evals" / "step-000001" / "report.json").write_text("{not a report")

    q = {"step": 1, "prompt": bad_arrays["prompt_id"], "modality": bad_arrays["modality"],
         "sample": bad_arrays["sample"]}
    at = app_test(d, monkeypatch, q).run()
    no_exceptions(at)
    warning = at.warning[0].value
    assert "line 2: not JSON" in warning and "schema 99" in warning and "line 5: truncated" in warning
    assert any("tokens.advantage has 2 values" in e.value for e in at.error)
    at.query_params.update({"prompt": good[0]["prompt_id"], "modality": good[0]["modality"], "sample": "0"})
    at.run()
    no_exceptions(at)
    assert token_view(at).units  # the good rollout still shows
    at.switch_page("views/training.py").run()
    no_exceptions(at)
    assert any("metrics.jsonl" in w.value and "not JSON" in w.value for w in at.warning)
    at.switch_page("views/gap.py").run()
    no_exceptions(at)
    assert any("step-000001/report.json" in w.value for w in at.warning)
    assert any("No `xopd-eval` reports" in i.value for i in at.info)
    at.switch_page("views/compare.py").run()
    no_exceptions(at)


@pytest.mark.parametrize("content", ["", None], ids=["empty", "missing"])
def test_empty_or_missing_rollout_log(run_dir, tmp_path, monkeypatch, content):
    d = _copy_run(run_dir, tmp_path / "r", [])
    if content is None:
        (d / "rollouts.jsonl").unlink()
    at = app_test(d, monkeypatch).run()
    no_exceptions(at)
    if content is None:
        assert any("No `rollouts.jsonl`" in i.value for i in at.info)
    else:
        assert any("empty (no rollouts logged yet)" in w.value for w in at.warning)
    at.switch_page("views/training.py").run()  # the curves still come from metrics.jsonl
    no_exceptions(at)
    assert at.get("vega_lite_chart")


def test_audio_paths_that_escape_the_logdir_are_refused(run_dir, records, tmp_path, monkeypatch):
    speech = [r for r in records if r["modality"] == "speech" and r["step"] == 1][:2]
    outside = tmp_path / "outside.wav"
    shutil.copy(run_dir / speech[0]["audio_path"], outside)
    d = tmp_path / "run"
    lines = [json.dumps(dict(speech[0], audio_path="../outside.wav")),
             json.dumps(dict(speech[1], audio_path="audio/evil.wav"))]
    _copy_run(run_dir, d, lines)
    (d / "audio" / "evil.wav").symlink_to(outside)  # a symlink inside that leads out
    for rec in speech:
        q = {"step": 1, "prompt": rec["prompt_id"], "modality": "speech", "sample": rec["sample"]}
        at = app_test(d, monkeypatch, q).run()
        no_exceptions(at)
        assert not at.get("audio")
        assert any("Audio refused" in e.value and "leads outside" in e.value for e in at.error)


def test_a_log_without_entropies_says_so(run_dir, records, tmp_path, monkeypatch):
    old = [dict(r, tokens={k: v for k, v in r["tokens"].items() if not k.endswith("_entropy")})
           for r in records if r["step"] == 1]  # what a trainer from before the entropy fields wrote
    d = _copy_run(run_dir, tmp_path / "old", [json.dumps(r) for r in old])
    at = app_test(d, monkeypatch, {"color": "teacher_entropy"}).run()
    no_exceptions(at)
    assert any("teacher entropy** is not in this log" in i.value for i in at.info)
    assert all(c.startswith(("xo-d", "xo-na")) for c in token_view(at).runs)  # back to the advantage


def test_logdir_missing_and_multi_run_logdirs(run_dir, tmp_path, monkeypatch):
    at = app_test(tmp_path / "nope", monkeypatch).run()
    no_exceptions(at)
    assert "does not exist" in at.error[0].value
    # a folder of runs: a run picker, and nothing outside the folder
    sweep = tmp_path / "sweep"
    for name in ("b", "a"):
        _copy_run(run_dir, sweep / name, [])
    (sweep / "out").symlink_to(run_dir)  # leads outside the logdir: not offered
    assert find_runs(sweep) == ["a", "b"] and find_runs(run_dir) == ["."]
    at = app_test(sweep, monkeypatch, {"run": "b"}).run()
    no_exceptions(at)
    picker = at.selectbox(key="xo_run_pick")
    assert picker.options == ["a", "b"] and picker.value == "b"


def test_training_series_from_the_index_alone(run_dir):
    from analysis.logs import RunDir

    log = RunDir(run_dir).rollouts()
    df = training_kl([], [], log.entries)
    assert set(df["modality"]) == {"text", "speech"} and set(df["source"]) == {"logged rollouts"}


# ------------------------------------------------------------------------------------------------------------
# the launcher
# ------------------------------------------------------------------------------------------------------------


def test_cli_refuses_a_missing_logdir_and_binds_localhost(tmp_path, capsys):
    assert cli.main(["--logdir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["--logdir", str(tmp_path / "file")]) == 2
    assert cli.main(["--logdir", str(tmp_path), "--port", "7777", "--print-command"]) == 0
    cmd = capsys.readouterr().out.split()
    for flag, value in (("--server.address", "127.0.0.1"), ("--server.port", "7777"),
                        ("--server.headless", "true"), ("--browser.gatherUsageStats", "false")):
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[cmd.index("--") + 1 :] == ["--logdir", str(tmp_path.resolve())]
    assert os.path.basename(cmd[cmd.index("run") + 1]) == "explorer.py"
