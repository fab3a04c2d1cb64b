"""One rollout on screen: its prompt (the audio player beside the spoken transcript for a speech rollout), its
numbers, and its tokens coloured. Used by the Rollouts page (one at a time) and the Compare page (side by
side)."""

from __future__ import annotations

import math
from typing import Any

import streamlit as st

from analysis.aggregate import DEFAULT_THRESHOLD, first_divergence_position
from analysis.logs import LogError, RunDir
from app.render import CSS, SCALES, WINDOW, auto_limit, legend_html, render_tokens
from app.state import audio_bytes


def present_fields(records: list[dict[str, Any]]) -> set[str]:
    """The colour fields every one of ``records`` has as a per-token array."""
    out = set(SCALES)
    for rec in records:
        tokens = rec.get("tokens") or {}
        out &= {f for f in SCALES if isinstance(tokens.get(f), list)}
    return out


def shared_limit(records: list[dict[str, Any]], field: str) -> float:
    """One auto limit over several rollouts, so the same colour means the same value in each."""
    values = [v for rec in records for v in (rec["tokens"].get(field) or [])]
    return auto_limit(SCALES[field], values)


def _fmt(x: Any, spec: str) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def show_legend(field: str, limit: float) -> None:
    st.html(CSS + legend_html(SCALES[field], limit))


def show_prompt(run: RunDir, rec: dict[str, Any], *, compact: bool = False) -> None:
    """What the student was given. Speech: the player beside the words spoken; text: the question. The
    teacher always reads the text version (shown under the spoken one)."""
    if rec.get("modality") == "speech" or rec.get("audio_path"):
        left, right = st.columns([2, 3]) if not compact else (st.container(), st.container())
        with left:
            st.markdown("**:material/hearing: What the student heard**")
            rel = rec.get("audio_path")
            if not rel:
                st.info("This speech rollout has no audio_path in the log (a recording outside the run?).")
            else:
                try:
                    st.audio(audio_bytes(run, str(rel)), format="audio/wav")
                    variant = rec.get("variant")
                    st.caption(f"`{rel}`" + (f" · TTS variant `{variant}`" if variant else ""))
                except LogError as exc:
                    st.error(f"Audio refused: {exc}")
        with right:
            st.markdown("**Spoken transcript**")
            spoken = rec.get("spoken_text")
            st.code(spoken if spoken else "(not recorded: the audio is a recording)", language=None,
                    wrap_lines=True)
            st.caption("The teacher reads the text version:")
            st.code(str(rec.get("prompt_text", "")), language=None, wrap_lines=True)
    else:
        note = "" if compact else " (so did the teacher)"
        st.markdown(f"**:material/article: What the student read**{note}")
        st.code(str(rec.get("prompt_text", "")), language=None, wrap_lines=True)


KL_TILE = "reverse KL (sampled est.)"  # a sampled estimate, which can be negative (the exact KL cannot)


def rollout_numbers(rec: dict[str, Any], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The headline numbers of a rollout, formatted."""
    adv = rec["tokens"]["advantage"]
    vals = [a for a in adv if isinstance(a, int | float) and math.isfinite(a)]
    first = first_divergence_position(adv, threshold)
    return {
        "tokens": rec["num_tokens"],
        KL_TILE: _fmt(rec.get("reverse_kl"), ".4f"),
        "lowest advantage": _fmt(min(vals) if vals else None, "+.3f"),
        "first divergence": "none" if first is None else f"#{first}",
        "finished": "EOS" if rec.get("finished") else "cut",
    }


_HELP = {
    "tokens": "completion tokens, EOS included",
    KL_TILE: "sampled-token estimate of the reverse KL: the mean over this rollout's tokens of student lp − "
             "teacher lp at the token that was sampled. A one-sample estimate, so it can be negative on a "
             "rollout; the KL it estimates (a sum over the whole vocabulary) cannot.",
    "first divergence": f"first token whose advantage is below {DEFAULT_THRESHOLD}",
    "finished": "EOS: the model ended it; cut: it hit max_new_tokens",
    "lowest advantage": "the token the teacher disagrees with most, and its position",
}


def show_numbers(rec: dict[str, Any]) -> None:
    adv = rec["tokens"]["advantage"]
    vals = [a for a in adv if isinstance(a, int | float) and math.isfinite(a)]
    where = f"token #{adv.index(min(vals))}" if vals else None
    for col, (name, value) in zip(st.columns(5), rollout_numbers(rec).items(), strict=True):
        delta = where if name == "lowest advantage" else None
        col.metric(name, value, delta=delta, delta_color="off", delta_arrow="off", help=_HELP.get(name))


def show_tokens(
    rec: dict[str, Any], *, field: str, limit: float | None, raw: bool, key: str, legend: bool = True
) -> None:
    """The coloured tokens (a window of :data:`WINDOW` at a time for long rollouts)."""
    n = int(rec["num_tokens"])
    start = 0
    if n > WINDOW:
        starts = list(range(0, n, WINDOW))
        start = st.select_slider(f"tokens (showing {WINDOW} at a time of {n})", starts, key=f"{key}_window",
                                 format_func=lambda s: f"{s}–{min(s + WINDOW, n) - 1}")
    if limit is None:  # auto over the whole rollout, not just the window: colours stay put while paging
        limit = auto_limit(SCALES[field], rec["tokens"][field])
    try:
        out = render_tokens(rec["tokens"], color_by=field, limit=limit, raw=raw, start=start,
                            stop=start + WINDOW, legend=legend)
    except ValueError as exc:
        st.error(f"Cannot show this rollout: {exc}")
        return
    st.html(out.html)
