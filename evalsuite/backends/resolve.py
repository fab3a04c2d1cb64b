"""What a model string names: a speech LLM, a text LLM or a cascade, and where its files are.

Reads configs only (cheap), so that a backend can say what it is, and fail on a bad name, before any weights
load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import AutoProcessor, AutoTokenizer

from xopd.cascade import is_cascade, parse_cascade
from xopd.loading import ModelLoadError, checked_from_pretrained, resolve_config, speech_family
from xopd.zoo import resolve_model_name  # fixture:<key> -> the tiny test fixture's directory


@dataclass(frozen=True)
class ModelSpec:
    model_id: str  # as the user wrote it
    kind: str  # "speech" | "text" | "cascade"
    path: str  # the LLM's directory or hub id (for a cascade: its text LLM)
    config: Any  # the LLM's transformers config
    asr_path: str | None = None  # cascade only: the Whisper checkpoint
    placeholder: str | None = None  # speech only: what the prompt holds where an audio goes

    def max_positions(self) -> int | None:
        """The LLM's context length (for omni models: the thinker's text model's)."""
        cfg = self.config
        for sub in ("thinker_config", "text_config"):
            cfg = getattr(cfg, sub, None) or cfg
        return getattr(cfg, "max_position_embeddings", None)


def resolve_model(model_id: str, *, trust_remote_code: bool = False) -> ModelSpec:
    """Classify ``model_id`` and resolve its files (zoo names are built on first use)."""
    if is_cascade(model_id):
        asr, llm = parse_cascade(model_id)
        asr_path, asr_config = resolve_config(asr, trust_remote_code=False)
        if asr_config.model_type != "whisper":
            raise ModelLoadError(
                f"cascade ASR {asr!r} is a {asr_config.model_type!r} model; a Whisper checkpoint is needed"
            )
        path, config = resolve_config(llm, trust_remote_code)
        if speech_family(config) is not None:
            raise ModelLoadError(
                f"cascade LLM {llm!r} is a speech LLM ({config.model_type}); a text LLM is needed"
            )
        return ModelSpec(model_id, "cascade", path, config, asr_path=asr_path)
    path, config = resolve_config(resolve_model_name(model_id), trust_remote_code)
    family = speech_family(config)
    if family is not None:
        return ModelSpec(model_id, "speech", path, config, placeholder=family.audio_placeholder)
    return ModelSpec(model_id, "text", path, config)


def load_tokenizer_and_processor(spec: ModelSpec, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(processor or None, tokenizer) for rendering prompts: a speech LLM needs its processor (chat template,
    audio features, placeholder expansion); a text LLM or a cascade's LLM its tokenizer."""
    kw = {"trust_remote_code": trust_remote_code}
    if spec.kind != "speech":
        return None, checked_from_pretrained(AutoTokenizer, spec.path, spec.model_id, **kw)
    processor = checked_from_pretrained(AutoProcessor, spec.path, spec.model_id, **kw)
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "feature_extractor"):
        raise ModelLoadError(
            f"model {spec.model_id!r}: {spec.path} gives no speech processor (AutoProcessor returned "
            f"{type(processor).__name__}), so audio cannot be turned into features. A speech checkpoint "
            "needs processor_config.json / preprocessor_config.json; Qwen2.5-Omni's processor also needs "
            "torchvision."
        )
    return processor, processor.tokenizer
