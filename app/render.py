"""The token view as HTML: colour scales, escaping, same-colour runs, tooltips. Pure functions, no Streamlit.

A rollout record (schema in :mod:`xopd.rolloutlog`) becomes a fragment of HTML that ``st.html`` shows as is:

- every token gets a colour bucket from one per-token value: the advantage on a signed scale centred on zero
  (red: the teacher finds the token less likely than the student did; blue: more likely), or a log-prob or an
  entropy on a one-sided scale; values beyond the scale's limit saturate, missing ones are grey;
- *decoded* view: consecutive tokens of one bucket share one ``<span class>`` (the colour), and each token is
  an unstyled ``<span title>`` inside it (the tooltip), so the markup stays near 100 characters per token plus
  its tooltip (text-generation-webui's ~750 per token made long rollouts crawl). A token whose piece is ``""``
  (it ends inside a multi-byte character; the trainer gives the character to the token that completes it) is
  glued to that token: one tooltip lists both, and the glyph is never split;
- *raw* view: one monospace box per token with its id, whitespace made visible;
- the tooltip holds the position, id and piece, the advantage, both log-probs (and entropies when logged) and
  the teacher's top-k alternatives with their probabilities.

All token text is escaped here: ``<``, ``&`` and quotes, control characters (shown as their Unicode control
pictures, e.g. U+0002 as ␂) and lone surrogates (which JSON can carry and UTF-8 cannot).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STEPS = 5  # buckets on each side of zero on the signed scale (11 in all); the one-sided scales have 0..STEPS
WINDOW = 2000  # tokens shown at once; longer rollouts are shown a window at a time
TOPK_SHOWN = 5  # alternatives listed in a tooltip (a log may keep more)

# ColorBrewer RdBu (11) for the signed scale, its middle transparent so agreeing text reads as plain text;
# Purples and Oranges for the one-sided log-prob and entropy scales.
_DIVERGING = [
    "#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", None,
    "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061",
]  # fmt: skip
_PURPLES = [None, "#efedf5", "#dadaeb", "#bcbddc", "#9e9ac8", "#6a51a3"]
_ORANGES = [None, "#fee6ce", "#fdd0a2", "#fdae6b", "#f16913", "#a63603"]
_MISSING = "#bdbdbd"


@dataclass(frozen=True)
class Scale:
    """How one per-token field maps to colours."""

    field: str  # key in the record's ``tokens``
    label: str  # what the legend and the selector call it
    signed: bool  # True: centred on zero, both directions; False: one-sided from zero
    palette: str  # CSS class prefix: "d" (diverging), "p" (purples), "o" (oranges)
    low: str  # what the left end of the legend means
    high: str  # what the right end means
    negate: bool = False  # one-sided scales of values <= 0 (log-probs): the magnitude is -value


SCALES: dict[str, Scale] = {
    s.field: s
    for s in (
        Scale("advantage", "advantage (teacher lp − student lp)", True, "d",
              "teacher finds the token less likely than the student", "teacher finds it more likely"),
        Scale("teacher_lp", "teacher log-prob", False, "p", "likely for the teacher",
              "unlikely for the teacher", negate=True),
        Scale("student_lp", "student log-prob", False, "p", "likely for the student",
              "unlikely for the student", negate=True),
        Scale("student_entropy", "student entropy", False, "o", "student certain", "student uncertain"),
        Scale("teacher_entropy", "teacher entropy", False, "o", "teacher certain", "teacher uncertain"),
    )
}  # fmt: skip


def _palette(prefix: str) -> list[str | None]:
    return {"d": _DIVERGING, "p": _PURPLES, "o": _ORANGES}[prefix]


def _dark(prefix: str, k: int) -> bool:
    """Whether bucket ``k`` of a palette is dark enough to need white text."""
    return abs(k) >= 4 if prefix == "d" else k >= 4


def _class_name(prefix: str, k: int) -> str:
    """``xo-d3`` for bucket 3 of the diverging palette, ``xo-dn3`` for bucket -3."""
    return f"xo-{prefix}{k}" if k >= 0 else f"xo-{prefix}n{-k}"


def _css() -> str:
    rules = [
        ".xo-tokens{white-space:pre-wrap;word-break:break-word;line-height:1.75;font-size:0.98rem;"
        "padding:0.6rem 0.8rem;border:1px solid rgba(128,128,128,.3);border-radius:0.4rem}",
        ".xo-tokens span[title]{cursor:help}",
        ".xo-tokens span[title]:hover{outline:1px solid #333;border-radius:2px}",
        ".xo-ctl{opacity:.65;font-size:.8em}",
        ".xo-raw{display:flex;flex-wrap:wrap;gap:3px;white-space:pre;"
        "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem;line-height:1.25}",
        ".xo-raw .xo-tok{border:1px solid rgba(128,128,128,.45);border-radius:3px;padding:1px 4px;"
        "display:inline-flex;flex-direction:column;align-items:center}",
        ".xo-raw .xo-tok sub{font-size:.68rem;opacity:.7;line-height:1;margin-top:1px}",
        ".xo-raw .xo-br{flex-basis:100%;height:0}",
        ".xo-legend{font-size:.8rem;margin:.1rem 0 .5rem 0}",
        ".xo-legend .xo-row{display:flex;align-items:center;gap:.45rem;margin-top:.25rem;flex-wrap:wrap}",
        ".xo-legend .xo-bar{display:inline-flex;border:1px solid rgba(128,128,128,.5);border-radius:3px;"
        "overflow:hidden}",
        ".xo-legend .xo-bar span{display:inline-block;width:1.15rem;height:.9rem}",
        ".xo-legend .xo-end{opacity:.8}",
        ".xo-legend code{font-size:.78rem;padding:0 .2rem}",
        ".xo-legend .xo-sw{padding:0 .35rem;border-radius:3px;margin-left:.8rem}",
        ".xo-tokens > span{border-radius:2px;padding:1px 0}",
        f".xo-na{{background:{_MISSING};color:#111}}",
    ]
    for prefix in ("d", "p", "o"):
        pal = _palette(prefix)
        lo = -STEPS if prefix == "d" else 0
        for i, color in enumerate(pal):
            k = lo + i
            name = _class_name(prefix, k)
            if color is None:
                rules.append(f".{name}{{}}")
                continue
            fg = "#fff" if _dark(prefix, k) else "#111"
            rules.append(f".{name}{{background:{color};color:{fg}}}")
    return "<style>" + "".join(rules) + "</style>"


CSS = _css()


def bucket_class(scale: Scale, bucket: int | None) -> str:
    """CSS class of a bucket (``None``: the value is missing)."""
    return "xo-na" if bucket is None else _class_name(scale.palette, bucket)


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def bucket(scale: Scale, value: float | None, limit: float) -> int | None:
    """The colour bucket of ``value``: -STEPS..STEPS on a signed scale (0 means |value| < limit / (2*STEPS)),
    0..STEPS on a one-sided one; None for a missing value."""
    v = _num(value)
    if v is None:
        return None
    if scale.signed:
        return max(-STEPS, min(STEPS, round(v / limit * STEPS)))
    mag = -v if scale.negate else v
    return max(0, min(STEPS, round(mag / limit * STEPS)))


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= x: legend limits people can read."""
    k = math.floor(math.log10(x))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * 10**k >= x * (1 - 1e-9):
            return float(f"{m * 10**k:.6g}")
    return 10.0 ** (k + 1)


