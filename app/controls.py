"""Widgets that follow the URL: every choice that picks a rollout is mirrored in the query string.

``?step=3&prompt=arithmetic/…/0042&modality=speech&sample=0`` opens that rollout on the first page load (a
link from the Training page, a link pasted into a chat, the browser test), and each change a user makes is
written back, so the address bar always points at what is on screen. A value the URL asks for that the log
does not have is reported, not silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

from app.render import SCALES

_SEEN = "_xo_query_seen"  # per query parameter: the value this session last wrote or applied
LIMITS = ("auto", 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
VIEWS = ("decoded", "raw")


def _from_url(param: str, parse: Callable[[str], Any]) -> tuple[bool, Any]:
    """``(True, value)`` when the URL carries a value for ``param`` this session has not applied yet."""
    raw = st.query_params.get(param)
    seen = st.session_state.setdefault(_SEEN, {})
    if raw is None or seen.get(param) == raw:
        return False, None
    seen[param] = raw
    try:
        return True, parse(raw)
    except (TypeError, ValueError):
        return True, raw


def choose(
    label: str,
    options: Sequence[Any],
    *,
    key: str,
    param: str | None = None,
    parse: Callable[[str], Any] = str,
    default: Any = None,
    fmt: Callable[[Any], str] = str,
    container: Any = None,
    radio: bool = False,
    help: str | None = None,
) -> Any:
    """A selectbox (or horizontal radio) over ``options`` whose value follows ``?param=`` and is written back.
    Returns None when there are no options."""
    options = list(options)
    if not options:
        return None
    box = container if container is not None else st.sidebar
    if param:
        fresh, wanted = _from_url(param, parse)
        if fresh:
            if wanted in options:
                st.session_state[key] = wanted
            else:
                st.warning(f"The link asks for {param} = {wanted!r}, which this log does not have; "
                           f"showing {fmt(st.session_state.get(key, options[0]))!s} instead.")
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    if radio:
        value = box.radio(label, options, key=key, format_func=fmt, horizontal=True, help=help)
    else:
        value = box.selectbox(label, options, key=key, format_func=fmt, help=help)
    if param:
        st.query_params[param] = str(value)
        st.session_state[_SEEN][param] = str(value)
    return value


def display_controls(prefix: str, present: set[str]) -> tuple[str, float | None, bool]:
    """Colour field, scale limit (None: auto) and raw view, in the sidebar. ``present``: the per-token fields
    the shown records have; picking one they lack says so and falls back to the advantage."""
    st.sidebar.markdown("**Display**")
    field = choose("colour tokens by", list(SCALES), key=f"{prefix}_color", param="color",
                   fmt=lambda f: SCALES[f].label)
    limit = choose("scale limit (nats)", list(LIMITS), key=f"{prefix}_limit", param="limit",
                   parse=lambda s: s if s == "auto" else float(s), fmt=str,
                   help="Values beyond ± the limit get the end colour. auto: the 98th percentile of |value| "
                        "in what is shown, rounded up.")
    view = choose("view", list(VIEWS), key=f"{prefix}_view", param="view", radio=True,
                  help="decoded: the text as the model wrote it, same-colour runs together; raw: one box per "
                       "token with its id, whitespace visible.")
    if field not in present:
        st.info(f"**{SCALES[field].label}** is not in this log (no `tokens.{field}`); colouring by the "
                "advantage instead.", icon="ℹ️")
        field = "advantage"
    return field, None if limit == "auto" else float(limit), view == "raw"
