"""How a written prompt is said aloud: numbers and arithmetic symbols become words before any TTS sees them.

TTS engines read symbols badly (espeak-ng reads "What is 5 - 2 - 4 =" so that Whisper hears "5, 2, 4
equals"), and a listener cannot hear layout. ``say`` rewrites a text prompt into the words a person would
speak, so both modalities ask the same thing:

    "What is 34 + 5 - 12?"                     -> "What is thirty four plus five minus twelve?"
    "1. All cats are animals"                  -> "First, all cats are animals"
    "-7 * 3 = ?"                               -> "minus seven times three equals ?"

``content_tokens`` is the check's other half: the numbers and operator words of a sentence in order, read
from digits or number words alike, so a Whisper transcript ("What is 34 plus 5 minus 12?") can be compared
with what was said.
"""

from __future__ import annotations

import re

from evalsuite.textnorm import number_words

OPERATOR_WORDS = {"+": "plus", "-": "minus", "−": "minus", "*": "times", "×": "times", "x": "times",
                  "/": "divided by", "÷": "divided by", "=": "equals"}  # fmt: skip
_ORDINALS = "First Second Third Fourth Fifth Sixth Seventh Eighth Ninth Tenth".split()
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_BINARY_OP = re.compile(r"(?<=[\d)])[ \t]*([+\-−*×/÷])[ \t]*(?=[\d(\-−])|(?<=[\d)])[ \t]+(x)[ \t]+(?=\d)")
_UNARY_MINUS = re.compile(rf"(?<![\w)])[-−](?=\d)")
_NUMBER = re.compile(_NUM)
_LIST_ITEM = re.compile(r"^\s*(\d{1,2})[.)]\s+(\w)", re.M)


def _say_number(text: str) -> str:
    whole, _, frac = text.replace(",", "").partition(".")
    words = number_words(int(whole))
    if frac:
        words += " point " + " ".join(number_words(int(d)) for d in frac)
    return words


def say(text: str) -> str:
    """``text`` with list numbering, arithmetic operators and numbers spelled out as spoken words."""

    def list_item(m: re.Match) -> str:
        k = int(m.group(1))
        first = m.group(2)
        return f"{_ORDINALS[k - 1]}, {first.lower() if k <= len(_ORDINALS) else first}" if 1 <= k <= len(_ORDINALS) else m.group(0)

    text = _LIST_ITEM.sub(list_item, text)
    text = _BINARY_OP.sub(lambda m: f" {OPERATOR_WORDS[m.group(1) or m.group(2)]} ", text)
    text = re.sub(r"[ \t]*=[ \t]*", " equals ", text)
    text = _UNARY_MINUS.sub("minus ", text)
    text = _NUMBER.sub(lambda m: _say_number(m.group(0)), text)
    text = re.sub(r"[ \t]+([?.!,;:])", r"\1", text)
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


_WORD_VALUE = {w: i for i, w in enumerate(number_words(i) for i in range(20))}
_WORD_VALUE.update({number_words(10 * k): 10 * k for k in range(2, 10)})
_SCALE = {"hundred": 100, "thousand": 1000, "million": 10**6}
_OPS = {"plus", "minus", "times", "divided", "equals"}


def content_tokens(text: str) -> list[str]:
    """The numbers (as digit strings) and operator words of ``text``, in order; digits and number words are
    read alike ("34" and "thirty-four" both give "34"; "a" and list ordinals are not numbers)."""
    words = re.sub(r"[^a-z0-9.]+", " ", re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())).split()
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i].strip(".")
        if re.fullmatch(r"\d+(\.\d+)?", w):
            out.append(w)
            i += 1
            continue
        if w in _WORD_VALUE:
            total, current = 0, 0
            while i < len(words) and (words[i].strip(".") in _WORD_VALUE or words[i].strip(".") in _SCALE):
                v = words[i].strip(".")
                if v in _SCALE:
                    current = max(current, 1) * _SCALE[v]
                    if _SCALE[v] >= 1000:
                        total, current = total + current, 0
                elif current % 100 >= 20 and _WORD_VALUE[v] < 10 and current % 10 == 0:
                    current += _WORD_VALUE[v]  # "thirty four"
                elif current and (current % 100 != 0 or _WORD_VALUE[v] >= 100):
                    break  # "five two" is two numbers
                else:
                    current += _WORD_VALUE[v]
                i += 1
            out.append(str(total + current))
            continue
        if w in _OPS:
            out.append(w)
        i += 1
    return out


def keeps_content(said: str, heard: str) -> bool:
    """Whether every number and operator word of ``said`` comes through in ``heard``, in order."""
    want, got = content_tokens(said), iter(content_tokens(heard))
    return all(any(tok == g for g in got) for tok in want)
