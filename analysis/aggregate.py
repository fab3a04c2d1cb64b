"""Aggregates of the per-token table (:func:`analysis.table.token_table`): pure functions, table in,
table out.

"KL" here is the sampled-token reverse-KL estimate ``student_lp - teacher_lp`` averaged over tokens (each
token weighs the same; NaN log-probs are left out), the number the trainer logs as ``kl_<modality>``.
The *first-divergence position* of a rollout is the index of its first token whose advantage falls below a
threshold (default -1: the teacher finds the token at least e times less likely than the student does);
None when no token does. *Text vs speech* pairs the text and the speech rollouts of the same prompt at the
same step: the difference ``kl_speech - kl_text`` is how much more the student leaves the teacher when it
hears the question instead of reading it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import DEFAULT_THRESHOLD
from analysis.table import ROLLOUT_KEY

DEFAULT_EDGES = (0, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # position-bucket lower edges


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``[0, 4, 8]`` -> ``["0-3", "4-7", "8+"]``."""
    return [f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in zip(edges, edges[1:], strict=False)] + [
        f"{edges[-1]}+"
    ]


def kl_by_position(table: pd.DataFrame, edges: Sequence[int] = DEFAULT_EDGES) -> pd.DataFrame:
    """Mean KL per position bucket and modality: columns ``modality, bucket, start, tokens, kl``
    (buckets without tokens left out; ``start`` is the bucket's first position, for sorting/plotting)."""
    edges = list(edges)
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"position bucket edges must start at 0 and increase: {edges}")
    labels = bucket_labels(edges)
    idx = np.searchsorted(np.asarray(edges), table["position"].to_numpy(), side="right") - 1
    starts = np.asarray(edges)[idx] if len(idx) else np.array([], dtype=np.int64)
    df = pd.DataFrame({"modality": table["modality"], "start": starts, "kl": table["kl"]})
    out = df.groupby(["modality", "start"], sort=True).agg(tokens=("kl", "count"), kl=("kl", "mean"))
    out = out.reset_index()
    out = out[out["tokens"] > 0]
    out.insert(1, "bucket", [labels[edges.index(s)] for s in out["start"]])
    return out.reset_index(drop=True)[["modality", "bucket", "start", "tokens", "kl"]]


def kl_by_modality(table: pd.DataFrame) -> pd.DataFrame:
    """Per modality: ``rollouts``, ``tokens``, ``kl`` (token mean), ``mean_advantage``, ``mean_length``."""
    g = table.groupby("modality", sort=True)
    out = g.agg(tokens=("kl", "count"), kl=("kl", "mean"), mean_advantage=("advantage", "mean"))
    per_rollout = table.drop_duplicates(ROLLOUT_KEY).groupby("modality")
    out.insert(0, "rollouts", per_rollout.size())
    out["mean_length"] = per_rollout["num_tokens"].mean()
    return out.reset_index()


def kl_by_step(table: pd.DataFrame, *, by_modality: bool = True) -> pd.DataFrame:
    """Mean KL per training step (and modality): columns ``step, [modality,] rollouts, tokens, kl``."""
    keys = ["step", "modality"] if by_modality else ["step"]
    out = table.groupby(keys, sort=True).agg(tokens=("kl", "count"), kl=("kl", "mean"))
    out.insert(0, "rollouts", table.drop_duplicates(ROLLOUT_KEY).groupby(keys).size())
    return out.reset_index()


def kl_by_step_from_entries(entries: pd.DataFrame, *, by_modality: bool = True) -> pd.DataFrame:
    """:func:`kl_by_step` from the log index alone (:func:`analysis.table.entry_table`): each rollout's
    ``reverse_kl`` weighted by its ``num_tokens`` gives the same token mean without reading a token array
    (up to the 5-decimal rounding of ``reverse_kl``); rollouts without a finite one are left out."""
    keys = ["step", "modality"] if by_modality else ["step"]
    df = entries[np.isfinite(entries["reverse_kl"].to_numpy(float))].assign(
        weighted=lambda d: d["reverse_kl"] * d["num_tokens"]
    )
    out = df.groupby(keys, sort=True).agg(
        rollouts=("num_tokens", "size"), tokens=("num_tokens", "sum"), weighted=("weighted", "sum")
    )
    out["kl"] = out["weighted"] / out["tokens"].where(out["tokens"] > 0)
    return out.drop(columns="weighted").reset_index()