def auto_limit(scale: Scale, values: Sequence[Any]) -> float:
    """A scale limit for these values: the 98th percentile of their magnitudes, rounded up to a nice number
    (1.0 when every value is 0 or missing), so one outlier does not wash every other token out."""
    mags = sorted(abs(v) for v in (_num(x) for x in values) if v is not None)
    if not mags:
        return 1.0
    q = mags[min(len(mags) - 1, int(0.98 * (len(mags) - 1) + 0.5))]
    return 1.0 if q <= 0 else _nice_ceiling(q)


# ------------------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------------------


def _visible_char(c: str) -> str | None:
    """The stand-in of a character that must not reach the page as is, else None."""
    o = ord(c)
    if o < 0x20 and c not in "\n\t":
        return chr(0x2400 + o)  # control pictures: U+0002 -> ␂
    if o == 0x7F:
        return "\u2421"  # ␡
    if 0x80 <= o <= 0x9F:
        return f"\\x{o:02x}"  # C1 controls have no pictures
    if 0xD800 <= o <= 0xDFFF:
        return "\ufffd"  # a lone surrogate cannot be encoded as UTF-8
    return None


def escape_text(text: str, *, raw: bool = False) -> str:
    """HTML for token text: escaped, control characters and lone surrogates replaced by visible stand-ins
    (dimmed), and, in the raw view, whitespace made visible (space ·, newline ↵, tab →)."""
    out: list[str] = []
    for c in text:
        sub = _visible_char(c)
        if sub is not None:
            out.append(f'<span class="xo-ctl">{html.escape(sub)}</span>')
        elif raw and c in " \n\t":
            out.append({" ": "·", "\n": "↵", "\t": "→"}[c])
        else:
            out.append(html.escape(c, quote=True))
    return "".join(out)


