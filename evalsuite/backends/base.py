"""The backend interface: a model behind ``generate(requests, params) -> results``, whatever runs it.

In the spirit of lm-evaluation-harness's ``LM`` class, but for chat requests that may carry audio. A
backend never raises for one bad request: that request's :class:`Result` carries an ``error`` string and the
batch goes on (a backend that dies on item 731 of 1000 over one bad WAV is the failure this rules out).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evalsuite.types import GenParams, Request

KINDS = ("speech", "text", "cascade")
Progress = Callable[[int], None]


@dataclass
class Result:
    """One generation. ``token_ids`` are the generated ids up to, not including, the first end-of-sequence id;
    ``text`` is their decoding with special tokens skipped. ``meta`` holds extras that reports can use:
    ``finish_reason`` ("stop" = an EOS id ended it, "length" = max_new_tokens did), ``prompt_tokens``, and
    for a cascade ``heard`` (the ASR transcripts that replaced the audio)."""

    text: str
    token_ids: list[int]
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, error: str) -> Result:
        return cls(text="", token_ids=[], error=error)

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend(ABC):
    """A model that answers chat requests.

    ``name`` is the backend ("hf" | "vllm"), ``model_id`` what the user passed (zoo name, HF id, path or
    ``cascade:...``), ``kind`` one of "speech" | "text" | "cascade". Constructors are cheap (config,
    tokenizer); weights load on the first ``generate`` that has work to do, so a rerun whose
    answers all come from the cache never starts an engine.
    """

    name: str
    model_id: str
    kind: str

    @abstractmethod
    def fingerprint(self) -> str:
        """sha256 hex over everything of the model that changes an answer (config, weights' content,
        tokenizer, chat template, generation config), the backend name and the numerics settings (dtype, ...).
        Stable across processes."""

    @abstractmethod
    def generate(
        self, requests: list[Request], params: GenParams, *, progress: Progress | None = None
    ) -> list[Result]:
        """One :class:`Result` per request, in the order given; ``progress(n)`` is called as n more finish."""

    def close(self) -> None:  # noqa: B027 - optional; a backend with nothing to free keeps this
        """Free the weights or the engine."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, kind={self.kind!r})"


T = TypeVar("T")


def isolate_failures(
    run: Callable[[list[T]], list[Result]], items: Sequence[T], describe: Callable[[BaseException], str] = str
) -> list[Result]:
    """``run(items)``; if it raises, split in halves and retry, so that one bad request fails alone.

    Why: vLLM rejects a whole ``generate`` call when one prompt is too long, and a transformers batch fails as
    a whole on a shape error. Cost is O(k log n) extra calls for k bad requests, nothing when all are good.
    """
    items = list(items)
    if not items:
        return []
    try:
        results = run(items)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one request must not end the batch
        if len(items) == 1:
            return [Result.failed(f"{type(exc).__name__}: {describe(exc)}")]
        mid = len(items) // 2
        return isolate_failures(run, items[:mid], describe) + isolate_failures(run, items[mid:], describe)
    if len(results) != len(items):
        raise RuntimeError(f"backend returned {len(results)} results for {len(items)} requests")
    return results
