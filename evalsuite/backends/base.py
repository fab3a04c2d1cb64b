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

    # Prompt preparation and answer decoding are the same for every backend: subclasses set the model's
    # tokenizer, processor, spec and stop ids, say where a cascade's ASR comes from (``asr``), and how long a
    # prompt may be.
    tokenizer: Any
    processor: Any  # a speech LLM's processor
    spec: Any  # evalsuite.backends.resolve.ModelSpec (``placeholder``: a speech LLM's audio placeholder)
    stop_ids: list[int]
    max_model_len: int | None
    asr_batch_size: int

    def render(self, messages: list[dict[str, Any]]) -> Any:
        """The prompt a speech or text request becomes (a cascade renders after transcription)."""
        from evalsuite.backends.prompts import render_speech, render_text  # late: see prepare_prompts

        if self.kind == "speech":
            return render_speech(self.processor, messages, self.spec.placeholder, self.model_id)
        return render_text(self.tokenizer, messages, self.model_id)

    def answer(self, generated: list[int], prompt: Any, prompt_tokens: int) -> Result:
        """The Result of the ``generated`` ids for ``prompt``: cut at the first stop id, decoded without
        special tokens; ``meta`` has the finish reason, the prompt's length and the prompt's own meta."""
        from evalsuite.backends.prompts import cut_at_eos  # late: see prepare_prompts

        ids, reason = cut_at_eos(generated, self.stop_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        meta = {"finish_reason": reason, "prompt_tokens": prompt_tokens, **prompt.meta}
        return Result(text, ids, None, meta)

    def asr(self) -> Any:
        """The cascade's ASR (loaded on first use)."""
        raise NotImplementedError

    def too_long(self, n_tokens: int) -> str:
        return f"prompt has {n_tokens} tokens; {self.model_id!r} takes at most {self.max_model_len}"

    def prepare_prompts(
        self, requests: list[Request], progress: Progress | None = None
    ) -> tuple[dict[int, Any], list[Result | None]]:
        """Render every request; one that cannot be rendered gets its failed Result (and counts as finished to
        ``progress``), the others a prompt."""
        # late: both import torch and transformers (through xopd), which `import evalsuite.backends` avoids
        from evalsuite.backends.asr import transcribe_requests
        from evalsuite.backends.prompts import RequestError, audios_of, check_messages, render_text, replace_audio

        results: list[Result | None] = [None] * len(requests)
        prompts: dict[int, Any] = {}
        if self.kind == "cascade":
            audio_lists: dict[int, list] = {}
            for i, r in enumerate(requests):
                try:
                    audio_lists[i] = audios_of(check_messages(r.messages))
                except RequestError as exc:
                    results[i] = Result.failed(str(exc))
            asr = self.asr() if any(audio_lists.values()) else None
            for i, texts in transcribe_requests(asr, audio_lists, self.asr_batch_size).items():
                if isinstance(texts, str):  # transcription failed for this request
                    results[i] = Result.failed(texts)
                    continue
                try:
                    prompts[i] = render_text(self.tokenizer, replace_audio(requests[i].messages, texts), self.model_id)
                except RequestError as exc:
                    results[i] = Result.failed(str(exc))
                    continue
                prompts[i].meta["heard"] = texts
        else:
            for i, r in enumerate(requests):
                try:
                    prompts[i] = self.render(r.messages)
                except RequestError as exc:
                    results[i] = Result.failed(str(exc))
        for i, p in list(prompts.items()):
            if self.max_model_len and len(p.ids) > self.max_model_len:
                results[i] = Result.failed(self.too_long(len(p.ids)))
                del prompts[i]
        if progress and len(prompts) < len(requests):
            progress(len(requests) - len(prompts))
        return prompts, results

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
