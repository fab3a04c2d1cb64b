"""Spoken requests from outside the task mix, for behaviour alignment: the clip must make the LLM respond as
the typed request would.

Content objectives alone (:mod:`xopd.world.objectives`) leave the demo student saying spoken questions back:
it follows the instructions it was aligned on and falls back to transcribing under any other, including the
mix's own answer formats and an audio-only request (reports/demo/align.md). BLSP (Wang et al. 2023) aligns
behaviour instead: the target is the LLM's own response to the transcript. On the mix's questions that
response is the student's answer (its tuned LLM answers even "summarise what you heard"), which alignment must
never train on, so the requests come from other reasoning-gym generators, none of which is in the mix or close
to it (no arithmetic chains, object counting, syllogisms or family relations): letter counting, weekdays of
dates, coin-flip probabilities, word reordering.

Each request is said aloud (numbers as words, ``evalsuite.spoken_form.say``) and sent either whole, with no
text beside the clip (as the family task is asked), or with its last sentence sent as the text instruction
beside the clip (as the other tasks are asked) where it has one; a hash of the text picks which.

With ``formats="mix"`` a request whose reference answer is a number, yes/no or one word is asked in the mix's
own answer format instead (:data:`FORMATS`), as evaluation asks the mix's questions: alignment on other
instructions leaves the student saying the question back under these (align v3). The reference answer is read
for its type only; the target stays the responding LLM's own reply.
"""

from __future__ import annotations

import hashlib
import re

from evalsuite.spoken_form import say
from evalsuite.tasks.task import speakable

DEFAULT_RESPOND_FROM = "letter_counting,calendar_arithmetic,coin_flip,sentence_reordering"
MAX_CHARS = 240  # a ~15 s clip at most
_SPEAKABLE = re.compile(r"^[A-Za-z0-9 ,.?'!:;\-\n\"]+$")  # no layout or symbols a voice cannot say
_LAST_SENTENCE = re.compile(r"^(.+[.?!])\s+([A-Z][^.?!]*[.?!])$", re.DOTALL)


# the default mix's answer formats: sums and counting, syllogism (text beside the clip); family says its own
# inside the spoken question, so the word format is spoken, not sent as text
FORMATS = {"number": "Answer with the number only.", "yes-no": "Answer yes or no.", "word": "Answer with a single word."}
SPOKEN_FORMATS = ("word",)
# a request's own answer-format line ("Answer with Yes or No.", "Respond with just the number.")
_FORMAT_LINE = re.compile(r"^(Answer|Respond|Reply|Express|Give|Write|Name|State|Provide|Enter|Use)\b")


def answer_format(answer: str) -> str | None:
    """The :data:`FORMATS` kind a reference answer fits, or None (a sentence, a fraction, ...)."""
    a = answer.strip()
    if re.fullmatch(r"-?\d+", a):
        return "number"
    if a.lower() in ("yes", "no"):
        return "yes-no"
    return "word" if re.fullmatch(r"[A-Za-z]+", a) else None


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def split_request(question: str) -> tuple[str, str]:
    """(spoken words, text instruction): the whole request spoken and no instruction, or for about half of the
    requests that end in a separate sentence, that sentence as the instruction."""
    spoken = speakable(say(question))
    m = _LAST_SENTENCE.match(spoken)
    if m and _unit(f"split:{question}") < 0.5:
        return m.group(1), m.group(2)
    return spoken, ""


def in_mix_format(question: str, kind: str) -> tuple[str, str]:
    """(spoken words, text instruction) of a request asked in the mix's format ``kind``: its own closing format
    sentence, if it has one, gives way to the mix's (a closing sentence that is not a format line stays)."""
    spoken = speakable(say(question))
    m = _LAST_SENTENCE.match(spoken)
    body = m.group(1) if m and _FORMAT_LINE.match(m.group(2)) else spoken
    if kind in SPOKEN_FORMATS:
        return f"{body} {FORMATS[kind]}", ""
    return body, FORMATS[kind]


def respond_requests(datasets: list[str], per_dataset: int, seed: int,
                     formats: str = "none") -> dict[str, list[tuple[str, str]]]:
    """``respond/<dataset>`` -> [(spoken words, instruction)], ``per_dataset`` speakable requests of each;
    ``formats="mix"``: those whose answer fits one of the mix's formats are asked in it."""
    if formats not in ("none", "mix"):
        raise SystemExit(f"--respond-formats {formats}: one of none, mix")
    import reasoning_gym  # late: slow to import

    out = {}
    for name in datasets:
        found: list[tuple[str, str]] = []
        size = 4 * per_dataset
        rows = reasoning_gym.create_dataset(name, size=size, seed=seed + 1000)
        for entry in rows:
            q = entry["question"]
            if len(q) <= MAX_CHARS and _SPEAKABLE.match(q):
                kind = answer_format(str(entry["answer"])) if formats == "mix" else None
                found.append(in_mix_format(q, kind) if kind else split_request(q))
            if len(found) == per_dataset:
                break
        if not found:
            raise SystemExit(f"--respond-from {name}: no request of {size} is short and speakable")
        out[f"respond/{name}"] = found
    return out
