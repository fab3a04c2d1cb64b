"""What the demo student's audio path is aligned on: content objectives under varied instructions.

Each objective is an instruction sent as text beside the clip (as evaluation sends a task's instruction) and a
target that is a pure function of the words spoken: the transcript, its last word, its first words, the words
in capitals, whether a given word was spoken. None of them is an answer to the spoken question, so alignment
teaches hearing, not the tasks.

Why several: a projector aligned under the transcription instruction alone learned to carry "transcribe" in
the audio embeddings; the step-967 student then said back 99% of spoken questions instead of answering them,
whatever instruction came with the clip (reports/demo/align.md). When the instruction varies and decides the
target, the audio has to carry only what was said.

Behaviour alignment (the LLM's own response as the target) lives in :mod:`xopd.world.respond_pool`: on these
questions the student's own response is its answer.

Per batch slot the objective is drawn by a hash of (seed, step, slot), like the voice: no state to resume.
``--objectives`` lists names; a name given twice is drawn twice as often.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from xopd.prompting import TRANSCRIBE_INSTRUCTION

__all__ = ["DEFAULT_OBJECTIVES", "OBJECTIVES", "Objective", "objective_for", "parse_objectives", "words"]


def words(text: str) -> list[str]:
    """The spoken words, punctuation dropped ("What is six minus eight?" -> What, is, six, minus, eight)."""
    return re.findall(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?", text)


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


@dataclass(frozen=True)
class Objective:
    """``make(spoken, other, key) -> (instruction, target)``: ``other`` is another clip's text (distractor
    words), ``key`` a string that seeds the objective's own choices (which word to ask about)."""

    name: str
    make: Callable[[str, str, str], tuple[str, str]]


def _heard_word(spoken: str, other: str, key: str) -> tuple[str, str]:
    # Content words only: "is", "a" are in nearly every question and would make "yes" free.
    here = [w for w in words(spoken) if len(w) > 3]
    absent = [w for w in words(other) if len(w) > 3 and w.lower() not in {h.lower() for h in words(spoken)}]
    ask_absent = bool(absent) and _unit(f"{key}:polarity") < 0.5
    pool = absent if ask_absent or not here else here
    word = pool[int(_unit(f"{key}:word") * len(pool))].lower() if pool else "question"
    heard = word in {w.lower() for w in words(spoken)}
    return f'Did you hear the word "{word}"? Reply yes or no.', "yes" if heard else "no"


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("transcribe", lambda s, o, k: (TRANSCRIBE_INSTRUCTION, s)),
        Objective("you-said", lambda s, o, k: ('Say back what you heard, starting with "You said:".',
                                               f"You said: {s}")),
        Objective("last-word", lambda s, o, k: ("What was the last word you heard? Reply with that word only.",
                                                words(s)[-1] if words(s) else "")),
        Objective("first-words", lambda s, o, k: ("Write the first four words you heard, nothing else.",
                                                  " ".join(words(s)[:4]))),
        Objective("capitals", lambda s, o, k: ("Write what you heard in capital letters.", s.upper())),
        Objective("heard-word", _heard_word),
    )
}
DEFAULT_OBJECTIVES = "transcribe,transcribe,you-said,last-word,first-words,capitals,heard-word"


def parse_objectives(spec: str) -> list[Objective]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise SystemExit(f"--objectives {spec!r}: unknown {unknown or 'empty'}; known: {', '.join(OBJECTIVES)}")
    return [OBJECTIVES[n] for n in names]


def objective_for(objectives: list[Objective], seed: int, step: int, slot: int) -> Objective:
    """The objective of batch slot ``slot`` at ``step``: a pure function of (seed, step, slot)."""
    return objectives[int(_unit(f"objective:{seed}:{step}:{slot}") * len(objectives))]
