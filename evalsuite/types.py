"""The few types every part of the evalsuite speaks: items, task specs, requests, decoding parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AnswerType = Literal["number", "choice", "yesno", "text"]


@dataclass(frozen=True)
class Item:
    """One benchmark question, shared by its text and speech versions (that pairing is the whole point)."""

    id: str  # stable within a task, e.g. "navigate/0042"
    question: str  # the question as typed
    answer: str  # gold answer in canonical form: "12", "yes"/"no", "True"/"False", or the option text
    choices: tuple[str, ...] = ()  # option texts for multiple choice (letters are assigned A, B, C, ...)
    spoken: str | None = None  # spoken-style wording for TTS; None means speak `question`
    audio: str | None = None  # path to a real recording (hub datasets like Big Bench Audio); None → TTS
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenParams:
    """Decoding parameters; part of every cache key."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Request:
    """One generation: chat messages whose content may hold ``{"type": "audio", "audio": np.ndarray}`` parts
    (16 kHz mono float32) and ``{"type": "text", "text": ...}`` parts."""

    key: str  # cache key (hash of everything that changes the answer)
    messages: list[dict[str, Any]]
