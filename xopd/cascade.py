"""The cascade: speech → ASR → text LLM. The classic baseline every speech LLM is compared with.

``cascade:<asr>+<llm>`` names one (``cascade:`` alone is the default, whisper-tiny.en + SmolLM2-135M-Instruct).
Conversations use the same message format as speech LLMs: a content part ``{"type": "audio", "audio": array}``
is transcribed and its transcript takes the place of the audio in the LLM's prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoProcessor, WhisperForConditionalGeneration

from xopd.audio import SAMPLE_RATE
from xopd.loading import ModelLoadError, checked_from_pretrained, load_text_lm, resolve_config

PREFIX = "cascade:"
DEFAULT_ASR = "whisper-tiny.en"
DEFAULT_LLM = "smollm2-135m-instruct"


def is_cascade(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_cascade(name: str) -> tuple[str, str]:
    """``cascade:<asr>+<llm>`` → (asr, llm); empty parts take the defaults."""
    if not is_cascade(name):
        raise ValueError(f"{name!r} is not a cascade spec (expected 'cascade:<asr>+<llm>')")
    body = name[len(PREFIX) :]
    if not body:
        return DEFAULT_ASR, DEFAULT_LLM
    if body.count("+") != 1:
        raise ValueError(f"{name!r}: expected exactly one '+' between the ASR model and the LLM")
    asr, llm = (part.strip() for part in body.split("+"))
    return asr or DEFAULT_ASR, llm or DEFAULT_LLM


@dataclass
class Cascade:
    asr_model: WhisperForConditionalGeneration
    asr_processor: object
    llm: object
    tokenizer: object
    name: str

    @classmethod
    def load(cls, spec: str = PREFIX, *, dtype: torch.dtype = torch.float32, device: str | None = None) -> Cascade:
        asr, llm = parse_cascade(spec)
        path, config = resolve_config(asr, trust_remote_code=False)
        if config.model_type != "whisper":
            raise ModelLoadError(f"cascade ASR {asr!r} is a {config.model_type!r} model; a Whisper checkpoint is needed")
        asr_model = checked_from_pretrained(WhisperForConditionalGeneration, path, asr, dtype=dtype)
        asr_processor = checked_from_pretrained(AutoProcessor, path, asr)
        model, tokenizer = load_text_lm(llm, dtype=dtype, device=device)
        if device:
            asr_model.to(device)
        return cls(asr_model.eval(), asr_processor, model, tokenizer, f"{PREFIX}{asr}+{llm}")

    @torch.inference_mode()
    def transcribe(self, audios: list[np.ndarray], *, batch_size: int = 8) -> list[str]:
        """Greedy Whisper transcripts of 16 kHz mono float arrays."""
        out: list[str] = []
        for i in range(0, len(audios), batch_size):
            batch = audios[i : i + batch_size]
            feats = self.asr_processor.feature_extractor(
                batch, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True
            )
            ids = self.asr_model.generate(
                feats.input_features.to(self.asr_model.device, self.asr_model.dtype),
                attention_mask=feats.attention_mask.to(self.asr_model.device),
            )
            out += [t.strip() for t in self.asr_processor.batch_decode(ids, skip_special_tokens=True)]
        return out

    def to_text_messages(self, messages: list[dict]) -> tuple[list[dict], list[str]]:
        """Replace every audio part by its transcript; return the text-only messages and the transcripts."""
        audios = [
            part["audio"]
            for m in messages
            if not isinstance(m["content"], str)
            for part in m["content"]
            if part.get("type") == "audio"
        ]
        transcripts = iter(self.transcribe(audios)) if audios else iter(())
        heard: list[str] = []
        text_messages = []
        for m in messages:
            if isinstance(m["content"], str):
                text_messages.append(m)
                continue
            pieces = []
            for part in m["content"]:
                if part.get("type") == "audio":
                    heard.append(next(transcripts))
                    pieces.append(heard[-1])
                elif part.get("type") == "text":
                    pieces.append(part["text"])
            text_messages.append({"role": m["role"], "content": "\n".join(p for p in pieces if p)})
        return text_messages, heard

    @torch.inference_mode()
    def generate(self, messages: list[dict], *, max_new_tokens: int = 64) -> tuple[str, list[str]]:
        """Greedy answer of the LLM to the transcribed conversation; also returns what the ASR heard."""
        text_messages, heard = self.to_text_messages(messages)
        enc = self.tokenizer.apply_chat_template(
            text_messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.llm.device)
        ids = self.llm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        answer = self.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return answer.strip(), heard
