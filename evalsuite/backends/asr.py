"""The ASR half of a cascade, shared by both backends.

Whisper (transformers) transcribes every audio of a batch of requests in Whisper-sized batches; the
transcripts then take the audio's place in the LLM's prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from evalsuite.types import Request
from xopd.cascade import Cascade
from xopd.loading import checked_from_pretrained


def load_asr(asr_path: str, name: str, *, dtype: torch.dtype, device: str) -> Cascade:
    """A Cascade that holds only its Whisper half (the LLM runs elsewhere, e.g. in a vLLM engine)."""
    model = checked_from_pretrained(WhisperForConditionalGeneration, asr_path, name, dtype=dtype).to(device)
    processor = checked_from_pretrained(AutoProcessor, asr_path, name)
    return Cascade(model.eval(), processor, llm=None, tokenizer=None, name=name)


def has_audio(request: Request) -> bool:
    """Whether a request holds an audio part (a cascade loads Whisper only when there is audio to hear)."""
    msgs = request.messages if isinstance(request.messages, list) else []
    return any(
        isinstance(m, dict)
        and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "audio" for p in m["content"])
        for m in msgs
    )


def transcribe_requests(
    cascade: Cascade | None, audio_lists: dict[int, list[np.ndarray]], batch_size: int
) -> dict[int, list[str] | str]:
    """{request index: its transcripts, in order}; a request whose audio Whisper cannot take gets an error
    string instead (after a failed batch, each request is transcribed on its own to find it)."""
    flat = [(i, a) for i, audios in audio_lists.items() for a in audios]
    if not flat:
        return {i: [] for i in audio_lists}
    if cascade is None:
        raise RuntimeError("the cascade's ASR model is not loaded")
    try:
        texts = cascade.transcribe([a for _, a in flat], batch_size=batch_size)
    except Exception:  # noqa: BLE001 - find the request whose audio breaks Whisper, keep the rest
        out: dict[int, Any] = {}
        for i, audios in audio_lists.items():
            try:
                out[i] = cascade.transcribe(audios, batch_size=batch_size) if audios else []
            except Exception as exc:  # noqa: BLE001
                out[i] = f"ASR failed: {type(exc).__name__}: {exc}"
        return out
    grouped: dict[int, Any] = {i: [] for i in audio_lists}
    for (i, _), t in zip(flat, texts, strict=True):
        grouped[i].append(t)
    return grouped
