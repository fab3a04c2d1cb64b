"""From chat messages to what a model reads: checks, audio extraction and chat-template rendering.

Both backends build prompts here, so hf and vllm see the same token ids for the same request; the rendering
itself is :mod:`xopd.prompting`'s, the trainer's, so a model is evaluated on the prompt it was trained on. The
model's own chat template renders the prompt (for a speech model, its processor's, which turns an audio part
into the family's placeholder such as ``<|audio_bos|><|AUDIO|><|audio_eos|>``); the rendered text is tokenized
once.
Problems with one request raise :class:`RequestError`, which the backends turn into that request's error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xopd import prompting
from xopd.audio import SAMPLE_RATE, AudioFormatError, checked_audio  # noqa: F401 (SAMPLE_RATE: the backends')
from xopd.loading import eos_ids_of

ROLES = ("system", "user", "assistant")


class RequestError(ValueError):
    """This request cannot be answered by this model (the others still can)."""


def check_audio(audio: Any, where: str) -> np.ndarray:
    """A 16 kHz mono float array as float32, or a RequestError that says what is wrong with it
    (:func:`xopd.audio.checked_audio`, the trainer's check)."""
    try:
        return checked_audio(audio)
    except AudioFormatError as exc:
        raise RequestError(f"{where}: {exc}") from None


def iter_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(message index, part) for every content part; a string content is one text part."""
    for i, m in enumerate(messages):
        content = m["content"]
        if isinstance(content, str):
            yield i, {"type": "text", "text": content}
        else:
            for part in content:
                yield i, part


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The message list, checked for the shapes every template assumes; RequestError otherwise."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("request has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RequestError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RequestError(
                f"message {i}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})"
            )
        content = m["content"]
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise RequestError(f"message {i}: content must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and not isinstance(part.get("text"), str):
                raise RequestError(f"message {i} part {j}: a text part needs a string under 'text'")
            elif kind == "audio":
                check_audio(part.get("audio"), f"message {i} part {j}")
            elif kind not in ("text", "audio"):
                raise RequestError(
                    f"message {i} part {j}: unsupported part {kind!r} (expected 'text' or 'audio')"
                )
    has_text = any(p["type"] == "text" and p["text"].strip() for _, p in iter_parts(messages))
    has_audio = any(p["type"] == "audio" for _, p in iter_parts(messages))
    if not (has_text or has_audio):
        raise RequestError("request is empty: no text and no audio")
    return messages


def audios_of(messages: list[dict[str, Any]]) -> list[np.ndarray]:
    """Every audio array, in prompt order, checked and as float32."""
    return [
        check_audio(p["audio"], f"message {i}") for i, p in iter_parts(messages) if p.get("type") == "audio"
    ]


def without_audio_arrays(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audio parts reduced to ``{"type": "audio"}`` (see :func:`xopd.prompting.without_audio_arrays`)."""
    return prompting.without_audio_arrays(messages)


def text_messages(messages: list[dict[str, Any]], model_id: str) -> list[dict[str, Any]]:
    """Messages for a text LLM: text parts joined into string content (the way Qwen-style templates join a
    part list); an audio part is a RequestError, since a text model cannot hear it."""
    for i, m in enumerate(messages):
        if not isinstance(m["content"], str) and any(p.get("type") == "audio" for p in m["content"]):
            raise RequestError(
                f"message {i} holds audio, but {model_id!r} is a text LLM: give it the text version, "
                "or use a speech LLM or a cascade ('cascade:<asr>+<llm>')"
            )
    return prompting.text_only(messages)


@dataclass
class Prompt:
    """A rendered request: token ids of the chat-formatted prompt (audio placeholders not yet expanded), the
    rendered text (speech models' processors take text), and the audio arrays in placeholder order."""

    ids: list[int]
    text: str
    audios: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def length_hint(self) -> int:
        # ~25 audio embeddings per second for Whisper-style encoders (10 ms frames, two stride-2 stages).
        return len(self.ids) + sum(len(a) for a in self.audios) // 640


def render_text(tokenizer: Any, messages: list[dict[str, Any]], model_id: str) -> Prompt:
    """A text LLM's prompt: its own chat template, generation prompt added, tokenized once
    (:func:`xopd.prompting.render`, as the trainer renders it)."""
    msgs = text_messages(check_messages(messages), model_id)
    try:
        r = prompting.render(tokenizer, msgs)
    except prompting.PromptFormatError as exc:
        raise RequestError(f"{model_id!r}: {exc}") from None
    return Prompt(ids=r.ids, text=r.text)


def render_speech(processor: Any, messages: list[dict[str, Any]], placeholder: str, model_id: str) -> Prompt:
    """A speech LLM's prompt: the processor's chat template renders each audio part as ``placeholder``
    (:func:`xopd.prompting.render`, as the trainer renders it); ids with placeholders not yet expanded."""
    msgs = check_messages(messages)
    audios = audios_of(msgs)
    try:
        r = prompting.render(processor.tokenizer, msgs, processor=processor, placeholder=placeholder)
    except prompting.PromptFormatError as exc:
        raise RequestError(f"{model_id!r}: {exc}") from None
    return Prompt(ids=r.ids, text=r.text, audios=audios)


def speech_model_inputs(processor: Any, prompts: list[Prompt]) -> Any:
    """What a speech LLM reads for rendered ``prompts`` (left-padded, audio placeholders expanded, features):
    :func:`xopd.prompting.speech_inputs`, the trainer's expansion."""
    audios = [a for p in prompts for a in p.audios]
    return prompting.speech_inputs(processor, [p.text for p in prompts], audios)


def eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every end-of-sequence id (see :func:`xopd.loading.eos_ids_of`; vLLM also stops on the tokenizer's)."""
    ids = eos_ids_of(generation_config, tokenizer)
    if not ids:
        raise RequestError("the model defines no end-of-sequence token (generation_config or tokenizer)")
    return ids


def cut_at_eos(token_ids: list[int], stop: list[int]) -> tuple[list[int], str]:
    """Generated ids up to the first EOS id, and the finish reason ("stop" or "length")."""
    for i, t in enumerate(token_ids):
        if t in stop:
            return list(token_ids[:i]), "stop"
    return list(token_ids), "length"


def replace_audio(messages: list[dict[str, Any]], transcripts: list[str]) -> list[dict[str, Any]]:
    """A cascade's LLM messages: each audio part replaced by its transcript, in order, pieces of one message
    joined by newlines (as ``xopd.cascade.Cascade.to_text_messages`` does)."""
    heard = iter(transcripts)
    out = []
    for m in messages:
        if isinstance(m["content"], str):
            out.append({"role": m["role"], "content": m["content"]})
            continue
        pieces = [next(heard) if p.get("type") == "audio" else p.get("text", "") for p in m["content"]]
        out.append({"role": m["role"], "content": "\n".join(p for p in pieces if p)})
    return out
