"""The rollout-log schema, its writer and its header parser: the one place both sides of the log agree on.

``<output_dir>/rollouts.jsonl`` holds every sampled token as both models saw it: one JSON object per line, one
line per rollout. The trainer builds the records (:func:`xopd.rolloutlog.rollout_record`, which needs a
tokenizer) and writes them through :func:`rollout_line`; the reader (:mod:`analysis.logs`, the explorer)
indexes them through :func:`parse_header`. This module is torch-free and imports only the standard library,
so both the trainer side and the analysis side depend on it without pulling in either.

Layout contract (enforced by :func:`rollout_line`, the only writer): the header fields in schema order, then
``"tokens"`` *last*, with the standard separators ``", "`` / ``": "``. A reader can then index a line by
parsing only the bytes before ``, "tokens": `` (:func:`parse_header`), without materialising the per-token
arrays that make up almost all of the line. The reader does not *rely* on that contract: a line laid out
otherwise (``"tokens"`` first, keys sorted, compact separators) is parsed in full instead, slower but right.

Log-probs are natural logs rounded to :data:`LP_DIGITS` decimals. Where the positions come from:
``student_lp[t]`` and ``teacher_lp[t]`` are read from the logits at position ``t - 1`` of each model's own
input (prompt + the same completion ids), i.e. they are the probabilities of *predicting* token ``t``.

The fields (generated from :data:`HEADER_FIELDS` and :data:`TOKEN_FIELDS`):
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1
ROLLOUT_LOG = "rollouts.jsonl"  # the file name inside a run (or ``xopd-eval divergence``) output directory
LP_DIGITS = 5  # decimals log-probs, advantages and entropies are rounded to

TOKENS = "tokens"  # the key of the per-token object; the writer puts it last

# top-level fields other than ``tokens``, in the order the writer emits them, with their meaning
HEADER_FIELDS: dict[str, str] = {
    "schema": f"{SCHEMA_VERSION} (the schema version)",
    "step": "optimizer step (1-based) whose batch this rollout belongs to (0: xopd-eval divergence scores)",
    "kind": "loss.kind: xopd | gkd (student samples) | sft (reference answers) | offline_kd (teacher "
    "samples); the scored sequence is what that kind trains on (score for xopd-eval divergence)",
    "prompt_id": "pair id, e.g. sums/00042",
    "modality": "text (in-modal: the student read the question) | speech (cross-modal: it heard it)",
    "sample": "index of this rollout among the prompt's samples in this modality (0 .. n-1)",
    "prompt_text": "the text version's user message (what the teacher always reads)",
    "spoken_text": "the words spoken in the speech version (speech rows; null for a recording / text rows)",
    "audio_path": "the WAV the student heard, copied into the output directory: a path relative to it, "
    "audio/<content hash>.wav (speech rows; null for text rows)",
    "variant": "TTS variant of that audio (speech rows), else null",
    "completion": "the decoded completion (special tokens kept, e.g. a final <|im_end|>)",
    "finished": "true when the completion ended with an EOS id (false: cut by max_new_tokens)",
    "num_tokens": "T, the number of completion tokens (EOS included)",
    "reverse_kl": "mean over the T tokens of student_lp - teacher_lp (sampled-token reverse-KL estimate)",
}
RECORD_KEYS: tuple[str, ...] = (*HEADER_FIELDS, TOKENS)  # every top-level key, in the writer's order

# what a line must have to be indexed and read (the other header fields are written but not required)
REQUIRED_KEYS: tuple[str, ...] = (
    "schema",
    "step",
    "kind",
    "prompt_id",
    "modality",
    "sample",
    "num_tokens",
    "reverse_kl",
    "finished",
    TOKENS,
)

# per-token fields: ``tokens.<name>``, each an array of length T aligned by position (teacher_topk: an object)
TOKEN_FIELDS: dict[str, str] = {
    "id": "token id (the same id the student sampled and the teacher scored)",
    "piece": "text of the token; the pieces concatenate to completion. A multi-byte character split across "
    'tokens goes whole to the token that completes it (the others get "")',
    "student_lp": "log pi_student(token | student prompt, earlier tokens), over the shared vocabulary",
    "teacher_lp": "log pi_teacher(token | teacher's own text prompt, earlier tokens)",
    "sampler_lp": "log-prob under the distribution it was sampled from (temperature / top-p / banned ids); "
    "null for sequences the student did not sample (sft, offline_kd)",
    "advantage": "the per-token signal of the loss. xopd: teacher_lp - student_lp (PowerOPD's bounded reward "
    "with loss.reward: power); other kinds: teacher_lp - student_lp",
    "student_entropy": "entropy (nats) of the student's next-token distribution over the shared vocabulary "
    "at that position (optional: absent in older logs)",
    "teacher_entropy": "the same for the teacher (optional: absent in older logs)",
    "teacher_topk": 'the teacher\'s k likeliest tokens at each position: {"id": [[k ids] x T], "piece": '
    '[[k pieces] x T], "lp": [[k log-probs] x T]} (k = logging.topk; absent when 0)',
}
REQUIRED_ARRAYS: tuple[str, ...] = ("id", "piece", "student_lp", "teacher_lp", "advantage")
OPTIONAL_ARRAYS: tuple[str, ...] = ("sampler_lp", "student_entropy", "teacher_entropy")  # may be absent/null
TOPK = "teacher_topk"
TOPK_PARTS: tuple[str, ...] = ("id", "piece", "lp")

_SEPARATORS = (", ", ": ")
_TOKENS_CUT = f'{_SEPARATORS[0]}"{TOKENS}"{_SEPARATORS[1]}'.encode()  # b', "tokens": '


def _field_table() -> str:
    width = max(len(k) for k in (*HEADER_FIELDS, *TOKEN_FIELDS)) + 6
    rows = [(f"``{k}``", v) for k, v in HEADER_FIELDS.items()]
    rows.append((f"``{TOKENS}``", "per-token fields (last in every line the writer emits):"))
    rows += [(f"``.{k}``", v) for k, v in TOKEN_FIELDS.items()]
    fill = textwrap.TextWrapper(width=110, subsequent_indent=" " * width)
    return "\n" + "\n".join(fill.fill(name.ljust(width) + text) for name, text in rows) + "\n"


if __doc__ is not None:  # python -OO strips docstrings
    __doc__ += _field_table()


# ------------------------------------------------------------------------------------------------------------
# the writer
# ------------------------------------------------------------------------------------------------------------


def rollout_line(record: Mapping[str, Any]) -> str:
    """The JSON line of one rollout record, newline included: its header fields in :data:`HEADER_FIELDS` order
    (then any others in the record's order), ``"tokens"`` last -- the layout :func:`parse_header` reads fast,
    whatever the order of ``record``. ValueError when ``record`` is not a schema-:data:`SCHEMA_VERSION` record
    with every :data:`REQUIRED_KEYS` key.

    NaN / inf log-probs are written as ``NaN`` / ``Infinity`` (Python's ``json`` reads them back): a diverged
    step is logged as it happened rather than refused.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"a rollout record is a mapping, not {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"rollout record lacks {', '.join(map(repr, missing))}")
    if record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"rollout record has schema {record['schema']!r}, not {SCHEMA_VERSION}")
    ordered = {k: record[k] for k in HEADER_FIELDS if k in record}
    ordered.update((k, v) for k, v in record.items() if k not in ordered and k != TOKENS)
    ordered[TOKENS] = record[TOKENS]
    return json.dumps(ordered, ensure_ascii=False, allow_nan=True, separators=_SEPARATORS) + "\n"


# ------------------------------------------------------------------------------------------------------------
# the header parser
# ------------------------------------------------------------------------------------------------------------


def _fast_header(raw: bytes) -> dict[str, Any] | None:
    """The header of a line in the writer's layout, parsed from the bytes before ``, "tokens": ``; None when
    the line may not be in that layout (the caller then parses it in full).

    Why the fast path is exact when it answers: ``, "tokens": `` cannot occur inside a JSON string (every
    quote there is escaped), and if it is a key of a nested object the prefix plus ``}`` is not valid JSON; so
    a prefix that parses to an object holds exactly the top-level members before ``tokens``. Members *after*
    ``tokens`` are ruled out for every field the schema defines by requiring all of :data:`HEADER_FIELDS` in
    the prefix (a record missing one, or with keys sorted, is parsed in full), and for any member whose
    value is not an object by requiring the line to end in ``}}`` (``tokens`` is an object).
    """
    end = len(raw)
    while end and raw[end - 1] in b" \t\r\n":  # (no rstrip: it would copy the whole line)
        end -= 1
    if raw[max(0, end - 2) : end] != b"}}":
        return None
    cut = raw.find(_TOKENS_CUT)
    if cut <= 0:
        return None
    try:
        head = json.loads(raw[:cut] + b"}")
    except ValueError:
        return None  # the key belongs to a nested object, or the prefix is not the writer's JSON
    if not isinstance(head, dict) or any(k not in head for k in HEADER_FIELDS):
        return None
    return head


def parse_header(raw: bytes | str) -> Any:
    """The rollout record on line ``raw`` without its ``"tokens"``, reading as little of the line as it can.

    A line in the writer's layout (:func:`rollout_line`) is parsed only up to ``"tokens"``; any other line is
    parsed in full and its ``tokens`` dropped, so the result does not depend on key order. Every field of
    :data:`HEADER_FIELDS` comes out exactly either way; the one thing the fast path can miss is a member the
    schema does not define, placed after ``"tokens"``, whose value is an object. Returns whatever the line
    holds (a non-object too, for the caller to report); ValueError when it is not JSON.
    """
    data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
    head = _fast_header(data)
    if head is not None:
        return head
    rec = json.loads(data)
    if isinstance(rec, dict):
        rec.pop(TOKENS, None)
    return rec