def plain_text(text: str) -> str:
    """Token text for a tooltip (plain text, escaped later): controls and whitespace spelled out."""
    out = []
    for c in text:
        sub = _visible_char(c)
        out.append(sub if sub is not None else {"\n": "↵", "\t": "→"}.get(c, c))
    return "".join(out)


def _attr(text: str) -> str:
    """Escape for a double-quoted attribute; newlines stay (browsers show them as line breaks in tooltips)."""
    return html.escape(text, quote=True)


# ------------------------------------------------------------------------------------------------------------
# tooltips
# ------------------------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = "+.3f") -> str:
    f = _num(v)
    return "n/a" if f is None else format(f, spec)


def _pct(lp: Any) -> str:
    f = _num(lp)
    if f is None:
        return "n/a"
    p = 100 * math.exp(f)
    return f"{p:.0f}%" if p >= 10 else f"{p:.1f}%" if p >= 1 else f"{p:.2g}%"


def _col(tokens: dict[str, Any], key: str) -> list[Any] | None:
    col = tokens.get(key)
    return col if isinstance(col, list) else None


def _alt_order(alt: tuple[Any, Any]) -> float:
    """Sort key of a (piece, log-prob) alternative: likeliest first, missing log-probs last."""
    lp = _num(alt[1])
    return math.inf if lp is None else -lp


