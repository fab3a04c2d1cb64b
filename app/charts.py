"""The explorer's charts (Altair/Vega-Lite): long tables from :mod:`app.series` and the analysis aggregates
in, chart objects out. One palette everywhere: speech in reds, text in blue, the teacher in grey."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

TEXT_BLUE, SPEECH_RED, TEACHER_GREY = "#4393c3", "#d6604d", "#555555"
_SPEECH_REDS = ["#d6604d", "#b2182b", "#f4a582", "#67001f", "#fdae6b"]
_PCT = alt.Axis(format="%")
_POINTS = alt.Axis(format="+.0%")


def _pct(field: str, signed: bool = False) -> alt.Tooltip:
    return alt.Tooltip(f"{field}:Q", format="+.1%" if signed else ".1%")


def modality_scale() -> alt.Scale:
    return alt.Scale(domain=["speech", "text"], range=[SPEECH_RED, TEXT_BLUE])


def mode_scale(modes: list[str]) -> alt.Scale:
    """evalsuite modes (``text``, ``speech:<variant>``, ``teacher text``) coloured like the modalities."""
    fixed = {"text": TEXT_BLUE, "teacher text": TEACHER_GREY}
    known = [m for m in fixed if m in modes]
    speech = [m for m in modes if m not in fixed]
    reds = (_SPEECH_REDS * (len(speech) // len(_SPEECH_REDS) + 1))[: len(speech)]
    return alt.Scale(domain=[*known, *speech], range=[*(fixed[m] for m in known), *reds])


def _lines(df: pd.DataFrame, height: int, **encoding: Any) -> alt.Chart:
    """A line with a point per row of ``df``, ``encoding`` as :meth:`altair.Chart.encode` takes it."""
    return alt.Chart(df).mark_line(point=True).encode(**encoding).properties(height=height)


def step_axis(df: pd.DataFrame) -> alt.X:
    """Steps on a number line when every row has one, else one slot per report (``at``)."""
    if "step" in df and df["step"].notna().all():
        return alt.X("step:Q", title="training step", axis=alt.Axis(tickMinStep=1))
    return alt.X("at:N", title="report", sort=None)


def kl_over_steps(df: pd.DataFrame) -> alt.Chart:
    """``step, modality, source, kl``: a line per modality and source."""
    return _lines(
        df,
        320,
        x=alt.X("step:Q", title="step", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("kl:Q", title="reverse KL (nats / token)"),
        color=alt.Color("modality:N", scale=modality_scale()),
        strokeDash=alt.StrokeDash("source:N", legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["step", "modality", "source", alt.Tooltip("kl:Q", format=".4f")],
    )


def metrics_over_steps(df: pd.DataFrame) -> alt.Chart:
    """``step, metric, value``."""
    return _lines(df, 260, x="step:Q", y="value:Q", color="metric:N", tooltip=["step", "metric", "value"])


def kl_by_position(df: pd.DataFrame) -> alt.Chart:
    """:func:`analysis.aggregate.kl_by_position`: grouped bars, a pair per position bucket."""
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("bucket:N", sort=alt.SortField("start"), title="token position"),
            xOffset="modality:N",
            y=alt.Y("kl:Q", title="mean reverse KL"),
            color=alt.Color("modality:N", scale=modality_scale()),
            tooltip=["modality", "bucket", "tokens", alt.Tooltip("kl:Q", format=".4f")],
        )
        .properties(height=260)
    )


def accuracy(df: pd.DataFrame) -> alt.Chart:
    """Accuracy per evalsuite mode over steps (rows of :func:`app.series.gap_frames`' first table)."""
    return _lines(
        df,
        300,
        x=step_axis(df),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), axis=_PCT),
        color=alt.Color("mode:N", scale=mode_scale(sorted(set(df["mode"])))),
        tooltip=["at", "mode", _pct("accuracy"), "n"],
    )


def _zero() -> alt.Chart:
    return alt.Chart(pd.DataFrame({"y": [0]})).mark_rule(color="#888", strokeDash=[4, 4]).encode(y="y:Q")


def gap(df: pd.DataFrame) -> alt.LayerChart:
    """text − speech per mode with its CI: a band over steps, error bars for single reports."""
    scale = mode_scale(sorted(set(df["mode"])))
    base = alt.Chart(df).encode(x=step_axis(df))
    y = alt.Y("ci_lo:Q", axis=_POINTS, title="gap (points)")
    quiet = alt.Color("mode:N", scale=scale, legend=None)  # the line carries the legend, in full colour
    over_steps = df["step"].notna().all() and df["step"].nunique() > 1
    if over_steps:
        ci = base.mark_area(opacity=0.2).encode(y=y, y2="ci_hi:Q", color=quiet)
    else:
        ci = base.mark_errorbar().encode(y=y, y2="ci_hi:Q", color=quiet)
    tips = ["at", "mode", _pct("diff", True), _pct("ci_lo", True), _pct("ci_hi", True),
            alt.Tooltip("mcnemar_p:Q", format=".3g"), "n"]  # fmt: skip
    line = base.mark_line(point=True).encode(y="diff:Q", color=alt.Color("mode:N", scale=scale), tooltip=tips)
    return (ci + line + _zero()).properties(height=300)


def forgetting(df: pd.DataFrame) -> alt.LayerChart:
    """Trained − base accuracy per task and mode, with CI error bars."""
    df = df.assign(series=df["task"] + " · " + df["mode"])
    base = alt.Chart(df).encode(x=step_axis(df), color="series:N")
    line = base.mark_line(point=True).encode(
        y=alt.Y("diff:Q", axis=_POINTS, title="accuracy Δ (model − base)"),
        tooltip=["at", "task", "mode", _pct("diff", True), _pct("ci_lo", True), _pct("ci_hi", True)],
    )
    return (base.mark_errorbar().encode(y="ci_lo:Q", y2="ci_hi:Q") + line + _zero()).properties(height=280)


def word_error_rate(df: pd.DataFrame) -> alt.Chart:
    """ASR WER of the base and the trained model over steps."""
    long = df.melt(id_vars=["step", "at"], value_vars=["base_wer", "model_wer"], var_name="model",
                   value_name="wer")  # fmt: skip
    tips = ["at", "model", _pct("wer")]
    return _lines(long, 220, x=step_axis(long), y=alt.Y("wer:Q", axis=_PCT), color="model:N", tooltip=tips)
