"""Tests for xopd.rollout_schema: the one rollout-log schema, its writer and its header parser.

Records written by the writer read back field for field (through the header parser and through
``analysis.logs``); a line laid out otherwise (``"tokens"`` first, keys sorted, compact separators, a member
after ``"tokens"``) still reads right; the trainer side and the reader take their constants from the schema
module (no copies); and the module imports nothing heavy (no torch).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import analysis.logs as logs
import xopd.rolloutlog as rolloutlog
from analysis.logs import RolloutLog, RunDir
from xopd import rollout_schema as schema
from xopd.rollout_schema import parse_header, rollout_line
from xopd.rolloutlog import StepLog, rollout_record

ROOT = Path(__file__).resolve().parents[1]


class CharTokenizer:
    """A tokenizer stub: token id ``i`` is the i-th character of ``VOCAB``."""

    VOCAB = 'ab c.,"{}:\\\n7é'

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.VOCAB[i] for i in ids)


def make_record(step, modality, sample, ids, *, entropy=True, topk=True, prompt_text="What is 3 + 4?"):
    t = len(ids)
    s_lp = [-0.1 * (i + 1) for i in range(t)]
    q_lp = [-0.2 * (i + 1) for i in range(t)]
    return rollout_record(
        step=step,
        kind="xopd",
        prompt_id=f"sums/{step:05d}",
        modality=modality,
        sample=sample,
        prompt_text=prompt_text,
        spoken_text="what is three plus four" if modality == "speech" else None,
        audio_path="audio/0123456789abcdef0123.wav" if modality == "speech" else None,
        variant="clean" if modality == "speech" else None,
        token_ids=ids,
        student_lp=s_lp,
        teacher_lp=q_lp,
        advantage=[q - s for s, q in zip(s_lp, q_lp, strict=True)],
        sampler_lp=s_lp if sample % 2 == 0 else None,
        finished=sample % 2 == 0,
        tokenizer=CharTokenizer(),
        topk_ids=[[0, 1]] * t if topk else None,
        topk_lp=[[-0.5, -1.25]] * t if topk else None,
        student_entropy=[0.5] * t if entropy else None,
        teacher_entropy=[0.25] * t if entropy else None,
    )


# quotes, braces, backslashes, newlines, a non-ASCII character and the text of the cut itself inside strings
RECORDS = [
    make_record(1, "text", 0, [0, 1, 2, 3, 4]),
    make_record(1, "speech", 1, [6, 7, 8, 9, 8, 8, 5], entropy=False),
    make_record(2, "text", 0, [10, 11, 12, 13], topk=False, prompt_text='say , "tokens": {}} please'),
    make_record(2, "speech", 0, [], topk=False),
]


def header(rec):
    return {k: v for k, v in rec.items() if k != "tokens"}


def write(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------------
# write, then read
# ------------------------------------------------------------------------------------------------------------


def test_records_are_in_the_schema_key_order():
    for rec in RECORDS:
        assert tuple(rec) == schema.RECORD_KEYS and rec["schema"] == schema.SCHEMA_VERSION
        assert set(rec["tokens"]) <= set(schema.TOKEN_FIELDS)


def test_writer_puts_tokens_last_and_the_header_parser_reads_it_fast():
    for rec in RECORDS:
        tokens_first = {"tokens": rec["tokens"]} | header(rec)
        for given in (rec, tokens_first):
            line = rollout_line(given)
            assert line.endswith("}\n") and line.count("\n") == 1  # one line, newline included
            assert list(json.loads(line)) == list(schema.RECORD_KEYS)  # "tokens" last, header order kept
            assert json.loads(line) == rec
            raw = line.rstrip("\n").encode()
            assert schema._fast_header(raw) == header(rec)  # read from the bytes before "tokens" only
            assert parse_header(raw) == header(rec) == parse_header(line)


def test_round_trip_through_the_step_log_and_the_reader(tmp_path):
    run = tmp_path / "run"
    log = StepLog(run / schema.ROLLOUT_LOG)
    assert log.encode is rollout_line  # the rollout log is written by the schema's writer
    log.append(RECORDS[:2])
    log.append(RECORDS[2:])
    lines = (run / "rollouts.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [rollout_line(r).rstrip("\n") for r in RECORDS]
    assert [parse_header(x.encode()) for x in lines] == [header(r) for r in RECORDS]

    rlog = RunDir(run).rollouts()
    assert rlog is not None and rlog.problems == [] and len(rlog) == len(RECORDS)
    for entry, rec in zip(rlog.entries, RECORDS, strict=True):
        got = (entry.step, entry.kind, entry.prompt_id, entry.modality, entry.sample, entry.num_tokens)
        keys = ("step", "kind", "prompt_id", "modality", "sample", "num_tokens")
        assert got == tuple(rec[k] for k in keys)
        assert (entry.reverse_kl, entry.finished) == (rec["reverse_kl"], rec["finished"])
    assert list(rlog.iter_records()) == RECORDS  # every field, the token arrays included


def test_metrics_logs_keep_plain_json_lines(tmp_path):
    log = StepLog(tmp_path / "metrics.jsonl")
    assert log.encode is rolloutlog.json_line
    log.append([{"step": 1, "loss": 0.5}])  # not a rollout record: no schema, no tokens
    assert log.records() == [{"step": 1, "loss": 0.5}]


def test_truncation_rewrite_keeps_the_writers_layout(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    # a file in another layout (keys sorted: "tokens" before "variant"), then a resume drops step 2
    write(path, [json.dumps(r, sort_keys=True) + "\n" for r in RECORDS])
    StepLog(path).truncate_to(1, size=None)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == RECORDS[:2]
    assert all(list(json.loads(x)) == list(schema.RECORD_KEYS) for x in lines)  # schema order, "tokens" last
    assert [schema._fast_header(x.encode()) for x in lines] == [header(r) for r in RECORDS[:2]]


def test_nan_log_probs_are_written_and_read(tmp_path):
    rec = make_record(3, "text", 0, [0, 1])
    rec["tokens"]["student_lp"][1] = float("nan")
    rec["reverse_kl"] = float("nan")
    line = rollout_line(rec)
    head = schema._fast_header(line.rstrip("\n").encode())
    assert head is not None and math.isnan(head["reverse_kl"])
    rlog = RolloutLog.open(write(tmp_path / "rollouts.jsonl", [line]))
    assert rlog.problems == [] and math.isnan(rlog.entries[0].reverse_kl)
    assert math.isnan(rlog.read(rlog.entries[0])["tokens"]["student_lp"][1])


def test_writer_refuses_what_is_not_a_record():
    rec = RECORDS[0]
    with pytest.raises(ValueError, match="lacks 'tokens'"):
        rollout_line(header(rec))
    with pytest.raises(ValueError, match="lacks 'step', 'num_tokens'"):
        rollout_line({k: v for k, v in rec.items() if k not in ("step", "num_tokens")})
    with pytest.raises(ValueError, match="schema 2"):
        rollout_line(rec | {"schema": 2})
    with pytest.raises(ValueError, match="mapping"):
        rollout_line([rec])


# ------------------------------------------------------------------------------------------------------------
# other layouts: the reader does not depend on key order
# ------------------------------------------------------------------------------------------------------------


def _other_layouts(rec):
    h = header(rec)
    return {
        "sorted keys": json.dumps(rec, sort_keys=True),  # "tokens" before "variant"
        "tokens first": json.dumps({"tokens": rec["tokens"]} | h),
        "tokens in the middle": json.dumps(dict(list(h.items())[:5]) | {"tokens": rec["tokens"]} | h),
        "compact": json.dumps(rec, separators=(",", ":")),
        "pretty-printed": json.dumps(rec, indent=1).replace("\n", " "),
        "a member after tokens": json.dumps(rec | {"note": "late"}),
        "a list member after tokens": json.dumps(rec | {"note": [1, {"a": 2}]}),
        "a nested tokens key first": json.dumps({"meta": {"x": 1, "tokens": {"y": 2}}} | rec),
        "not ascii-escaped": json.dumps(rec, ensure_ascii=False),
    }


@pytest.mark.parametrize("layout", list(_other_layouts(RECORDS[0])))
def test_header_parser_reads_any_key_order(layout):
    for rec in RECORDS:
        line = _other_layouts(rec)[layout]
        want = header(json.loads(line))
        assert parse_header(line.encode()) == want
        assert {k: want[k] for k in schema.HEADER_FIELDS} == header(rec)


def test_the_fast_path_declines_lines_it_cannot_be_sure_of():
    rec = RECORDS[0]
    layouts = _other_layouts(rec)
    for name in ("sorted keys", "tokens first", "tokens in the middle", "compact", "a member after tokens"):
        assert schema._fast_header(layouts[name].encode()) is None, name
    # a line missing a header field, or with a nested "tokens" key before the real one: parsed in full
    assert schema._fast_header(json.dumps({k: v for k, v in rec.items() if k != "variant"}).encode()) is None
    assert schema._fast_header(layouts["a nested tokens key first"].encode()) is None


def test_rollout_log_indexes_and_reads_lines_in_any_layout(tmp_path):
    lines, want = [], []
    for rec in RECORDS:
        for text in _other_layouts(rec).values():
            lines.append(text + "\n")
            want.append(rec)
    rlog = RolloutLog.open(write(tmp_path / "rollouts.jsonl", lines))
    assert rlog.problems == [] and len(rlog) == len(lines)
    assert [(e.step, e.modality, e.sample, e.num_tokens) for e in rlog.entries] == [
        (r["step"], r["modality"], r["sample"], r["num_tokens"]) for r in want
    ]
    for got, rec in zip(rlog.iter_records(), want, strict=True):
        assert {k: got[k] for k in schema.RECORD_KEYS} == rec


def test_sorted_key_line_with_a_wrong_late_field_is_reported(tmp_path):
    # "variant" follows "tokens" in a sorted-key line: the header must see it, and "step" too
    bad = json.dumps(RECORDS[0] | {"step": "one"}, sort_keys=True)
    rlog = RolloutLog.open(write(tmp_path / "rollouts.jsonl", [bad + "\n"]))
    assert rlog.entries == []
    assert rlog.problems == ["rollouts.jsonl line 1: field 'step' has a bad value 'one'"]


# ------------------------------------------------------------------------------------------------------------
# one source of the schema; no heavy imports
# ------------------------------------------------------------------------------------------------------------


def test_the_schema_module_is_the_single_source():
    for name in ("SCHEMA_VERSION", "REQUIRED_ARRAYS", "OPTIONAL_ARRAYS", "REQUIRED_KEYS", "parse_header"):
        assert getattr(logs, name) is getattr(schema, name), name
    for name in ("SCHEMA_VERSION", "rollout_line"):
        assert getattr(rolloutlog, name) is getattr(schema, name), name
    # no own copies left in the two modules' sources
    for path in (ROOT / "analysis" / "logs.py", ROOT / "xopd" / "rolloutlog.py"):
        src = path.read_text(encoding="utf-8")
        copies = ("SCHEMA_VERSION =", "REQUIRED_ARRAYS =", "OPTIONAL_ARRAYS =", "_DIGITS =", ', "tokens": ')
        for copy in copies:
            assert copy not in src, f"{path.name} has its own {copy!r}"
    # every required header key has a value check in the reader; every array it checks is a schema field
    assert set(logs._HEADER_CHECKS) == set(schema.REQUIRED_KEYS) - {"schema", "tokens"}
    assert set(schema.REQUIRED_KEYS) <= set(schema.RECORD_KEYS) and schema.RECORD_KEYS[-1] == "tokens"
    assert set(schema.REQUIRED_ARRAYS + schema.OPTIONAL_ARRAYS + (schema.TOPK,)) == set(schema.TOKEN_FIELDS)
    assert all(f"``.{k}``" in schema.__doc__ for k in schema.TOKEN_FIELDS)  # the table is generated


def test_the_schema_module_imports_no_torch():
    code = (
        "import sys; before = set(sys.modules); import xopd.rollout_schema; "
        "new = sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names "
        "and m.split('.')[0] != 'xopd'); print('torch' in sys.modules, new)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False []"
