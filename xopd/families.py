"""The model families: one row per family, read by training, evaluation, vLLM export, sharding and fixtures.

A *family* is what the code must know about a checkpoint layout beyond what transformers' Auto classes say:

===================  =========================================================================================
``model_types``      the ``config.model_type`` values that select the row (an unknown type is ``causal``)
``model_class``      the ``transformers`` class that holds the speech-to-text path (for omni checkpoints: the
                     *thinker*, which reads audio and writes text), resolved by name only when loading
``audio_placeholder`` what the chat template renders for an audio part (None: a text LLM); the processor
                     (and vLLM) expand its middle token to one per audio embedding (ms-swift #9414)
``lm_prefix``        module path of the LLM's decoder (embeddings + ``layers`` + final norm): what trains
                     (with ``lm_head``), what FSDP shards (``<lm_prefix>.layers``), what the vLLM push sends
``text_positions``   True: 1-D position ids from the attention mask; False: the model builds them (M-RoPE)
``inputs``           the input builder: rendered prompt text + audio -> ``input_ids`` / ``attention_mask`` /
                     ``input_features`` / ``feature_attention_mask`` (:func:`processor_inputs` or
                     :func:`omni_inputs`); ``processor_optional``: the checkpoint may lack a loadable
                     processor (then the tokenizer and the feature extractor build the inputs)
``audio_encoder``    module path of the frozen audio encoder whose outputs the trainer caches (None: no cache)
``vllm_key``         HF (transformers 5) parameter name -> the name vLLM's top-level ``load_weights`` takes
``export_key``       saved key -> the released checkpoint's key, rewritten into an exported model (None: kept)
``unsupported``      why the family is known but refused (one message, everywhere)
===================  =========================================================================================

Adding a family is one row in :data:`FAMILIES` plus its test in ``tests/test_families.py``.

Voxtral is refused everywhere (training, evaluation, vLLM export) with :data:`VOXTRAL_REFUSAL`: its processor
needs Mistral's tokenizer (``mistral-common``, vLLM's ``tokenizer_mode="mistral"``), which is not installed
here, so its input builder cannot be written and tested.

Torch-free: nothing heavy is imported at module level (``transformers`` is imported when a class is resolved
or a builder runs), so evalsuite's config-only model resolution and the zoo can import it cheaply.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xopd.audio import SAMPLE_RATE


class PromptFormatError(ValueError):
    """Messages that this model's prompt format cannot hold (audio for a text LLM, a template that drops the
    audio placeholder); callers turn it into their own error type (a backend's RequestError, ...). Defined
    here, where the input builders raise it; re-exported by :mod:`xopd.prompting`, where callers import it."""


class ModelLoadError(RuntimeError):
    """A model could not be found, read, or used in the role it was asked for (re-exported by
    :mod:`xopd.loading`, where callers import it from)."""


# ------------------------------------------------------------------------------------------------------------
# weight-key mappings
# ------------------------------------------------------------------------------------------------------------

# transformers-5 key (as a saved or live Qwen2-Audio model names it) -> the released Qwen2-Audio checkpoint's
# key (Qwen/Qwen2-Audio-7B-Instruct), the layout vLLM loads. transformers 5 saves the language model as
# ``language_model.model.model.*``, which vLLM rejects.
QWEN2_AUDIO_RELEASED: tuple[tuple[str, str], ...] = (
    ("language_model.model.model.", "language_model.model."),
    ("model.language_model.", "language_model.model."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def released_qwen2_audio_key(key: str) -> str:
    """``model.language_model.layers.0...`` -> ``language_model.model.layers.0...``; other keys unchanged."""
    for old, new in QWEN2_AUDIO_RELEASED:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def thinker_key(key: str) -> str:
    """An omni thinker's parameter under vLLM's full-model names (vLLM maps ``thinker.model.`` etc.)."""
    return "thinker." + key


def same_key(key: str) -> str:
    return key


# ------------------------------------------------------------------------------------------------------------
# input builders: rendered prompt text(s) + audio -> what the model reads
# ------------------------------------------------------------------------------------------------------------

HOP_LENGTH = 160  # Whisper feature extractor: one mel frame per 10 ms
AUDIO_TOKEN = "<|AUDIO|>"  # Qwen2-Audio / Qwen2.5-Omni: the placeholder token expanded per audio embedding


def num_feature_frames(num_samples: int, hop_length: int = HOP_LENGTH, max_frames: int = 3000) -> int:
    """Valid mel frames the Whisper feature extractor reports for ``num_samples`` (its attention mask sum)."""
    return min(math.ceil(num_samples / hop_length), max_frames)


def audio_token_count(num_frames: int) -> int:
    """Audio embeddings (= ``<|AUDIO|>`` placeholders) for ``num_frames`` valid mel frames.

    Stride-2 conv then stride-2 average pooling; the same formula in Qwen2AudioProcessor,
    Qwen2_5OmniProcessor and both models' ``_get_feat_extract_output_lengths``.
    """
    after_conv = (num_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def omni_thinker_inputs(
    tokenizer: Any,
    feature_extractor: Any,
    text: str | Sequence[str],
    audio: Any = None,
    sampling_rate: int = SAMPLE_RATE,
) -> Any:
    """What ``Qwen2_5OmniProcessor(text=..., audio=..., return_tensors="pt")`` returns, for text + audio.

    Each ``<|AUDIO|>`` in ``text`` (in order) is expanded to :func:`audio_token_count` copies for its audio;
    text is left-padded. Keys: ``input_ids``, ``attention_mask`` and, with audio, ``input_features``
    ``(n_audio, mel, 3000)`` and ``feature_attention_mask``. (Qwen2.5-Omni's processor cannot be built
    without torchvision, which its video processor needs.)
    """
    from transformers import BatchFeature  # late: this module stays torch-free at import (see above)

    texts = [text] if isinstance(text, str) else list(text)
    data: dict[str, Any] = {}
    if audio is not None:
        audios = [audio] if isinstance(audio, np.ndarray) else list(audio)
        n_placeholders = sum(t.count(AUDIO_TOKEN) for t in texts)
        if n_placeholders != len(audios):
            raise ValueError(f"{n_placeholders} {AUDIO_TOKEN} in text but {len(audios)} audios")
        features = feature_extractor(
            audios,
            sampling_rate=sampling_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="pt",
        )
        data["input_features"] = features["input_features"]
        data["feature_attention_mask"] = features["attention_mask"]
        counts = iter(audio_token_count(int(n)) for n in features["attention_mask"].sum(-1).tolist())
        # re.sub does not rescan its replacements, so each original placeholder is expanded exactly once.
        texts = [re.sub(re.escape(AUDIO_TOKEN), lambda _: AUDIO_TOKEN * next(counts), t) for t in texts]
    encoded = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
    return BatchFeature({**encoded, **data})


# (processor, texts, audios, *, tokenizer, feature_extractor) -> BatchFeature
InputBuilder = Callable[..., Any]


def processor_inputs(
    processor: Any,
    texts: Sequence[str],
    audios: Sequence[Any],
    *,
    tokenizer: Any = None,
    feature_extractor: Any = None,
) -> Any:
    """The family's own processor expands the placeholders and extracts the features; rows left-padded, no
    special tokens added (:func:`xopd.prompting.speech_inputs`, what the evalsuite backends call too)."""
    return processor(
        text=list(texts),
        audio=list(audios) or None,
        sampling_rate=SAMPLE_RATE,
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )


def omni_inputs(
    processor: Any,
    texts: Sequence[str],
    audios: Sequence[Any],
    *,
    tokenizer: Any = None,
    feature_extractor: Any = None,
) -> Any:
    """What a speech model reads for rendered ``texts`` and their ``audios`` (in placeholder order); also
    :func:`xopd.prompting.speech_inputs`, what the evalsuite backends call. Keys: ``input_ids``,
    ``attention_mask`` and, with audio, ``input_features`` / ``feature_attention_mask`` (torch tensors).

    The processor when it loaded (:func:`processor_inputs`: each placeholder expanded to one audio token per
    embedding, rows left-padded, no special tokens added); else (Qwen2.5-Omni's processor needs torchvision)
    the tokenizer and the feature extractor reproduce its text + audio path (:func:`omni_thinker_inputs`)."""
    if processor is not None and hasattr(processor, "feature_extractor"):
        return processor_inputs(processor, texts, audios)
    if tokenizer is None or feature_extractor is None:
        raise PromptFormatError("no processor: speech inputs need a tokenizer and a feature extractor")
    return omni_thinker_inputs(tokenizer, feature_extractor, list(texts), list(audios) or None)


# ------------------------------------------------------------------------------------------------------------
# the registry
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One family's row; see the module docstring for the fields."""

    name: str
    model_types: tuple[str, ...]
    model_class: str | None  # attribute of ``transformers``; None = AutoModelForCausalLM
    audio_placeholder: str | None
    lm_prefix: str
    text_positions: bool
    inputs: InputBuilder = processor_inputs
    processor_optional: bool = False
    audio_encoder: str | None = None
    vllm_key: Callable[[str], str] = same_key
    export_key: Callable[[str], str] | None = None
    unsupported: str | None = None

    @property
    def is_speech(self) -> bool:
        return self.audio_placeholder is not None

    def model_cls(self) -> Any:
        """The transformers class to ``from_pretrained`` (imported now, not at registry import)."""
        import transformers  # late: the registry is torch-free at import (see the module docstring)

        if self.model_class is None:
            return transformers.AutoModelForCausalLM
        return getattr(transformers, self.model_class)

    def in_llm(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the LLM: the decoder (``lm_prefix``) or the lm_head."""
        return name.startswith((self.lm_prefix + ".", "lm_head."))

    def llm_key(self, name: str) -> str | None:
        """The name vLLM's language model (``get_language_model()``, a ``*ForCausalLM``) loads the HF weight
        ``name`` under -- ``model.*`` for the decoder, ``lm_head.*`` -- or None for a weight outside the
        LLM."""
        if name.startswith(self.lm_prefix + "."):
            return "model." + name[len(self.lm_prefix) + 1 :]
        if name.startswith("lm_head."):
            return name
        return None


QWEN_AUDIO_PLACEHOLDER = "<|audio_bos|><|AUDIO|><|audio_eos|>"
VOXTRAL_REFUSAL = (
    "Voxtral is not supported: its processor needs Mistral's tokenizer (mistral-common; vLLM's "
    "tokenizer_mode='mistral'), which xopd has no input builder for, so training, evaluation and vLLM could "
    "not be given the same prompt"
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2_audio",
            model_types=("qwen2_audio",),  # also the zoo's assembled xopd-speech-smollm2
            model_class="Qwen2AudioForConditionalGeneration",
            audio_placeholder=QWEN_AUDIO_PLACEHOLDER,
            lm_prefix="model.language_model",
            text_positions=True,
            audio_encoder="model.audio_tower",
            vllm_key=released_qwen2_audio_key,
            export_key=released_qwen2_audio_key,
        ),
        Family(
            "qwen2_5_omni_thinker",
            # the full Omni checkpoint too: its thinker is loaded (text out)
            model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
            model_class="Qwen2_5OmniThinkerForConditionalGeneration",
            audio_placeholder=QWEN_AUDIO_PLACEHOLDER,
            lm_prefix="model",
            text_positions=False,
            inputs=omni_inputs,
            processor_optional=True,
            vllm_key=thinker_key,
        ),
        Family(  # untested here: no tiny fixture
            "qwen3_omni_moe",
            model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
            model_class="Qwen3OmniMoeThinkerForConditionalGeneration",
            audio_placeholder="<|audio_start|><|audio_pad|><|audio_end|>",
            lm_prefix="model",
            text_positions=False,
            vllm_key=thinker_key,
        ),
        Family(
            "voxtral",
            model_types=("voxtral",),
            model_class="VoxtralForConditionalGeneration",
            audio_placeholder="[AUDIO]",
            lm_prefix="model.language_model",
            text_positions=True,
            unsupported=VOXTRAL_REFUSAL,
        ),
        # any AutoModelForCausalLM: the text teacher, a cascade's LLM
        Family(
            "causal",
            model_types=(),
            model_class=None,
            audio_placeholder=None,
            lm_prefix="model",
            text_positions=True,
        ),
    )
}
CAUSAL = FAMILIES["causal"]
_BY_MODEL_TYPE: dict[str, Family] = {mt: f for f in FAMILIES.values() for mt in f.model_types}


def speech_families() -> list[str]:
    """The supported speech families' names (for messages)."""
    return [f.name for f in FAMILIES.values() if f.is_speech and f.unsupported is None]


def family_of(config: Any) -> Family:
    """The family of a checkpoint's config (or its ``model_type`` string): a speech family by model type, else
    ``causal``. A known but refused family (Voxtral) is a :class:`ModelLoadError` with its one message."""
    model_type = config if isinstance(config, str) else config.model_type
    family = _BY_MODEL_TYPE.get(model_type, CAUSAL)
    if family.unsupported is not None:
        raise ModelLoadError(f"model type {model_type!r}: {family.unsupported}")
    return family


def speech_family(config: Any) -> Family | None:
    """The speech family of a checkpoint's config, None for a text LLM (refused families raise)."""
    family = family_of(config)
    return family if family.is_speech else None