def token_tooltip(tokens: dict[str, Any], i: int, *, topk_shown: int = TOPK_SHOWN) -> str:
    """The tooltip text of token ``i`` (plain text, several lines)."""
    piece = str(tokens["piece"][i])
    s_lp, t_lp = tokens["student_lp"][i], tokens["teacher_lp"][i]
    lines = [
        f"#{i}  id {tokens['id'][i]}  “{plain_text(piece)}”",
        f"advantage {_fmt(tokens['advantage'][i])}",
        f"teacher lp {_fmt(t_lp, '.3f')} (p {_pct(t_lp)})   student lp {_fmt(s_lp, '.3f')} (p {_pct(s_lp)})",
    ]
    entropies = (("student", _col(tokens, "student_entropy")), ("teacher", _col(tokens, "teacher_entropy")))
    ent = [f"{who} entropy {_fmt(col[i], '.3f')}" for who, col in entropies if col is not None]
    if ent:
        lines.append("   ".join(ent))
    topk = tokens.get("teacher_topk")
    if isinstance(topk, dict) and isinstance(topk.get("piece"), list) and i < len(topk["piece"]):
        pieces, lps = topk["piece"][i], topk["lp"][i]
        alts = sorted(zip(pieces, lps, strict=False), key=_alt_order)
        lines.append(f"teacher top-{len(alts)}:")
        for p, lp in alts[:topk_shown]:
            lines.append(f"   {_pct(lp):>6}  “{plain_text(str(p))}”")
        if len(alts) > topk_shown:
            lines.append(f"   … {len(alts) - topk_shown} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# the token view
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """A rendered window of a rollout: ``html`` (CSS, legend and tokens) and what went into it."""

    html: str
    scale: Scale
    limit: float
    start: int
    stop: int
    runs: int  # colour spans in the decoded view (tokens in the raw view)


def _units(pieces: Sequence[Any], start: int, stop: int) -> list[list[int]]:
    """Token indices grouped so that each group ends with a token whose piece is not empty: a token that
    ends inside a multi-byte character travels with the token that completes the character."""
    units: list[list[int]] = []
    pending: list[int] = []
    for i in range(start, stop):
        pending.append(i)
        if pieces[i] != "":
            units.append(pending)
            pending = []
    if pending:
        units.append(pending)
    return units


def _unit_value(scale: Scale, values: Sequence[Any], idx: list[int]) -> float | None:
    """The value that colours a group: its most extreme member, so a divergent byte is never hidden."""
    vals = [v for v in (_num(values[i]) for i in idx) if v is not None]
    if not vals:
        return None
    if scale.signed:
        return max(vals, key=abs)
    return min(vals) if scale.negate else max(vals)


def check_tokens(tokens: Any, field: str) -> list[Any]:
    """The per-token values of ``field``; ValueError naming what is missing."""
    if not isinstance(tokens, dict):
        raise ValueError("the record has no 'tokens' object")
    for key in ("id", "piece", "student_lp", "teacher_lp", "advantage"):
        if not isinstance(tokens.get(key), list):
            raise ValueError(f"the record's tokens have no {key!r} array")
    values = tokens.get(field)
    if not isinstance(values, list):
        raise ValueError(f"tokens.{field} is not in this log")
    n = len(tokens["id"])
    for key in ("piece", "student_lp", "teacher_lp", "advantage", field):
        if len(tokens[key]) != n:
            raise ValueError(f"tokens.{key} has {len(tokens[key])} values for {n} tokens")
    return values


def render_tokens(
    tokens: dict[str, Any],
    *,
    color_by: str = "advantage",
    limit: float | None = None,
    raw: bool = False,
    start: int = 0,
    stop: int | None = None,
    topk_shown: int = TOPK_SHOWN,
    legend: bool = True,
) -> Rendered:
    """HTML of tokens ``start:stop`` of a record's ``tokens`` coloured by ``color_by`` (a :data:`SCALES` key)
    on ``[-limit, limit]`` (``[0, limit]`` one-sided; default: :func:`auto_limit` over the whole rollout).
    ValueError when the field is not logged or the arrays disagree in length."""
    if color_by not in SCALES:
        raise ValueError(f"unknown colour field {color_by!r}; one of {', '.join(SCALES)}")
    scale = SCALES[color_by]
    values = check_tokens(tokens, color_by)
    n = len(values)
    stop = n if stop is None else max(0, min(stop, n))
    start = max(0, min(start, stop))
    if limit is None:
        limit = auto_limit(scale, values)
    if not (limit > 0 and math.isfinite(limit)):
        raise ValueError(f"scale limit must be a positive number, not {limit!r}")
    pieces, ids = tokens["piece"], tokens["id"]
    body: list[str] = []
    runs = 0
    if raw:
        cls = "xo-raw"
        for i in range(start, stop):
            b = bucket(scale, values[i], limit)
            text = escape_text(str(pieces[i]), raw=True) or '<span class="xo-ctl">∅</span>'
            tip = _attr(token_tooltip(tokens, i, topk_shown=topk_shown))
            klass = bucket_class(scale, b)
            body.append(f'<span class="xo-tok {klass}" title="{tip}">{text}<sub>{ids[i]}</sub></span>')
            if str(pieces[i]).endswith("\n"):
                body.append('<span class="xo-br"></span>')
            runs += 1
    else:
        cls = "xo-tokens"
        current: int | None | str = "none"  # the open run's bucket ("none": no run open)
        for unit in _units(pieces, start, stop):
            b = bucket(scale, _unit_value(scale, values, unit), limit)
            if b != current:
                if current != "none":
                    body.append("</span>")
                body.append(f'<span class="{bucket_class(scale, b)}">')
                current = b
                runs += 1
            tip = _attr("\n\n".join(token_tooltip(tokens, i, topk_shown=topk_shown) for i in unit))
            text = "".join(str(pieces[i]) for i in unit)
            body.append(f'<span title="{tip}">{escape_text(text)}</span>')
        if current != "none":
            body.append("</span>")
    head = legend_html(scale, limit, missing=any(_num(values[i]) is None for i in range(start, stop)))
    out = f'{CSS}{head if legend else ""}<div class="{cls}">{"".join(body)}</div>'
    return Rendered(html=out, scale=scale, limit=limit, start=start, stop=stop, runs=runs)


def legend_html(scale: Scale, limit: float, *, missing: bool = False) -> str:
    """The colour key: the palette as swatches from one end of the scale to the other, with its numbers."""
    lo = -STEPS if scale.signed else 0
    swatches = []
    for k in range(lo, STEPS + 1):
        color = _palette(scale.palette)[k - lo]
        value = k * limit / STEPS if scale.signed else (-1 if scale.negate else 1) * k * limit / STEPS
        swatches.append(f'<span style="background:{color or "transparent"}" title="{value:+.3g}"></span>')
    if scale.signed:
        left, right = f"−{limit:g}", f"+{limit:g}"
        note = f"|value| &lt; {limit / (2 * STEPS):.2g} left uncoloured"
    else:
        left, right = "0", f"{'−' if scale.negate else ''}{limit:g}"
        note = "darker: further from 0"
    na = '<span class="xo-na xo-sw">no value</span>' if missing else ""
    return (
        f'<div class="xo-legend"><div><b>{html.escape(scale.label)}</b> · {note} · beyond the ends: the end '
        "colour · hover a token for both log-probs and the teacher's top alternatives</div>"
        f'<div class="xo-row"><span class="xo-end">{html.escape(scale.low)}</span><code>{left}</code>'
        f'<span class="xo-bar">{"".join(swatches)}</span><code>{right}</code>'
        f'<span class="xo-end">{html.escape(scale.high)}</span>{na}</div></div>'
    )
