"""Rollout engines: sample completions from the current student with the sampler's per-token log-probs.

A :class:`RolloutEngine` turns prompts into :class:`Rollouts`: completion token ids ``[N, T]`` (kept as ids,
never decoded and re-tokenized), a mask that is 1 up to and including the first EOS id and 0 after it, and the
sampler's log-prob of each sampled token (``pi_old`` in the importance ratio). Rows come prompt-major:
prompt 0's ``n`` samples, then prompt 1's, ...

:class:`HFRolloutEngine` runs transformers' ``generate`` on left-padded batches (temperature / top-p sampling,
no top-k, no repetition penalty: the distribution asked for and nothing else) and reads the sampler's
log-probs from the processed scores it returns. Tokens outside the shared vocabulary ``[0, V)`` (padded
lm_head rows, tokens only the student has) and the student's audio/image placeholder ids get ``-inf`` before
sampling, so the teacher can score every sampled token and no completion smuggles in an audio slot. Sampling
draws from torch's global RNG, which the trainer checkpoints, so a resumed run draws the same.

:class:`xopd.rollout_vllm.VLLMRolloutEngine` fits the same interface with a colocated vLLM engine:
``multi_modal_data`` for the audio, the sampler's log-probs from vLLM, and ``sync_weights`` pushing the
student's updated weights into the engine and resetting its prefix cache after each optimizer step. Its
sampler and the trainer's forward differ slightly in numerics; the importance ratio (``loss.clip_eps``)
accounts for that. :func:`xopd.engines.make_engine` picks one of the two by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from xopd.models import ModelAdapter, Prompt


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Rollouts:
    """Sampled completions. ``prompt_index[i]`` is the prompt row ``i`` answers; ``ids``/``mask``/
    ``sampler_logprobs`` are ``[N, T]`` (ids past the first EOS are padding, mask 0, log-prob 0)."""

    prompt_index: Tensor
    ids: Tensor
    mask: Tensor
    sampler_logprobs: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)

    def select(self, rows: Sequence[int] | Tensor) -> Rollouts:
        """A subset of rows, trimmed to the longest remaining completion."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        mask = self.mask[idx]
        t = int(mask.sum(-1).max()) if len(idx) else 0
        return Rollouts(
            self.prompt_index[idx], self.ids[idx, :t], mask[:, :t], self.sampler_logprobs[idx, :t]
        )

    def finished(self, eos_ids: Sequence[int]) -> Tensor:
        """Rows that ended with an EOS id (not cut by max_new_tokens)."""
        last = (self.lengths - 1).clamp_min(0)
        end = self.ids.gather(1, last[:, None]).squeeze(1)
        return (self.lengths > 0) & torch.isin(end, torch.tensor(list(eos_ids), dtype=end.dtype))


def sample_numbers(prompt_index: Sequence[int]) -> list[int]:
    """For prompt-major rows: the k-th row of a prompt is its sample k."""
    seen: dict[int, int] = {}
    out = []
    for i in prompt_index:
        out.append(seen.get(i, 0))
        seen[i] = out[-1] + 1
    return out


def completion_mask(ids: Tensor, eos_ids: Sequence[int]) -> Tensor:
    """1 at every token up to and including the first EOS id of each row, 0 after it -> bool ``[N, T]``."""
    is_eos = torch.isin(ids, torch.tensor(list(eos_ids), dtype=ids.dtype, device=ids.device))
    before = is_eos.long().cumsum(-1) - is_eos.long()  # EOS tokens strictly before position t
    return before == 0


def pad_rollouts(parts: Sequence[Rollouts]) -> Rollouts:
    """Concatenate rollouts of different lengths (right-padding ids with 0, masks with 0)."""
    t = max(int(p.ids.shape[1]) for p in parts)

    def pad(x: Tensor, value: float | int | bool) -> Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

    return Rollouts(
        torch.cat([p.prompt_index for p in parts]),
        torch.cat([pad(p.ids, 0) for p in parts]),
        torch.cat([pad(p.mask, False) for p in parts]),
        torch.cat([pad(p.sampler_logprobs, 0.0) for p in parts]),
    )


