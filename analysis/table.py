"""One row per logged token: the per-token table every aggregate and figure is computed from.

Columns (in order): ``step``, ``kind``, ``prompt_id``, ``modality``, ``sample``, ``position`` (0-based index
in the completion), ``num_tokens``, ``token_id``, ``piece``, ``student_lp``, ``teacher_lp``, ``advantage``,
``kl`` (``student_lp - teacher_lp``: the sampled-token reverse-KL estimate at that position),
``sampler_lp``, ``student_entropy``, ``teacher_entropy`` (NaN where the log does not have them) and, unless
``topk=False``, ``teacher_topk``: the teacher's alternatives as a list of ``(piece, probability)`` pairs,
likeliest first (``[]`` when the log has none).

Records are schema-checked rollout-log records (:meth:`analysis.logs.RolloutLog.read`); the arrays are
gathered into flat lists and converted once per column, so a table of millions of tokens builds in seconds
(``teacher_topk`` costs a Python list per token: leave it out for big tables).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

ROLLOUT_KEY = ["step", "prompt_id", "modality", "sample"]  # what identifies one rollout in a log
_PER_ROLLOUT = ("step", "kind", "prompt_id", "modality", "sample", "num_tokens")
_TEXT = ("kind", "prompt_id", "modality", "piece")  # kept as Python str objects (no arrow strings)
_FLOAT_ARRAYS = ("student_lp", "teacher_lp", "advantage", "sampler_lp", "student_entropy", "teacher_entropy")
COLUMNS = [
    "step",
    "kind",
    "prompt_id",
    "modality",
    "sample",
    "position",
    "num_tokens",
    "token_id",
    "piece",
    "student_lp",
    "teacher_lp",
    "advantage",
    "kl",
    "sampler_lp",
    "student_entropy",
    "teacher_entropy",
]


ENTRY_COLUMNS = [
    "line", "step", "kind", "prompt_id", "modality", "sample", "num_tokens", "reverse_kl", "finished"
]


def entry_table(entries: Iterable[Any]) -> pd.DataFrame:
    """One row per rollout from a log's index alone (:class:`analysis.logs.LogEntry`: no token arrays read),
    columns :data:`ENTRY_COLUMNS`; ``reverse_kl`` is the rollout's mean ``student_lp - teacher_lp``."""
    rows = [tuple(getattr(e, c) for c in ENTRY_COLUMNS) for e in entries]
    df = pd.DataFrame(rows, columns=ENTRY_COLUMNS)
    for key in ("kind", "prompt_id", "modality"):
        df[key] = df[key].astype(object)
    df["reverse_kl"] = df["reverse_kl"].astype(float)
    return df


def topk_pairs(topk: dict[str, Any] | None, position: int) -> list[tuple[str, float]]:
    """The teacher's alternatives at ``position`` as ``(piece, probability)``, likeliest first."""
    if not topk:
        return []
    pieces, lps = topk["piece"][position], topk["lp"][position]
    pairs = [(str(p), math.nan if lp is None else math.exp(lp)) for p, lp in zip(pieces, lps, strict=False)]
    return sorted(pairs, key=lambda x: math.inf if math.isnan(x[1]) else -x[1])


def token_table(records: Iterable[dict[str, Any]], *, topk: bool = True) -> pd.DataFrame:
    """The per-token table of ``records`` (see the module docstring); an empty table keeps the columns."""
    per_rollout: dict[str, list[Any]] = {key: [] for key in _PER_ROLLOUT}
    ids: list[int] = []
    pieces: list[str] = []
    floats: dict[str, list[float | None]] = {key: [] for key in _FLOAT_ARRAYS}
    topk_col: list[list[tuple[str, float]]] = []
    for rec in records:
        t = int(rec["num_tokens"])
        tokens = rec["tokens"]
        for key in _PER_ROLLOUT:
            per_rollout[key].append(rec[key])
        ids.extend(tokens["id"])
        pieces.extend(tokens["piece"])
        for key in _FLOAT_ARRAYS:
            values = tokens.get(key)
            floats[key].extend([None] * t if values is None else values)  # None -> NaN below
        if topk:
            tk = tokens.get("teacher_topk")
            topk_col.extend(topk_pairs(tk, i) for i in range(t))
    lengths = np.asarray(per_rollout["num_tokens"], dtype=np.int64)
    # one repeat per column at the end: no per-record arrays
    data: dict[str, Any] = {}
    for key in _PER_ROLLOUT:
        values = np.empty(len(lengths), dtype=object)
        values[:] = per_rollout[key]
        data[key] = np.repeat(values, lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    data["position"] = np.arange(int(lengths.sum())) - starts
    data["token_id"] = np.asarray(ids, dtype=np.int64)
    data["piece"] = pd.Series(pieces, dtype=object)
    for key in _FLOAT_ARRAYS:
        data[key] = np.asarray(floats[key], dtype=float)
    df = pd.DataFrame({k: pd.Series(v, dtype=object) if k in _TEXT else v for k, v in data.items()})
    for key in ("step", "sample", "num_tokens"):
        df[key] = df[key].astype(np.int64)
    df["kl"] = df["student_lp"] - df["teacher_lp"]
    if topk:
        df["teacher_topk"] = pd.Series(topk_col, index=df.index, dtype=object)
    return df[COLUMNS + (["teacher_topk"] if topk else [])]
