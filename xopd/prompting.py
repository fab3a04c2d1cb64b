"""One prompt format for training and evaluation: (task item, modality) -> chat messages -> token ids.

The trainer (:class:`xopd.models.ModelAdapter`, :func:`xopd.data.student_prompts`), its eval hook, the
evalsuite backends (``xopd-eval gap``: :mod:`evalsuite.run` builds the messages,
:mod:`evalsuite.backends.prompts` renders them) and ``xopd-eval divergence`` all go through the three
functions here, so a model is evaluated on exactly the prompt it was trained on:

* :func:`messages_for` -- the chat messages of one item in one modality: the system turn (if any), then the
  user turn. Text mode: the typed message, which already ends with the answer-format instruction
  (``Task.render_text`` appends it; a JSONL pair's ``text`` holds it). Speech mode: an audio part, then the
  instruction as a text part beside it (the spoken words are in the audio).
* :func:`render` -- the model's own chat template on those messages (a speech model's processor template,
  which turns each audio part into the family's placeholder such as ``<|audio_bos|><|AUDIO|><|audio_eos|>``),
  the rendered text tokenized once without extra special tokens: the prompt ids, placeholders not expanded.
* :func:`speech_inputs` -- the processor's expansion of those placeholders to one ``<|AUDIO|>`` per audio
  embedding, with the audio features: what the model reads.

Torch-light (nothing here imports torch, the trainer or a backend): it is part of xopd's base layer, which
evalsuite imports and which imports neither evalsuite nor xopd's training side (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xopd.families import PromptFormatError, omni_inputs  # noqa: F401  (PromptFormatError: xopd.prompting's)

TEXT = "text"
SPEECH = "speech"
MODALITIES = (TEXT, SPEECH)
# What a speech model is asked when it must say back what it heard: the forgetting report's ASR check, the
# demo student's alignment objective and the perception check all use these words, so they measure one skill.
TRANSCRIBE_INSTRUCTION = "Transcribe the audio exactly, word for word. Output only the transcript."


# ------------------------------------------------------------------------------------------------------------
# messages
# ------------------------------------------------------------------------------------------------------------


def messages_for(
    item_text: str | None,
    *,
    modality: str,
    audio: Any = None,
    instruction: str | None = None,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """The chat messages of one item asked in ``modality`` ("text" or "speech").

    ``item_text``: text mode, the typed user message (``Task.render_text(item)``: question, then instruction);
    speech mode, the words spoken (carried by the audio, not sent as text; may be None). ``audio``: speech
    mode, the 16 kHz mono samples (None: a bare ``{"type": "audio"}`` part, enough to render the template).
    ``instruction``: speech mode only, sent as a text part after the audio (in text mode it is already part
    of ``item_text``). ``system_prompt``: a system turn first, when given and not empty.
    """
    if modality == TEXT:
        if not isinstance(item_text, str):
            raise PromptFormatError(f"a text prompt needs the typed message, got {type(item_text).__name__}")
        content: Any = item_text
    elif modality == SPEECH:
        part: dict[str, Any] = {"type": "audio"} if audio is None else {"type": "audio", "audio": audio}
        content = [part]
        if instruction:
            content.append({"type": "text", "text": instruction})
    else:
        raise PromptFormatError(f"unknown modality {modality!r} (expected one of {', '.join(MODALITIES)})")
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": content}]


def _parts(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def audios_in(messages: Sequence[dict[str, Any]]) -> list[Any]:
    """The audio arrays of the messages' audio parts, in prompt order (parts without an array are skipped)."""
    return [
        p["audio"]
        for m in messages
        for p in _parts(m["content"])
        if p.get("type") == "audio" and p.get("audio") is not None
    ]


def count_audio_parts(messages: Sequence[dict[str, Any]]) -> int:
    return sum(1 for m in messages for p in _parts(m["content"]) if p.get("type") == "audio")


def without_audio_arrays(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Audio parts reduced to ``{"type": "audio"}``: the template only needs to know where the audio goes, and
    some processors try to load whatever they find under ``"audio"``."""
    out = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = [{"type": "audio"} if p.get("type") == "audio" else p for p in content]
        out.append({**m, "content": content})
    return out


def text_only(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a text LLM: text parts joined into string content (the way Qwen-style templates join a
    part list); an audio part is a PromptFormatError, since a text model cannot hear it."""
    out = []
    for i, m in enumerate(messages):
        content = m["content"]
        if not isinstance(content, str):
            if any(p.get("type") == "audio" for p in content):
                raise PromptFormatError(f"message {i} holds audio, but a text LLM cannot hear it")
            content = "".join(p["text"] for p in content)
        out.append({"role": m["role"], "content": content})
    return out


# ------------------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------------------


def template_owner(tokenizer: Any, processor: Any = None) -> Any:
    """Who holds the chat template: a speech model's processor (its template knows audio parts) when it has
    one, else the tokenizer."""
    if processor is not None and getattr(processor, "chat_template", None):
        return processor
    return tokenizer


@dataclass
class Rendered:
    """A chat-formatted prompt: the rendered text and its token ids (audio placeholders not expanded)."""

    text: str
    ids: list[int]
    n_audio: int = 0


def render(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    processor: Any = None,
    placeholder: str | None = None,
) -> Rendered:
    """The model's chat template on ``messages``, generation prompt added, tokenized once.

    ``placeholder`` is the family's audio placeholder (``Family.audio_placeholder``), None for a text LLM: its
    messages are joined to string content and must hold no audio. A speech model's template (its processor's,
    see :func:`template_owner`) must render one placeholder per audio part. The ids are the rendered text
    tokenized without added special tokens (what ``apply_chat_template(tokenize=True)`` does), by the
    tokenizer the model's processor uses.
    """
    n_audio = count_audio_parts(messages)
    if placeholder is None:
        msgs = text_only(messages)
        owner = tokenizer
    else:
        msgs = without_audio_arrays(messages)
        owner = template_owner(tokenizer, processor)
    text = owner.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if placeholder is not None:
        found = text.count(placeholder)
        if found != n_audio:
            raise PromptFormatError(
                f"the chat template rendered {found} audio placeholder(s) {placeholder!r} for {n_audio} "
                "audio part(s); the model would not hear the audio as sent"
            )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return Rendered(text=text, ids=[int(i) for i in ids], n_audio=n_audio)


#: What a speech model reads for rendered ``texts`` and their ``audios`` (in placeholder order):
#: ``speech_inputs(processor, texts, audios, *, tokenizer=None, feature_extractor=None)``, the processor's
#: expansion with the tokenizer + feature-extractor fallback -- :func:`xopd.families.omni_inputs` itself, the
#: input builder of the families whose processor is optional.
speech_inputs = omni_inputs