class RolloutEngine(ABC):
    """Samples completions for prompts from a model; see the module docstring."""

    pushes_weights = False  # True: sync_weights reads the model's weights (the trainer gathers FSDP shards)
    # The sampler's order of processing (losses.sampler_logits): banned ids masked before temperature and
    # top-p, or after them. Both engines ban first: vLLM's allowed_token_ids, and transformers runs a custom
    # logits processor before its temperature/top-p warpers (measured: 1e-6 against 4e-3 the other way).
    bans_before_warping = True

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, seeds: Sequence[int] | None = None
    ) -> Rollouts:
        """``params.n`` samples per prompt, prompt-major. With ``seeds`` (one per prompt) a prompt's samples
        depend only on its seed, not on the batch or the process it lands in."""
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        return self._generate(prompts, params, seeds)

    @abstractmethod
    def _generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, seeds: Sequence[int] | None
    ) -> Rollouts:
        """:meth:`generate` for at least one prompt, without gradient."""

    def sync_weights(self) -> None:  # noqa: B027 -- optional hook, a no-op by default
        """Make the engine sample from the model's current weights (after an optimizer step). The HF engine
        runs the trained module itself, so there is nothing to do; a vLLM engine pushes weights here."""

    def close(self) -> None:  # noqa: B027 -- optional hook, a no-op by default
        """Release what the engine holds beyond the trained module (a vLLM engine and its process group)."""


class _Suppress(LogitsProcessor):
    """-inf for ids >= ``vocab_size`` (padded rows, tokens the teacher cannot score) and for ``banned`` ids
    (the student's audio/image placeholders), so they are never sampled."""

    def __init__(self, vocab_size: int, banned: Sequence[int] = ()) -> None:
        self.vocab_size = vocab_size
        self.banned = sorted({int(i) for i in banned if int(i) < vocab_size})

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.clone()
        scores[:, self.vocab_size :] = -float("inf")
        if self.banned:
            scores[:, self.banned] = -float("inf")
        return scores


class HFRolloutEngine(RolloutEngine):
    """transformers ``generate`` on left-padded batches of ``batch_size`` sequences."""

    def __init__(
        self, adapter: ModelAdapter, *, vocab_size: int, batch_size: int = 16, banned_ids: Sequence[int] = ()
    ) -> None:
        self.adapter = adapter
        self.vocab_size = vocab_size
        self.batch_size = batch_size
        self.banned_ids = list(banned_ids)

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        a = self.adapter
        # Every knob set explicitly: an unset one would be filled from the checkpoint's generation config.
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=None,
            repetition_penalty=1.0,
            num_beams=1,
            eos_token_id=list(a.eos_ids),
            pad_token_id=a.pad_id,
            return_dict_in_generate=True,
            output_scores=True,
        )

    def _generate(
        self, prompts: Sequence[Prompt], params: SamplingParams, seeds: Sequence[int] | None
    ) -> Rollouts:
        if seeds is not None:
            return pad_rollouts(
                [self._seeded(i, p, params, s) for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))]
            )
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(params.n)]
        parts = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            parts.append(self._generate_batch([p for _, p in chunk], [i for i, _ in chunk], params))
        return pad_rollouts(parts)

    def _seeded(self, index: int, prompt: Prompt, params: SamplingParams, seed: int) -> Rollouts:
        """One prompt's ``n`` samples (in batches of ``batch_size``) from torch's RNG seeded with ``seed``;
        the caller's RNG stream is left as it was."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            parts = [
                self._generate_batch([prompt] * k, [index] * k, params)
                for k in (min(self.batch_size, params.n - s) for s in range(0, params.n, self.batch_size))
            ]
        return pad_rollouts(parts)

    def _generate_batch(self, prompts: list[Prompt], index: list[int], params: SamplingParams) -> Rollouts:
        a = self.adapter
        inputs = a.collate(prompts)
        out = a.model.generate(
            **inputs,
            generation_config=self._generation_config(params),
            logits_processor=LogitsProcessorList([_Suppress(self.vocab_size, self.banned_ids)]),
        )
        p = inputs["input_ids"].shape[1]
        ids = out.sequences[:, p:].cpu()
        if ids.shape[1] == 0:
            raise RuntimeError(f"{a.name}: generate returned no new tokens")
        # scores[t] are the processed logits the token at t was sampled from (temperature, top-p, vocab mask)
        scores = torch.stack(out.scores, dim=1).float()
        lp = scores.log_softmax(-1).gather(-1, ids.to(scores.device)[..., None]).squeeze(-1).cpu()
        mask = completion_mask(ids, a.eos_ids)
        ids = torch.where(mask, ids, torch.zeros_like(ids))
        lp = torch.where(mask, lp, torch.zeros_like(lp))
        return Rollouts(torch.tensor(index, dtype=torch.long), ids, mask, lp)

