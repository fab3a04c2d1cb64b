"""The transformers backend: batched ``model.generate`` for speech LLMs, text LLMs and the ``cascade:``.

Batches are left-padded (decoder-only generation continues from the last column) and formed from requests
sorted by length, longest first (less padding, and an out-of-memory shows up on the first batch, not the
last); results come back in the order asked. Greedy decoding is batch-invariant up to float rounding.
Sampling (temperature > 0) runs one request at a time under ``torch.manual_seed(params.seed)``, so that a
sampled answer depends on its request and seed alone, not on its batch neighbours, and may be cached.
"""

from __future__ import annotations

import gc
import uuid
from typing import Any

import torch
from transformers import GenerationConfig

from evalsuite.backends.base import Backend, Progress, Result, isolate_failures
from evalsuite.backends.fingerprint import fingerprint
from evalsuite.backends.prompts import Prompt, RequestError, eos_ids, speech_model_inputs
from evalsuite.backends.resolve import ModelSpec, load_tokenizer_and_processor, resolve_model
from evalsuite.types import GenParams, Request
from xopd.cascade import Cascade
from xopd.loading import load_speech_lm, load_text_lm


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (expected float32, bfloat16 or float16)")
    return value


def generation_config(params: GenParams, stop: list[int], pad: int) -> GenerationConfig:
    """transformers' decoding settings for ``params``: stop on every EOS id; sampling is plain temperature +
    top-p (no top-k, no repetition penalty), the same distribution vLLM samples from.

    Every field that changes the answer is set here, because ``generate`` fills the fields left unset from
    the checkpoint's generation_config (Qwen chat checkpoints ship a repetition penalty and top_k=20): an
    evaluation must not inherit them silently, nor differ from vLLM, which receives these same settings.
    """
    sampling = params.temperature > 0
    return GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=0,
        do_sample=sampling,
        num_beams=1,
        temperature=params.temperature if sampling else 1.0,
        top_p=params.top_p if sampling else 1.0,
        top_k=0 if sampling else None,  # greedy ignores it; a set value would only draw a warning
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        eos_token_id=stop,
        pad_token_id=pad,
    )


def read_generation_config(path: str) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None  # no generation_config.json: the tokenizer's EOS is all there is


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


class HFBackend(Backend):
    """transformers on CPU or one GPU.

    model: zoo name, HF id, local checkpoint or ``cascade:<asr>+<llm>``. batch_size: requests per
    ``generate`` call. dtype/device: where and how the weights run (device defaults to cuda when present).
    max_model_len: longest prompt accepted (default: the model's max_position_embeddings).
    """

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        dtype: str | torch.dtype = "float32",
        device: str | None = None,
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
        asr_batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_id = model
        self.spec: ModelSpec = resolve_model(model, trust_remote_code=trust_remote_code)
        self.kind = self.spec.kind
        self.batch_size = batch_size
        self.asr_batch_size = asr_batch_size
        self.dtype = torch_dtype(dtype)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.trust_remote_code = trust_remote_code
        path = self.spec.path
        self.processor, self.tokenizer = load_tokenizer_and_processor(
            self.spec, trust_remote_code=trust_remote_code
        )
        gen = read_generation_config(path)
        self.stop_ids = eos_ids(gen, self.tokenizer)
        pad = getattr(gen, "pad_token_id", None) if gen is not None else None
        if pad is None:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.pad_id = int(pad)
        self.max_model_len = max_model_len or self.spec.max_positions()
        self._model: Any = None
        self._cascade: Cascade | None = None
        self._fingerprint: str | None = None

    # ----------------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            models = {"llm": self.spec.path, **({"asr": self.spec.asr_path} if self.spec.asr_path else {})}
            settings = {"dtype": self.dtype, "device": torch.device(self.device).type}
            self._fingerprint = fingerprint(self.name, self.kind, models, settings)
        return self._fingerprint

    # ----------------------------------------------------------------------------------------- loading
    def _load(self) -> Any:
        if self._model is None:
            kw = {"dtype": self.dtype, "device": self.device}
            if self.kind == "cascade":
                self._cascade = Cascade.load(self.model_id, **kw)
                self._model = self._cascade.llm
            elif self.kind == "speech":
                self._model, _ = load_speech_lm(self.spec.path, trust_remote_code=self.trust_remote_code, **kw)
            else:
                self._model, _ = load_text_lm(self.spec.path, trust_remote_code=self.trust_remote_code, **kw)
        return self._model

    def attach(self, model: Any) -> None:
        """Generate with ``model`` (loaded and placed, e.g. the module a trainer is updating) instead of
        loading the checkpoint's weights. Its outputs no longer follow from the files, so the backend's
        fingerprint becomes unique to this call: nothing it generates is ever served from a cache."""
        if self.kind == "cascade":
            raise ValueError("attach() takes a speech or text LLM, not a cascade")
        self._model = model
        self._fingerprint = f"live-{uuid.uuid4().hex}"

    def close(self) -> None:
        self._model = self._cascade = None
        gc.collect()

    # ----------------------------------------------------------------------------------------- prompts
    def asr(self) -> Cascade:
        self._load()  # a cascade loads Whisper and the LLM together
        return self._cascade

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self, requests: list[Request], params: GenParams, *, progress: Progress | None = None
    ) -> list[Result]:
        prompts, results = self.prepare_prompts(requests, progress)

        order = sorted(prompts, key=lambda i: -prompts[i].length_hint)
        size = 1 if params.temperature > 0 else self.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            out = isolate_failures(lambda idx: self._run_batch([prompts[i] for i in idx], params), chunk)
            for i, res in zip(chunk, out, strict=True):
                results[i] = res
            if progress:
                progress(len(chunk))
        return [r if r is not None else Result.failed("internal: no result") for r in results]

    def model_inputs(self, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
        """What ``generate`` feeds the model for ``prompts`` (on the CPU): left-padded ids and mask; for a
        speech LLM, audio placeholders expanded and features extracted by :func:`xopd.prompting.speech_inputs`,
        the trainer's expansion, so a row's ids are the ids the student was trained on."""
        if self.kind == "speech":
            return dict(speech_model_inputs(self.processor, prompts))
        input_ids, attention_mask = left_pad([p.ids for p in prompts], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @torch.inference_mode()
    def _run_batch(self, prompts: list[Prompt], params: GenParams) -> list[Result]:
        model = self._load()
        inputs = self.model_inputs(prompts)
        inputs = {
            k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
            for k, v in inputs.items()
        }
        lengths = inputs["attention_mask"].sum(1).tolist()
        if self.max_model_len and max(lengths) > self.max_model_len:
            raise RequestError(
                f"prompt has {max(lengths)} tokens with its audio; the model takes {self.max_model_len}"
            )
        if params.temperature > 0:
            torch.manual_seed(params.seed)
        out = model.generate(
            **inputs, generation_config=generation_config(params, self.stop_ids, self.pad_id)
        )
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        return [self.answer(row, p, int(n)) for p, row, n in zip(prompts, new, lengths, strict=True)]
