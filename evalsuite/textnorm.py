"""English text normalisation for word error rates, in the spirit of Whisper's English normaliser.

Whisper writes "12" where a prompt says "twelve": both sides are lower-cased, digits are spelled out and
punctuation is dropped before jiwer counts errors.
"""

from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {word}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def normalize(text: str) -> str:
    text = text.lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = text.replace("'", "")  # "it's" ~ "its": apostrophes are spelling, not words
    text = re.sub(r"[^a-z]+", " ", text)  # punctuation and hyphens ("twenty-five") become spaces
    return " ".join(text.split())


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus-level WER (total errors / total reference words) on normalised text."""
    import jiwer  # late: slow to import; only the WER checks need it

    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])
