"""Student and teacher behind one small interface: prompts, batches, hidden states, per-token log-probs.

:class:`ModelAdapter` wraps a transformers model of a known *family* and offers what the trainer needs:

* ``prompt(messages)``, ``text_prompt(text)`` / ``speech_prompt(audio, instruction)``: the model's own chat
  template, rendered and tokenized once, audio placeholders expanded by the family's processor (so the number
  of ``<|AUDIO|>`` ids is the number of audio embeddings the model will scatter in: ms-swift #9414) -- all by
  :mod:`xopd.prompting`, the renderer the evalsuite backends use, so the trained prompt is the evaluated one;
* ``collate(prompts, completion_ids, completion_mask)``: ``[left padding | prompt | completion | right pad]``,
  so every completion starts at the same column ``P`` and the hidden state at ``P - 1 + t`` predicts
  completion token ``t`` (logits at t-1 predict token t);
* ``completion_hidden(...)``: the final hidden states at those positions, ``[B, T, H]``, with the lm_head
  bypassed so that ``[B, L, V]`` logits are never built; :mod:`xopd.losses` turns them into log-probs or
  divergences a chunk at a time;
* ``completion_logprobs`` (student, differentiable) and ``score`` (teacher, no grad, with top-k alternatives).

The teacher reads *its own* chat-formatted text prompt followed by the *same completion ids* the student
sampled: nothing is decoded and re-tokenized (TRL #4562/#5741). :func:`shared_vocab_size` checks that the two
tokenizers agree id by id on the range both models score and returns that range: padded lm_head rows
(1024 vs a 1000-token tokenizer) and the student's extra audio tokens lie beyond it and are never sampled or
scored (TRL #2215/#3028).

What differs between model families (the transformers class, the audio placeholder, the decoder's module
path, how speech inputs are built, which encoder is cached, how weights are renamed for vLLM and on export)
is one row of :data:`xopd.families.FAMILIES`; nothing here branches on a family's name.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoFeatureExtractor, AutoProcessor, AutoTokenizer, GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from xopd import losses, prompting
from xopd.audio import AudioFormatError, checked_audio
from xopd.families import Family, family_of
# eos_ids_of lives in xopd.loading (evalsuite uses it too) and stays importable from here
from xopd.loading import ModelLoadError, checked_from_pretrained, eos_ids_of, resolve_config  # noqa: F401
from xopd.zoo import resolve_model_name  # fixture:<key> -> its directory; imported from here by callers


class VocabularyMismatchError(ValueError):
    """Student and teacher do not share an output vocabulary; the message says where they differ."""


# ------------------------------------------------------------------------------------------------------------
# prompts and token ids
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    """A chat-formatted prompt: token ids (audio placeholders already expanded), the rendered text, and for a
    speech prompt the audio inputs of this one sample (``input_features [1, mel, frames]`` and
    ``feature_attention_mask [1, frames]``) and the 16 kHz waveform they come from (vLLM extracts its own)."""

    ids: list[int]
    text: str
    features: dict[str, Tensor] = field(default_factory=dict)
    audio: np.ndarray | None = field(default=None, repr=False)

    @property
    def has_audio(self) -> bool:
        return bool(self.features)


def _id_to_token(tokenizer: Any) -> dict[int, str]:
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        vocab[int(i)] = str(tok)
    return vocab


def shared_vocab_size(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    *,
    student_rows: int,
    teacher_rows: int,
    eos_ids: Sequence[int] = (),
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> int:
    """The size ``V`` of the output vocabulary student and teacher share, or a VocabularyMismatchError.

    ``V`` is the longest prefix of ids on which both tokenizers map each id to the same token. It must hold
    every regular (non-added) token of both tokenizers and every EOS id, and both lm_heads need at least ``V``
    rows. Beyond ``V`` lie the padded rows (which tokenize nothing) and tokens only one side has (the
    student's audio placeholders; Qwen2.5-Omni's ``<|AUDIO|>`` where Qwen2.5 has ``<|object_ref_start|>``):
    the sampler never draws them and log-probs are normalised over ``[0, V)`` for both models.
    """
    s_map, t_map = _id_to_token(student_tokenizer), _id_to_token(teacher_tokenizer)
    n_s, n_t = max(s_map) + 1, max(t_map) + 1
    v = 0
    while v < min(n_s, n_t) and s_map.get(v) == t_map.get(v):
        v += 1
    s_added = {int(i) for i in getattr(student_tokenizer, "added_tokens_decoder", {})}
    t_added = {int(i) for i in getattr(teacher_tokenizer, "added_tokens_decoder", {})}
    s_regular = [i for i in s_map if i >= v and i not in s_added]
    t_regular = [i for i in t_map if i >= v and i not in t_added]
    if s_regular or t_regular:
        diffs = [i for i in range(min(n_s, n_t)) if s_map.get(i) != t_map.get(i)][:5]
        shown = "; ".join(
            f"id {i}: {student_name} {s_map.get(i)!r} vs {teacher_name} {t_map.get(i)!r}" for i in diffs
        )
        raise VocabularyMismatchError(
            f"{student_name} ({n_s} tokens) and {teacher_name} ({n_t} tokens) do not share an output "
            f"vocabulary: their tokenizers agree only on ids [0, {v}), and regular tokens lie beyond "
            f"({len(s_regular)} of the {student_name}'s, {len(t_regular)} of the {teacher_name}'s). "
            f"First differences: {shown or 'none inside the common range (one tokenizer is longer)'}. "
            "X-OPD scores the student's own token ids under the teacher, so both must come from one "
            "tokenizer family (e.g. Qwen2.5-Omni with Qwen2.5-Instruct, the zoo's xopd-speech-smollm2 with "
            "smollm2-135m-instruct)."
        )
    bad_eos = [e for e in eos_ids if e >= v]
    if bad_eos:
        raise VocabularyMismatchError(
            f"EOS id(s) {bad_eos} lie outside the shared vocabulary [0, {v}) of {student_name} and "
            f"{teacher_name}: the teacher could not score the end of a turn"
        )
    for name, rows in ((student_name, student_rows), (teacher_name, teacher_rows)):
        if rows < v:
            raise VocabularyMismatchError(
                f"{name}'s lm_head has {rows} rows, fewer than the {v} shared token ids"
            )
    return v


# ------------------------------------------------------------------------------------------------------------
# the adapter
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TokenScores:
    """Per-token scores of given completion ids under one model (no gradient): the log-prob of each token
    ``[B, T]``, the model's top-k alternatives ``ids/logprobs [B, T, k]`` (k may be 0) and the entropy of its
    next-token distribution ``[B, T]`` (nats, over the shared vocabulary)."""

    logprobs: Tensor
    topk_ids: Tensor
    topk_logprobs: Tensor
    entropy: Tensor


class _Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class ModelAdapter:
    """One model (student or teacher) and everything the trainer asks of it; see the module docstring.

    ``model`` is what runs forward/generate (a ``PeftModel`` under LoRA); ``core`` is the transformers model
    inside it, for structural access (lm_head, modules to freeze, weights to save). The family's row
    (``family``) is read through :attr:`lm_prefix`, :meth:`decoder_layers`, :meth:`in_llm`, :attr:`is_speech`.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        tokenizer: Any,
        family: Family,
        *,
        processor: Any = None,
        feature_extractor: Any = None,
        eos_ids: Sequence[int] = (),
        chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
        source_path: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.core = model
        self.tokenizer = tokenizer
        self.family = family
        self.processor = processor
        self.feature_extractor = feature_extractor
        self.eos_ids = list(eos_ids) or eos_ids_of(getattr(model, "generation_config", None), tokenizer)
        if not self.eos_ids:
            raise ModelLoadError(
                f"model {name!r} defines no end-of-sequence token (generation_config or tokenizer)"
            )
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_ids[0]
        self.chunk_size = chunk_size
        self.source_path = source_path
        self._checkpointing = False  # gradient checkpointing on (prepare_trainable)
        self.encoder_cache: FrozenEncoderCache | None = None

    # -- properties ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.head[0].dtype

    @property
    def is_speech(self) -> bool:
        return self.family.is_speech

    @property
    def head(self) -> tuple[Tensor, Tensor | None]:
        """The lm_head's ``(weight [V_rows, H], bias or None)``."""
        lm_head = self.core.get_output_embeddings()
        return lm_head.weight, getattr(lm_head, "bias", None)

    @property
    def head_rows(self) -> int:
        return int(self.head[0].shape[0])

    @property
    def lm_prefix(self) -> str:
        """Module path of the LLM's decoder (embeddings + layers + final norm) inside :attr:`core`."""
        return self.family.lm_prefix

    def in_llm(self, name: str) -> bool:
        """Whether parameter ``name`` (of :attr:`core`) belongs to the LLM: the decoder or the lm_head."""
        return self.family.in_llm(name)

    def decoder_layers(self) -> list[nn.Module]:
        """The LLM's decoder layers (``<lm_prefix>.layers``): what FSDP shards."""
        try:
            layers = self.core.get_submodule(f"{self.lm_prefix}.layers")
        except AttributeError as err:
            raise ValueError(
                f"model {self.name!r}: no decoder layers at {self.lm_prefix}.layers to shard with FSDP"
            ) from err
        return list(layers)

    # -- prompts ---------------------------------------------------------------------------------------------

    def prompt(self, messages: list[dict[str, Any]]) -> Prompt:
        """Chat messages (:func:`xopd.prompting.messages_for`) as this model reads them: rendered by
        :func:`xopd.prompting.render` -- the renderer the evalsuite backends use, so training and evaluation
        see the same ids -- and, with an audio part, expanded with its features by
        :func:`xopd.prompting.speech_inputs`."""
        audios = list(prompting.audios_in(messages))
        n_audio = prompting.count_audio_parts(messages)
        if n_audio and not self.is_speech:
            raise ModelLoadError(f"model {self.name!r} is a text LLM: it cannot take a speech prompt")
        if n_audio != len(audios) or n_audio > 1:
            raise ValueError(
                f"{self.name}: a prompt holds at most one audio part, with its samples; got {n_audio} part(s) "
                f"and {len(audios)} array(s)"
            )
        try:
            audios = [checked_audio(np.asarray(a)) for a in audios]
        except AudioFormatError as exc:
            raise ValueError(f"{self.name}: {exc}") from None
        try:
            r = prompting.render(
                self.tokenizer, messages, processor=self.processor, placeholder=self.family.audio_placeholder
            )
        except prompting.PromptFormatError as exc:
            raise ModelLoadError(f"{self.name}: {exc}") from None
        if not audios:
            return Prompt(ids=r.ids, text=r.text)
        batch = self.family.inputs(
            self.processor,
            [r.text],
            audios,
            tokenizer=self.tokenizer,
            feature_extractor=self.feature_extractor,
        )
        feats = {k: batch[k] for k in ("input_features", "feature_attention_mask") if k in batch}
        if not feats:
            raise ModelLoadError(f"{self.name}: the processor returned no audio features ({sorted(batch)})")
        return Prompt(
            ids=[int(i) for i in batch["input_ids"][0].tolist()], text=r.text, features=feats, audio=audios[0]
        )

    def text_prompt(self, text: str, system: str | None = None) -> Prompt:
        """The model's own chat template on a one-turn text conversation, generation prompt added."""
        if not text or not text.strip():
            raise ValueError(f"{self.name}: empty text prompt")
        return self.prompt(prompting.messages_for(text, modality=prompting.TEXT, system_prompt=system))

    def speech_prompt(
        self, audio: np.ndarray, instruction: str | None = None, system: str | None = None
    ) -> Prompt:
        """A user turn holding the audio (and the answer-format instruction as text beside it, as xopd-eval
        asks it), through the family's processor, which expands the audio placeholder."""
        if not self.is_speech:
            raise ModelLoadError(f"model {self.name!r} is a text LLM: it cannot take a speech prompt")
        msgs = prompting.messages_for(
            None, modality=prompting.SPEECH, audio=audio, instruction=instruction, system_prompt=system
        )
        return self.prompt(msgs)

    # -- batches ---------------------------------------------------------------------------------------------

    def collate(
        self,
        prompts: Sequence[Prompt],
        completion_ids: Tensor | None = None,
        completion_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Model inputs for ``prompts`` (left-padded to a common end column ``P``), optionally followed by
        completions ``[B, T]`` (right-padded; ``completion_mask`` 0 after EOS)."""
        b = len(prompts)
        p = max(len(pr.ids) for pr in prompts)
        t = 0 if completion_ids is None else completion_ids.shape[1]
        ids = torch.full((b, p + t), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, p + t), dtype=torch.long)
        for i, pr in enumerate(prompts):
            ids[i, p - len(pr.ids) : p] = torch.tensor(pr.ids, dtype=torch.long)
            attn[i, p - len(pr.ids) : p] = 1
        if completion_ids is not None:
            if (
                completion_mask is None
                or completion_ids.shape != completion_mask.shape
                or completion_ids.shape[0] != b
            ):
                raise ValueError(
                    "completion_ids and completion_mask must both be [B, T] with one row per prompt"
                )
            m = completion_mask.to(torch.long).cpu()
            ids[:, p:] = torch.where(m.bool(), completion_ids.cpu(), torch.full_like(m, self.pad_id))
            attn[:, p:] = m
        inputs: dict[str, Tensor] = {"input_ids": ids, "attention_mask": attn}
        if self.family.text_positions and completion_ids is not None:
            # what generate() computes for left-padded rows; without it positions would count the padding
            inputs["position_ids"] = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 0)
        with_audio = [pr for pr in prompts if pr.has_audio]
        if with_audio:
            for key in with_audio[0].features:
                inputs[key] = torch.cat([pr.features[key] for pr in with_audio], dim=0)
        dev = self.device
        out = {k: v.to(dev) for k, v in inputs.items()}
        if "input_features" in out:
            out["input_features"] = out["input_features"].to(self.dtype)
        return out

    @contextlib.contextmanager
    def _lm_head_bypassed(self) -> Iterator[None]:
        """Make the model's forward return the lm_head's *input* (final hidden states), not logits, so no
        ``[B, L, V]`` tensor is ever built; restored afterwards whatever happens."""
        core = self.core
        head = core.get_output_embeddings()
        core.set_output_embeddings(_Identity())
        try:
            yield
        finally:
            core.set_output_embeddings(head)

    def _hidden_states(self, inputs: dict[str, Tensor]) -> Tensor:
        """Final hidden states ``[B, L, H]`` (the lm_head's input) for collated inputs."""
        with self._lm_head_bypassed():
            if self._checkpointing and torch.is_grad_enabled():
                self.core.train()  # transformers only checkpoints layers in training mode
            try:
                out = self.core(**inputs, use_cache=False)
            finally:
                self.core.eval()
        return out.logits

    def completion_hidden(
        self, prompts: Sequence[Prompt], completion_ids: Tensor, completion_mask: Tensor
    ) -> Tensor:
        """Hidden states ``[B, T, H]``; row ``t`` (position ``P - 1 + t``) predicts completion token ``t``."""
        inputs = self.collate(prompts, completion_ids, completion_mask)
        hidden = self._hidden_states(inputs)
        p = inputs["input_ids"].shape[1] - completion_ids.shape[1]
        return hidden[:, p - 1 : p - 1 + completion_ids.shape[1]]

    def completion_logprobs(
        self,
        prompts: Sequence[Prompt],
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        vocab_size: int,
        temperature: float = 1.0,
    ) -> Tensor:
        """log pi(y_t | prompt, y_<t) over the shared vocabulary ``[0, vocab_size)``, ``[B, T]``, 0 if masked;
        differentiable when grad is enabled (chunked: ``[B, T, V]`` never held)."""
        hidden = self.completion_hidden(prompts, completion_ids, completion_mask)
        weight, bias = self.head
        mask = completion_mask.to(hidden.device)
        return losses.token_logprobs(
            hidden,
            weight,
            completion_ids.to(hidden.device),
            mask,
            bias=bias,
            vocab_size=vocab_size,
            temperature=temperature,
            chunk_size=self.chunk_size,
        )

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[Prompt],
        completion_ids: Tensor,
        completion_mask: Tensor,
        *,
        vocab_size: int,
        topk: int = 0,
    ) -> TokenScores:
        """Log-probs of the given completion ids and the top-k alternatives at each position (no gradient)."""
        hidden = self.completion_hidden(prompts, completion_ids, completion_mask)
        return head_scores(
            hidden,
            *self.head,
            completion_ids.to(hidden.device),
            completion_mask.to(hidden.device),
            vocab_size=vocab_size,
            topk=topk,
            chunk_size=self.chunk_size,
        )

    # -- training setup --------------------------------------------------------------------------------------

    def multimodal_token_ids(self) -> list[int]:
        """Ids that stand for audio / image / video inputs. Never sampled: a placeholder inside a completion
        would make the model look for one more audio embedding than it has."""
        ids: set[int] = set()
        if self.family.audio_placeholder:
            ids.update(self.tokenizer(self.family.audio_placeholder, add_special_tokens=False)["input_ids"])
        cfg = self.core.config
        for attr in (
            "audio_token_id",
            "audio_token_index",
            "image_token_id",
            "image_token_index",
            "video_token_id",
            "video_token_index",
            "audio_start_token_id",
            "audio_end_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value >= 0:
                ids.add(value)
        return sorted(ids)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.core.named_parameters() if p.requires_grad]


def head_scores(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ids: Tensor,
    mask: Tensor,
    *,
    vocab_size: int,
    topk: int,
    chunk_size: int,
) -> TokenScores:
    """Log-prob of ``ids`` and the top-k (id, log-prob) pairs under ``softmax(hidden @ weight[:V].T + b)``,
    a chunk of masked rows at a time (padding rows are skipped, ``[B, T, V]`` is never held)."""
    m = mask.bool()
    b, t = ids.shape
    lp = torch.zeros(b, t, dtype=torch.float32, device=hidden.device)
    ent = torch.zeros(b, t, dtype=torch.float32, device=hidden.device)
    k = min(topk, vocab_size)
    top_ids = torch.zeros(b, t, k, dtype=torch.long, device=hidden.device)
    top_lp = torch.zeros(b, t, k, dtype=torch.float32, device=hidden.device)
    rows = hidden[m]
    sel = ids[m].long()
    if rows.shape[0] and (int(sel.min()) < 0 or int(sel.max()) >= vocab_size):
        raise ValueError(
            f"completion ids must lie in [0, {vocab_size}), got [{int(sel.min())}, {int(sel.max())}]"
        )
    w = weight[:vocab_size]
    bb = None if bias is None else bias[:vocab_size]
    out_lp, out_ids, out_top, out_ent = [], [], [], []
    for start in range(0, rows.shape[0], chunk_size):
        logits = torch.nn.functional.linear(rows[start : start + chunk_size], w, bb).float()
        logp = logits.log_softmax(-1)
        out_lp.append(logp.gather(-1, sel[start : start + chunk_size, None]).squeeze(-1))
        out_ent.append(-(logp.exp() * logp).sum(-1))
        if k:
            v, i = logp.topk(k, dim=-1)
            out_top.append(v)
            out_ids.append(i)
    if out_lp:
        lp[m] = torch.cat(out_lp)
        ent[m] = torch.cat(out_ent)
        if k:
            top_lp[m] = torch.cat(out_top)
            top_ids[m] = torch.cat(out_ids)
    return TokenScores(lp, top_ids, top_lp, ent)


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------


class FrozenEncoderCache:
    """Memoise a frozen audio encoder's output per audio clip (LRU, bounded in bytes).

    A prompt's audio is encoded ``2 n`` times per step (``n`` generations and ``n`` training forwards) and
    again every epoch; with the encoder frozen the result never changes. Installed on the encoder *instance*
    (its ``forward``), so the model's own code still builds the masks and merges the features, and weight
    names are untouched. Each clip is encoded alone, so its cached value does not depend on which clips shared
    its batch (a resumed run reproduces it bit for bit). Bypassed whenever an encoder weight requires grad.
    """

    def __init__(self, encoder: nn.Module, max_bytes: int = 512 << 20) -> None:
        self.encoder = encoder
        self.original = encoder.forward
        self.max_bytes = max_bytes
        self.entries: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0
        encoder.forward = self.forward

    def forward(self, input_features: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        if any(p.requires_grad for p in self.encoder.parameters()) or kwargs.get("output_hidden_states"):
            return self.original(input_features, attention_mask=attention_mask, **kwargs)
        rows = []
        for i in range(input_features.shape[0]):
            mask_i = None if attention_mask is None else attention_mask[i : i + 1]
            key = self._key(input_features[i], mask_i)
            hit = self.entries.get(key)
            if hit is None:
                self.misses += 1
                with torch.no_grad():
                    hit = self.original(
                        input_features[i : i + 1], attention_mask=mask_i, **kwargs
                    ).last_hidden_state
                hit = hit.detach()
                self.entries[key] = hit
                self.bytes += hit.numel() * hit.element_size()
                while self.bytes > self.max_bytes and len(self.entries) > 1:
                    _, old = self.entries.popitem(last=False)
                    self.bytes -= old.numel() * old.element_size()
            else:
                self.hits += 1
                self.entries.move_to_end(key)
            rows.append(hit)
        return BaseModelOutput(last_hidden_state=torch.cat(rows, dim=0))

    @staticmethod
    def _key(features: Tensor, mask: Tensor | None) -> str:
        h = hashlib.sha1(features.detach().float().cpu().numpy().tobytes())
        h.update(b"-" if mask is None else mask.detach().cpu().numpy().tobytes())
        return h.hexdigest()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(name: str) -> torch.dtype:
    value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (expected float32, bfloat16 or float16)")
    return value


def _clean_generation_config(model: nn.Module, eos: list[int], pad: int) -> None:
    """Replace the checkpoint's generation config by one that holds only the token ids.

    Why: transformers fills every sampling knob ``generate`` leaves unset from ``model.generation_config``
    (Qwen's sets temperature 0.7, top_k 20, repetition_penalty 1.05); the rollout engine must sample exactly
    the distribution it asks for.
    """
    model.generation_config = GenerationConfig(eos_token_id=list(eos), pad_token_id=pad)


def load_adapter(
    name_or_path: str,
    *,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    chunk_size: int = losses.DEFAULT_CHUNK_SIZE,
) -> ModelAdapter:
    """Load any supported model (zoo name, HF id, local path) as an adapter, in eval mode."""
    path, config = resolve_config(resolve_model_name(name_or_path), trust_remote_code)
    family = family_of(config)
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_cfg, "final_logit_softcapping", None) or getattr(text_cfg, "logit_scale", None):
        raise ModelLoadError(
            f"model {name_or_path!r} rescales its logits after the lm_head (soft-capping / logit_scale); the "
            "trainer's hidden-state log-probs do not model that yet"
        )
    kw = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    model = checked_from_pretrained(family.model_cls(), path, name_or_path, **kw)
    tokenizer = checked_from_pretrained(
        AutoTokenizer, path, name_or_path, trust_remote_code=trust_remote_code
    )
    processor = feature_extractor = None
    if family.is_speech:
        processor, feature_extractor = _load_speech_processor(path, name_or_path, family, trust_remote_code)
        tokenizer = getattr(processor, "tokenizer", None) or tokenizer
    try:
        gen = GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        gen = None
    eos = eos_ids_of(gen, tokenizer)
    adapter = ModelAdapter(
        name_or_path,
        model,
        tokenizer,
        family,
        processor=processor,
        feature_extractor=feature_extractor,
        eos_ids=eos,
        chunk_size=chunk_size,
        source_path=str(path),
    )
    _clean_generation_config(model, adapter.eos_ids, adapter.pad_id)
    model.to(resolve_device(device)).eval()
    if family.audio_encoder is not None:
        adapter.encoder_cache = FrozenEncoderCache(model.get_submodule(family.audio_encoder))
    return adapter


def _load_speech_processor(path: str, name: str, family: Family, trust_remote_code: bool) -> tuple[Any, Any]:
    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # e.g. Qwen2_5OmniProcessor without torchvision
        if not family.processor_optional:
            raise ModelLoadError(
                f"model {name!r}: its processor could not be loaded from {path}: {exc}"
            ) from exc
        processor = None
    if processor is not None and hasattr(processor, "feature_extractor"):
        return processor, processor.feature_extractor
    if not family.processor_optional:
        raise ModelLoadError(
            f"model {name!r}: {path} holds no audio processor (got {type(processor).__name__})"
        )
    extractor = checked_from_pretrained(AutoFeatureExtractor, path, name, trust_remote_code=trust_remote_code)
    # a tokenizer (AutoProcessor's fallback) still carries the chat template; keep it as the template owner
    return (processor if getattr(processor, "chat_template", None) else None), extractor


def load_student(cfg: Any) -> ModelAdapter:
    """The student from ``cfg.models`` (:class:`xopd.config.ModelsConfig`), frozen / LoRA-wrapped as asked."""
    adapter = load_adapter(
        cfg.student,
        dtype=cfg.dtype,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
    )
    prepare_trainable(adapter, cfg)
    return adapter


def load_teacher(cfg: Any) -> ModelAdapter:
    adapter = load_adapter(
        cfg.teacher,
        dtype=cfg.teacher_dtype or cfg.dtype,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        chunk_size=cfg.chunk_size,
    )
    adapter.core.requires_grad_(False)
    return adapter


def prepare_trainable(adapter: ModelAdapter, cfg: Any) -> None:
    """Freeze what is not trained and, for ``finetune: lora``, wrap the LLM's linear layers with peft LoRA.

    Trained: the decoder (``adapter.lm_prefix``: embeddings + layers + final norm) and the lm_head. Frozen by
    default: everything else -- the audio encoder, the projector, a vision tower.
    """
    core = adapter.core
    prefix = adapter.lm_prefix + "."
    for name, param in core.named_parameters():
        param.requires_grad_(not cfg.freeze_audio or adapter.in_llm(name))
    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model  # late: peft is slow to import; only LoRA runs need it

        targets = "|".join(re.escape(t) for t in cfg.lora_targets)
        pattern = rf"{re.escape(adapter.lm_prefix)}\.layers\.\d+\..*\b({targets})"
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=pattern,
            bias="none",
        )
        # get_peft_model freezes every non-LoRA weight; the LoRA layers are injected into `core` itself
        adapter.model = get_peft_model(core, lora)
        adapter.model.eval()
    if cfg.gradient_checkpointing:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.finetune == "lora":
            core.enable_input_require_grads()
        adapter._checkpointing = True
    if not adapter.trainable_parameters():
        raise ModelLoadError(
            f"model {adapter.name!r}: nothing to train (no parameter under {prefix!r} or lm_head)"
        )