def first_divergence_position(
    advantages: Sequence[float | None], threshold: float = DEFAULT_THRESHOLD
) -> int | None:
    """Index of the first advantage below ``threshold`` (NaN never counts); None when there is none."""
    for i, a in enumerate(advantages):
        if a is not None and a < threshold:
            return i
    return None


def first_divergence(table: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """One row per rollout: ``step, prompt_id, modality, sample, num_tokens, first_divergence`` (nullable
    integer: ``<NA>`` when no token's advantage falls below ``threshold``)."""
    rollouts = table.drop_duplicates(ROLLOUT_KEY)[[*ROLLOUT_KEY, "num_tokens"]].set_index(ROLLOUT_KEY)
    below = table[table["advantage"] < threshold]
    first = below.groupby(ROLLOUT_KEY)["position"].min()
    rollouts["first_divergence"] = first.reindex(rollouts.index).astype("Int64")
    return rollouts.reset_index()


def first_divergence_summary(fd: pd.DataFrame) -> pd.DataFrame:
    """Per modality, from :func:`first_divergence`: ``rollouts``, ``diverged`` (how many ever cross the
    threshold), ``diverged_share``, ``median_position`` and ``mean_position`` (over those that do)."""
    rows = []
    for m, g in fd.groupby("modality", sort=True):
        pos = g["first_divergence"].dropna().astype(float)
        rows.append(
            {
                "modality": m,
                "rollouts": len(g),
                "diverged": len(pos),
                "diverged_share": len(pos) / len(g) if len(g) else math.nan,
                "median_position": float(pos.median()) if len(pos) else math.nan,
                "mean_position": float(pos.mean()) if len(pos) else math.nan,
            }
        )
    cols = ["modality", "rollouts", "diverged", "diverged_share", "median_position", "mean_position"]
    return pd.DataFrame(rows, columns=cols)


def divergent_tokens(
    table: pd.DataFrame, *, top: int | None = 20, min_count: int = 1, modality: str | None = None
) -> pd.DataFrame:
    """Token pieces the teacher most disagrees with: per piece ``count``, ``mean_advantage``, ``mean_kl``,
    ``min_advantage``; pieces seen at least ``min_count`` times, most negative mean advantage first."""
    df = table if modality is None else table[table["modality"] == modality]
    df = df[df["advantage"].notna()]
    out = df.groupby("piece", sort=False).agg(
        count=("advantage", "size"),
        mean_advantage=("advantage", "mean"),
        mean_kl=("kl", "mean"),
        min_advantage=("advantage", "min"),
    )
    out = out[out["count"] >= min_count].reset_index()
    out = out.sort_values(["mean_advantage", "count", "piece"], ascending=[True, False, True], kind="stable")
    out = out.reset_index(drop=True)
    return out if top is None else out.head(top)


def text_vs_speech(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per (step, prompt_id) with both modalities: ``kl_text``, ``kl_speech`` (token means over that prompt's
    rollouts in each), ``diff = kl_speech - kl_text``; and a summary: ``prompts``, ``mean_text``,
    ``mean_speech``, ``mean_diff``, ``median_diff``, ``speech_higher`` (share of prompts with diff > 0)."""
    per = table.groupby(["step", "prompt_id", "modality"], sort=True)["kl"].mean().unstack("modality")
    cols = ["step", "prompt_id", "kl_text", "kl_speech", "diff"]
    if "text" not in per.columns or "speech" not in per.columns:
        pairs = pd.DataFrame(columns=cols)
    else:
        pairs = per[["text", "speech"]].dropna().rename(columns={"text": "kl_text", "speech": "kl_speech"})
        pairs["diff"] = pairs["kl_speech"] - pairs["kl_text"]
        pairs = pairs.reset_index()[cols]
        pairs.columns.name = None
    n = len(pairs)
    summary = {
        "prompts": n,
        "mean_text": float(pairs["kl_text"].mean()) if n else math.nan,
        "mean_speech": float(pairs["kl_speech"].mean()) if n else math.nan,
        "mean_diff": float(pairs["diff"].mean()) if n else math.nan,
        "median_diff": float(pairs["diff"].median()) if n else math.nan,
        "speech_higher": float((pairs["diff"] > 0).mean()) if n else math.nan,
    }
    return pairs, summary


# ------------------------------------------------------------------------------------------------------------
# the summary (summary.json of `xopd-eval divergence`, and its printed table)
# ------------------------------------------------------------------------------------------------------------


def _json_value(v: Any) -> Any:
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return None if not math.isfinite(float(v)) else float(v)
    return v


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (NaN/NA -> None, numpy scalars -> Python)."""
    return [{k: _json_value(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def summarize(
    table: pd.DataFrame,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = 20,
    edges: Sequence[int] = DEFAULT_EDGES,
) -> dict[str, Any]:
    """Every aggregate of ``table``, JSON-ready."""
    fd = first_divergence(table, threshold)
    pairs, tvs = text_vs_speech(table)
    return {
        "rollouts": int(len(fd)),
        "tokens": int(len(table)),
        "steps": sorted(int(s) for s in table["step"].unique()),
        "threshold": threshold,
        "by_modality": records(kl_by_modality(table)),
        "by_step": records(kl_by_step(table)),
        "by_position": records(kl_by_position(table, edges)),
        "first_divergence": records(first_divergence_summary(fd)),
        "divergent_tokens": records(divergent_tokens(table, top=top)),
        "text_vs_speech": {k: _json_value(v) for k, v in tvs.items()} | {"pairs": records(pairs)},
    }


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def format_summary(summary: dict[str, Any], *, top: int = 10) -> str:
    """The printed summary of ``xopd-eval divergence``: per-modality KL and first divergence, the most
    divergent tokens, text vs speech."""
    fd = {r["modality"]: r for r in summary["first_divergence"]}
    lines = [
        f"{summary['rollouts']} rollouts, {summary['tokens']} tokens, steps {summary['steps']}; "
        f"divergence threshold: advantage < {summary['threshold']}",
        "",
        "modality   rollouts   tokens   mean KL   mean len   diverged   first-div median",
    ]
    for r in summary["by_modality"]:
        d = fd.get(r["modality"], {})
        lines.append(
            f"{r['modality']:<10} {r['rollouts']:>8} {r['tokens']:>8} {_f(r['kl']):>9}"
            f" {_f(r['mean_length'], '.1f'):>10}"
            f" {d.get('diverged', 0):>4}/{d.get('rollouts', 0):<5} {_f(d.get('median_position'), '.1f'):>16}"
        )
    toks = summary["divergent_tokens"][:top]
    if toks:
        lines += ["", "most divergent tokens (by mean advantage)"]
        lines.append("piece                 count   mean adv   mean KL")
        for r in toks:
            lines.append(
                f"{json.dumps(r['piece'], ensure_ascii=False)[:20]:<20} {r['count']:>6} "
                f"{_f(r['mean_advantage']):>10} {_f(r['mean_kl']):>9}"
            )
    tvs = summary["text_vs_speech"]
    lines.append("")
    if tvs["prompts"]:
        lines.append(
            f"text vs speech on the same prompts ({tvs['prompts']}): KL text {_f(tvs['mean_text'])}, "
            f"speech {_f(tvs['mean_speech'])}, speech - text {_f(tvs['mean_diff'], '+.4f')} "
            f"(median {_f(tvs['median_diff'], '+.4f')}); speech higher on {_f(tvs['speech_higher'], '.0%')}"
        )
    else:
        lines.append("text vs speech: no prompt has rollouts in both modalities")
    return "\n".join(lines)

