"""Answer extraction from free-form model outputs that never guesses.

A failed extraction returns ``Extraction(None, reason)`` and is scored wrong; reports count these per mode.
Filling a failure with a random option (VoiceBench #15) gives chance accuracy from nothing, so there is no
such fallback here, and an output that names two different options is a failure, not a coin toss.

Rules run from explicit to implicit: ``\\boxed{…}``, "the (final) answer is …" / "Answer: …" / "#### …" (the
last such phrase that resolves), a bold ``**…**`` answer, then a fallback per answer type (the last number;
an option letter or option text named uniquely; a yes/no-type word of a single polarity). Chat models rarely
follow a strict format (lm-eval PR #2034: GSM8K strict-match 0.20 vs flexible 0.78), hence the fallbacks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

__all__ = ["ANSWER_TYPES", "Extraction", "extract_answer", "is_correct", "parse_number", "restates_question"]

ANSWER_TYPES = ("number", "choice", "yesno", "text")


@dataclass(frozen=True)
class Extraction:
    value: str | None  # canonical answer ("12", an option text, one of the yes/no choices); None = failed
    method: str  # the rule that decided, or why nothing was extracted ("no-number", "ambiguous-choice", ...)

    @property
    def ok(self) -> bool:
        return self.value is not None


# --- spans that state an answer explicitly ------------------------------------------------------------------

_ANSWER_PHRASE = re.compile(
    r"(?:\banswer(?:\s+to\s+[^.\n]{0,80}?)?\s*"  # "answer", "answer to the question"
    r"(?:(?:is|was|would\s+be|will\s+be|should\s+be)\b|=|:)|####)\s*:?",
    re.IGNORECASE,
)
# A span ends at a line break or at a sentence end ("." then space), so "3.5" stays whole.
_SPAN_END = re.compile(r"\n|[.!?;](?=\s|$)")
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.DOTALL)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")


def _clean(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\u2013", "-")  # unicode minus / en dash
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    return _LATEX_TEXT.sub(r"\1", text)


def _plain(text: str) -> str:
    """Markdown emphasis and code marks removed, so "**Answer:** 12" reads "Answer: 12"."""
    return re.sub(r"\*\*|__|`", "", text)


def _boxed(text: str) -> list[str]:
    return [m.group(1) for m in _BOXED.finditer(text)]


def _answer_spans(text: str) -> list[str]:
    spans = []
    for m in _ANSWER_PHRASE.finditer(text):
        rest = text[m.end() : m.end() + 300]
        end = _SPAN_END.search(rest)
        span = rest[: end.start()] if end else rest
        # "The answer is not 5, it is 6": a denial states no answer.
        if span.strip() and not re.match(r"\s*not\b", span, re.IGNORECASE):
            spans.append(span)
    return spans


def _bold(text: str) -> list[str]:
    return [(m.group(1) or m.group(2)).strip() for m in _BOLD.finditer(text)]


def _explicit_spans(text: str) -> list[tuple[str, str, bool]]:
    """(source, span, strict) in decreasing priority; within a source the last one first (models restate).

    strict: the answer must *begin* the span. Bold text is often a heading ("**Step 1: check**"), so only a
    bold span that starts with the answer counts.
    """
    plain = _plain(text)
    out = [("boxed", s, False) for s in reversed(_boxed(text))]
    out += [("answer-phrase", s, False) for s in reversed(_answer_spans(plain))]
    out += [("bold", s, True) for s in reversed(_bold(text))]
    return out


# --- numbers ------------------------------------------------------------------------------------------------

# Not inside a word or another number; thousands commas only in groups of three; no ordinals ("2nd").
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)(?!(?:st|nd|rd|th)\b)")
_FRACTION_GAP = re.compile(r"\s*/\s*")
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_SCALE_AFTER = re.compile(r"[ \t]+(hundred|thousand|million|billion)\b", re.IGNORECASE)

_ONES = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_BIG = {w: v for w, v in _SCALES.items() if v >= 1000}
# "no one", "each one", "which one": a pronoun, not the number 1.
_PRONOUN_ONE_AFTER = {"no", "each", "every", "any", "the", "this", "that", "which", "another"}
_WORD_GAP = re.compile(r"[ \t]*-?[ \t]*")  # "twenty-one", "one hundred"
_NUMBER_VOCAB = set(_ONES) | set(_TENS) | set(_BIG) | {"hundred", "and", "a", "negative"}


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    value: Fraction
    words: bool  # spelled out ("twelve") rather than digits


def parse_number(text: str) -> Fraction | None:
    """A number written with digits ("-1,234.5", "$12", "50%", "3/4") or words ("twenty-one"), else None."""
    text = _clean(text).strip()
    mentions = _number_mentions(text)
    if len(mentions) != 1:
        return None
    rest = text[: mentions[0].start] + text[mentions[0].end :]
    return mentions[0].value if re.fullmatch(r"[\s$%.]*", rest) else None


def _digit_mentions(text: str) -> list[_Mention]:
    found = []
    for m in _NUMBER.finditer(text):
        value, end = Fraction(m.group().replace(",", "")), m.end()
        while scale := _SCALE_AFTER.match(text, end):  # "1.5 million"
            value, end = value * _SCALES[scale.group(1).lower()], scale.end()
        found.append(_Mention(m.start(), end, value, False))
    merged: list[_Mention] = []
    for m in found:  # "3/4" is one number, not 3 and 4
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and not prev.words
            and m.value != 0
            and _FRACTION_GAP.fullmatch(text[prev.end : m.start])
            and prev.value.denominator == 1
            and m.value.denominator == 1
        ):
            merged[-1] = _Mention(prev.start, m.end, prev.value / m.value, False)
        else:
            merged.append(m)
    return merged


def _word_mentions(text: str) -> list[_Mention]:
    """Spelled-out numbers: "twelve", "twenty-one", "a hundred", "one hundred and five", "negative three"."""
    toks = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"[A-Za-z]+", text)]
    out: list[_Mention] = []
    i = 0
    while i < len(toks):
        if toks[i][2] not in _NUMBER_VOCAB:
            i += 1
            continue
        j = i + 1  # a run of number vocabulary joined by spaces or hyphens
        while (
            j < len(toks)
            and toks[j][2] in _NUMBER_VOCAB
            and _WORD_GAP.fullmatch(text[toks[j - 1][1] : toks[j][0]])
        ):
            j += 1
        run = [t[2] for t in toks[i:j]]
        k = 0
        while k < len(run):
            parsed = _parse_number_words(run, k)
            if parsed is None:
                k += 1
                continue
            value, end = parsed
            if run[k : end] == ["one"] and i + k > 0 and toks[i + k - 1][2] in _PRONOUN_ONE_AFTER:
                k = end
                continue
            out.append(_Mention(toks[i + k][0], toks[i + end - 1][1], Fraction(value), True))
            k = end
        i = j
    return out


def _parse_number_words(run: list[str], i: int) -> tuple[int, int] | None:
    """One number starting at run[i]: (value, index after it), or None. "one two" is two numbers, not 3."""

    def below_hundred(j: int) -> tuple[int, int] | None:
        if j < len(run) and run[j] in _TENS:
            if j + 1 < len(run) and run[j + 1] in _ONES and 1 <= _ONES[run[j + 1]] <= 9:
                return _TENS[run[j]] + _ONES[run[j + 1]], j + 2
            return _TENS[run[j]], j + 1
        if j < len(run) and run[j] in _ONES:
            return _ONES[run[j]], j + 1
        return None

    def below_thousand(j: int) -> tuple[int, int] | None:
        nxt = run[j + 1] if j + 1 < len(run) else None
        if run[j] == "a" and nxt == "hundred":
            head, j = (1, j + 1)
        elif run[j] == "a" and nxt in _BIG:
            return 1, j + 1  # "a thousand": the scale word follows
        else:
            got = below_hundred(j)
            if got is None:
                return None
            head, j = got
            if j >= len(run) or run[j] != "hundred":
                return head, j
        value, j = head * 100, j + 1  # consume "hundred"
        k = j + 1 if j < len(run) and run[j] == "and" else j
        tail = below_hundred(k)
        return (value + tail[0], tail[1]) if tail else (value, j)

    negative = run[i] == "negative"
    j = i + 1 if negative else i
    if j >= len(run):
        return None
    group = below_thousand(j)
    if group is None:
        return None
    value, j = group
    total, last_scale = 0, float("inf")
    while j < len(run) and run[j] in _BIG and _BIG[run[j]] < last_scale:
        total += value * _BIG[run[j]]
        last_scale, j = _BIG[run[j]], j + 1
        k = j + 1 if j < len(run) and run[j] == "and" else j
        group = below_thousand(k) if k < len(run) else None
        if group is None:
            value = 0
            break
        value, j = group
    total += value
    return (-total if negative else total), j


def _number_mentions(text: str) -> list[_Mention]:
    return sorted(_digit_mentions(text) + _word_mentions(text), key=lambda m: m.start)


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 15  # exact for terminating decimals of this size; 1/3 -> 0.333333333333333
        dec = (Decimal(value.numerator) / Decimal(value.denominator)).normalize()
    return format(dec, "f")


_OPERATOR_NEXT = re.compile(r"\s*[-+*/×÷x]\s*(?:\d|\()")


def _number_in_span(span: str, strict: bool) -> Fraction | None:
    mentions = _number_mentions(span)
    if not mentions:
        return None
    first = mentions[0]
    if strict:
        lead_ok = re.fullmatch(r"[\s$]*", span[: first.start])
        tail_ok = re.fullmatch(r"[\s%]*(?:[A-Za-z]+)?[\s.!]*", span[first.end :])
        return first.value if lead_ok and tail_ok and len(mentions) == 1 else None
    if _OPERATOR_NEXT.match(span, first.end):
        # "The answer is 3 + 4 = 7": the result follows the "="; with no "=" there is no result to take.
        eq = span.find("=", first.end)
        after = [m for m in mentions if m.start > eq] if eq >= 0 else []
        return after[0].value if after else None
    return first.value


def _extract_number(text: str) -> Extraction:
    for source, span, strict in _explicit_spans(text):
        value = _number_in_span(span, strict)
        if value is not None:
            return Extraction(_format_number(value), source)
    mentions = _number_mentions(_plain(text))
    # Reasoning prose is full of "each one", "no one", "one of them": digits are what models compute with, so
    # a spelled-out number is the answer only when the output has no digits at all.
    digits = [m for m in mentions if not m.words]
    if digits:
        return Extraction(_format_number(digits[-1].value), "last-number")
    if mentions:
        return Extraction(_format_number(mentions[-1].value), "last-number-word")
    return Extraction(None, "no-number")


# --- multiple choice ----------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# Words that may follow an option letter: "The answer is A because ..." (unlike the article in "A dog").
_CONNECTORS = {"because", "since", "as", "and", "or", "but", "which", "so", "is", "was", "for", "with"}


def _letter_at_start(span: str, letters: str) -> tuple[str, int] | None:
    """(letter, end) when a span begins with an option letter: "B", "(B)", "B)", "option B"."""
    m = re.match(r"\s*(?:(?i:option|choice)\s+)?(\()?([A-Z])(\))?(?=[\s.,:;)!]|$)", span)
    if not m or m.group(2) not in letters:
        return None
    bracketed = m.group(1) or m.group(3)
    word_after = re.match(r"\s+([a-z]+)", span[m.end() :])
    if not bracketed and m.group(2) in "AI" and word_after and word_after.group(1) not in _CONNECTORS:
        return None  # the article "A" ("A dog") or the pronoun "I", not an option
    return m.group(2), m.end()


def _letters_anywhere(text: str, letters: str) -> set[str]:
    patterns = (
        r"\(([A-Z])\)",  # (B)
        r"(?:^|(?<=\s))([A-Z])\)",  # B)
        r"(?m)^[ \t>*-]*([A-Z])[.:](?=\s|$)",  # B. / B: at the start of a line
        r"\b(?i:option|choice)\s+([A-Z])\b",  # option B
        r"^\W*([A-Z])\W*$",  # the whole output is one letter
    )
    found = {m.group(1) for p in patterns for m in re.finditer(p, text.strip())}
    return found & set(letters)


_NOT_BEFORE = re.compile(r"(?:\bnot|n't|\brather\s+than)\s+(?:the\s+)?$", re.IGNORECASE)


def _option_texts(text: str, choices: Sequence[str]) -> set[int]:
    """Indices of options whose text occurs as whole words, ignoring one contained in another's match
    ("not plausible" contains "plausible")."""
    hits: dict[int, list[tuple[int, int]]] = {}
    for idx, choice in enumerate(choices):
        words = choice.strip()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, words.split())) + r"(?!\w)"
        spans = [
            (m.start(), m.end())
            for m in re.finditer(pattern, text, re.IGNORECASE)
            if not _NOT_BEFORE.search(text[max(0, m.start() - 20) : m.start()])  # "Paris, not London"
        ]
        if spans:
            hits[idx] = spans
    keep = set()
    for idx, spans in hits.items():
        others = [o for j, oo in hits.items() if j != idx for o in oo]
        if any(not any(o[0] <= s[0] and s[1] <= o[1] and o != s for o in others) for s in spans):
            keep.add(idx)
    return keep


def _option_at_start(span: str, choices: Sequence[str]) -> tuple[int, int] | None:
    """(index, end) of the option a span begins with ("21 because 21 > 12"); the longest if several fit."""
    for idx in sorted(range(len(choices)), key=lambda i: -len(choices[i])):
        words = choices[idx].split()
        pattern = r"[\s\"'(]*" + r"\s+".join(map(re.escape, words)) + r"(?!\w)"
        if words and (m := re.match(pattern, span, re.IGNORECASE)):
            return idx, m.end()
    return None


def _choice_in_span(span: str, choices: Sequence[str], strict: bool) -> tuple[str, int | None]:
    """('letter' | 'option-text', index) if resolved; ('ambiguous', None) if two; ('', None) if none."""
    letters = _LETTERS[: len(choices)]

    def names_another(rest: str) -> bool:  # "B or C", "red or blue"
        alternative = re.match(r"\W*(?:or|and|/)\W*", rest, re.IGNORECASE)
        tail = rest[alternative.end() :] if alternative else ""
        return bool(alternative) and bool(_letter_at_start(tail, letters) or _option_at_start(tail, choices))

    if (got := _letter_at_start(span, letters)) is not None:
        letter, end = got
        return ("ambiguous", None) if names_another(span[end:]) else ("letter", letters.index(letter))
    if strict:
        stripped = re.sub(r"^[\s(]+|[\s).!,:]+$", "", span).lower()
        matches = [i for i, c in enumerate(choices) if c.strip().lower() == stripped]
        return ("option-text", matches[0]) if len(matches) == 1 else ("", None)
    if (first := _option_at_start(span, choices)) is not None:
        idx, end = first
        return ("ambiguous", None) if names_another(span[end:]) else ("option-text", idx)
    found = _option_texts(span, choices)
    if len(found) == 1:
        return "option-text", found.pop()
    return ("ambiguous", None) if found else ("", None)


def _extract_choice(text: str, choices: Sequence[str]) -> Extraction:
    if not choices:
        raise ValueError("extract_answer: answer_type 'choice' needs the option texts in `choices`")
    if len(choices) > len(_LETTERS):
        raise ValueError(f"extract_answer: at most {len(_LETTERS)} options are supported, got {len(choices)}")
    for source, span, strict in _explicit_spans(text):
        kind, idx = _choice_in_span(span, choices, strict)
        if idx is not None:
            return Extraction(choices[idx], f"{source}:{kind}")
        if kind == "ambiguous":
            return Extraction(None, "ambiguous-choice")
    plain = _plain(text)
    letters = _letters_anywhere(plain, _LETTERS[: len(choices)])
    if len(letters) == 1:
        return Extraction(choices[_LETTERS.index(letters.pop())], "letter")
    if len(letters) > 1:
        return Extraction(None, "ambiguous-choice")
    found = _option_texts(plain, choices)
    if len(found) == 1:
        return Extraction(choices[found.pop()], "option-text")
    return Extraction(None, "ambiguous-choice" if found else "no-choice")


# --- yes/no-type answers ------------------------------------------------------------------------------------

_POLARITY = {
    "yes": True, "no": False,
    "true": True, "false": False,
    "valid": True, "invalid": False,
    "plausible": True, "implausible": False,
    "correct": True, "incorrect": False,
}  # fmt: skip
_POLAR_WORD = re.compile(r"\b(" + "|".join(_POLARITY) + r")\b", re.IGNORECASE)
# "not valid", "isn't plausible", "not entirely plausible": negation flips an adjective (never yes/no).
_NEGATION_BEFORE = re.compile(r"(?:\bnot|n't)\s+(?:(?:\w+ly|very|quite|so|really|that)\s+)?$", re.IGNORECASE)
# As a determiner ("no one", "no reason") "no" is not an answer; as an answer it ends its clause.
_ANSWER_WORD_END = re.compile(r"\s*(?:[,.!?;:\n]|$)")


def _polarities(text: str, vocab: set[str], *, answers_only: bool) -> list[bool]:
    out = []
    for m in _POLAR_WORD.finditer(text):
        word = m.group(1).lower()
        if word not in vocab:
            continue
        if word in ("yes", "no"):
            if word == "no" and answers_only and not _ANSWER_WORD_END.match(text, m.end()):
                continue
            out.append(_POLARITY[word])
        else:
            negated = _NEGATION_BEFORE.search(text[max(0, m.start() - 40) : m.start()]) is not None
            out.append(_POLARITY[word] != negated)
    return out


def _yesno_choices(choices: Sequence[str]) -> dict[bool, str]:
    if not choices:
        return {True: "yes", False: "no"}
    pols = {c: _POLARITY.get(c.strip().lower()) for c in choices}
    if len(choices) != 2 or set(pols.values()) != {True, False}:
        raise ValueError(
            "extract_answer: a yes/no task needs one positive and one negative choice among "
            f"{sorted(_POLARITY)}, got {list(choices)}"
        )
    return {pol: c for c, pol in pols.items()}


def _extract_yesno(text: str, choices: Sequence[str]) -> Extraction:
    canon = _yesno_choices(choices)
    everything = set(_POLARITY)
    plain = _plain(text)

    def decide(pols: list[bool], method: str) -> Extraction | None:
        if not pols:
            return None
        if len(set(pols)) > 1:
            return Extraction(None, "ambiguous-yesno")
        return Extraction(canon[pols[0]], method)

    for source, span, strict in _explicit_spans(text):
        if strict:  # a bold span counts only when it is the answer word itself ("**Yes**", "**Valid.**")
            m = re.fullmatch(r"\W*(\w+)\W*", span)
            pols = [_POLARITY[m.group(1).lower()]] if m and m.group(1).lower() in _POLARITY else []
        else:  # the stated answer comes first: "The answer is no, because ... not valid"
            pols = _polarities(span, everything, answers_only=False)[:1]
        if (got := decide(pols, source)) is not None:
            return got
    # "Yes, because ..." / "No." / "Invalid - ...": a leading answer word decides.
    lead = re.match(r"[\s\"'(>*-]*(\w+)(?=\s*(?:[,.!;:\n—-]|$))", plain)
    if lead and lead.group(1).lower() in _POLARITY:
        return Extraction(canon[_POLARITY[lead.group(1).lower()]], "leading-word")
    # Anywhere in the text: the task's own words first ("valid"/"invalid"), then any yes/no-type word.
    own = {c.strip().lower() for c in canon.values()}
    for vocab, method in ((own, "answer-word"), (everything, "mapped-word")):
        if (got := decide(_polarities(plain, vocab, answers_only=True), method)) is not None:
            return got
    return Extraction(None, "no-yesno")


# --- free text ----------------------------------------------------------------------------------------------


def _norm_text(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.casefold()).split())


def _extract_text(text: str) -> Extraction:
    for source, span, _strict in _explicit_spans(text):
        if _norm_text(span):
            return Extraction(span.strip(), source)
    return Extraction(_plain(text).strip(), "whole-response")


# --- a restated question ------------------------------------------------------------------------------------

# A response this much made of the question's own word pairs adds nothing of its own: it says the question back.
RESTATED_SHARE = 0.8


def _bigrams(text: str) -> list[tuple[str, str]]:
    words = _norm_text(text).split()
    return list(zip(words, words[1:]))


def restates_question(response: str | None, questions: Sequence[str]) -> bool:
    """Whether ``response`` only says the question back: >= 4 words, and >= 80% of its word pairs occur in one
    of ``questions`` (the typed and the spoken wording). Its numbers are the question's operands, so scoring
    its last one would reward a parrot (the demo student repeated spoken questions and "answered" 34 counting
    items right that way, reports/demo/align.md); "I have two tomatoes and a pepper, so 3" adds pairs of its
    own and is not a restatement."""
    pairs = _bigrams(response or "")
    if len(pairs) < 3:
        return False
    asked = {p for q in questions for p in _bigrams(q)}
    return sum(p in asked for p in pairs) >= RESTATED_SHARE * len(pairs)


# --- public API ---------------------------------------------------------------------------------------------


def extract_answer(response: str | None, answer_type: str, choices: Sequence[str] = ()) -> Extraction:
    """The answer a model gave, in the task's canonical form, or ``value=None`` with the reason.

    answer_type: "number" (value like "12", "-3.5"), "choice" (value is one of ``choices``, the option texts,
    lettered A, B, C, ...), "yesno" (value is one of ``choices``, e.g. ("Yes", "No"), ("valid", "invalid"),
    ("True", "False"); any yes/no-type word maps onto them by polarity), "text" (the stated answer, verbatim).
    """
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"extract_answer: unknown answer_type {answer_type!r}; one of {ANSWER_TYPES}")
    if response is None or not response.strip():
        return Extraction(None, "empty")
    text = _clean(response)
    if answer_type == "number":
        return _extract_number(text)
    if answer_type == "choice":
        return _extract_choice(text, choices)
    if answer_type == "yesno":
        return _extract_yesno(text, choices)
    return _extract_text(text)


def is_correct(extraction: Extraction, gold: str, answer_type: str) -> bool:
    """Whether an extraction matches the gold answer; failed extractions are wrong. Numbers compare by value
    ("12.0" = "12", "1,200" = "1200"), yes/no answers by polarity ("Yes" = "valid"), options and text by
    case- and punctuation-insensitive equality."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"is_correct: unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")
    if extraction.value is None:
        return False
    if answer_type == "number":
        want = parse_number(gold)
        if want is None:
            raise ValueError(f"is_correct: gold answer {gold!r} is not a number")
        got = parse_number(extraction.value)
        return got is not None and abs(got - want) <= Fraction(1, 10**9) * max(1, abs(want))
    if answer_type == "yesno":
        want_pol = _POLARITY.get(gold.strip().lower())
        if want_pol is None:
            raise ValueError(f"is_correct: gold answer {gold!r} is not a yes/no-type word {list(_POLARITY)}")
        return _POLARITY.get(extraction.value.strip().lower()) == want_pol
    return _norm_text(extraction.value) == _norm_text(gold)