def check_pair(student: ModelAdapter, teacher: ModelAdapter) -> int:
    """Shared vocabulary size of a student/teacher pair (see :func:`shared_vocab_size`); EOS ids unified so
    that generation stops at either model's end of turn."""
    eos = list(dict.fromkeys([*student.eos_ids, *teacher.eos_ids]))
    v = shared_vocab_size(
        student.tokenizer,
        teacher.tokenizer,
        student_rows=student.head_rows,
        teacher_rows=teacher.head_rows,
        eos_ids=eos,
        student_name=f"student {student.name!r}",
        teacher_name=f"teacher {teacher.name!r}",
    )
    student.eos_ids = eos
    return v


# ------------------------------------------------------------------------------------------------------------
# weights: training state and export
# ------------------------------------------------------------------------------------------------------------


def export_pretrained(adapter: ModelAdapter, out_dir: str | Path) -> Path:
    """Write the student as a model directory that ``from_pretrained``, xopd-eval and vLLM load.

    LoRA is merged into a copy of the weights first. A family with an ``export_key`` (Qwen2-Audio) is re-saved
    with the released checkpoint's key names (``language_model.model.*``): transformers 5 writes
    ``language_model.model.model.*``, which vLLM rejects. The processor (or tokenizer + feature extractor) and
    the generation config go beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = adapter.model
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(str(out))
    if adapter.family.export_key is not None:
        _rename_safetensors(out, adapter.family.export_key)
    for part in (adapter.processor, adapter.feature_extractor, adapter.tokenizer):
        if part is not None:
            part.save_pretrained(str(out))
    GenerationConfig(eos_token_id=adapter.eos_ids, pad_token_id=adapter.pad_id).save_pretrained(str(out))
    return out


def _rename_safetensors(out: Path, rename: Callable[[str], str]) -> None:
    """Rewrite the saved shards with the released checkpoint's key names (a no-op when they have them)."""
    index = out / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    for name in files:
        tensors = load_file(str(out / name))
        if all(rename(k) == k for k in tensors):
            continue
        tmp = out / f".{name}.tmp"
        save_file(
            {rename(k): v for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"}
        )
        os.replace(tmp, out / name)
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
