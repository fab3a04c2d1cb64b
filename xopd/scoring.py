"""A student's own samples, scored by a teacher, no update: the one implementation behind the trainer's
held-out reverse KL (:func:`heldout_reverse_kl`) and ``xopd-eval divergence`` (:mod:`analysis.score`).

:func:`sample_and_score` samples ``n`` completions per prompt from the student after the typed (text) and the
spoken (speech, the evalsuite's TTS cache) question, in the prompt format training uses
(:func:`xopd.data.student_prompts`); the teacher reads its own chat-formatted text prompt followed by the
*same completion ids*. Per token: the teacher's log-prob and top-k alternatives
(:func:`xopd.models.head_scores`), the student's log-prob (:func:`xopd.losses.token_logprobs`), the
advantage ``A = lp_T - lp_S`` (:func:`xopd.losses.xopd_advantage`) and, when asked, the exact
full-vocabulary reverse KL (:func:`xopd.losses.reverse_kl_full`, chunked). Sampling draws from a forked torch
RNG seeded with ``seed``: the same call samples the same tokens, and the caller's RNG stream is left as it
was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xopd import losses
from xopd.data import PromptPair, student_prompts
from xopd.models import ModelAdapter, Prompt, head_scores
from xopd.engines import make_engine
from xopd.rollout import Rollouts, SamplingParams

TEXT, SPEECH = "text", "speech"


@dataclass
class Scored:
    """One modality's samples and their per-token scores, ``[N, T]`` rows aligned with ``rollouts``."""

    modality: str
    rollouts: Rollouts
    student_prompts: list[Prompt]  # per pair
    audio_paths: list[str | None]  # per pair: the WAV behind a speech prompt
    teacher_lp: Tensor
    student_lp: Tensor
    advantage: Tensor
    topk_ids: Tensor  # [N, T, topk]
    topk_lp: Tensor
    kl: Tensor | None  # full-vocabulary KL(pi_S || pi_T) per token (``full_kl=True``)


@torch.no_grad()
def sample_and_score(
    student: ModelAdapter,
    teacher: ModelAdapter,
    pairs: Sequence[PromptPair],
    *,
    vocab_size: int,
    modalities: Sequence[str] = (TEXT, SPEECH),
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    system: str | None = None,
    variant: str = "clean",
    topk: int = 0,
    full_kl: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[Scored]:
    """Sample ``n`` completions per pair and modality from ``student``; score each token with ``teacher``."""
    engine = make_engine(
        "hf", student, vocab_size=vocab_size, batch_size=batch_size, banned_ids=student.multimodal_token_ids()
    )
    params = SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature)
    t_prompts = [teacher.text_prompt(p.text, system) for p in pairs]
    out: list[Scored] = []
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in modalities:
            s_prompts, paths = student_prompts(student, pairs, m, [variant] * len(pairs), system)
            log(f"{m}: sampling {n} x {len(pairs)} rollouts from {student.name}")
            rolls = engine.generate(s_prompts, params)
            log(f"{m}: scoring with {teacher.name}")
            chunks = [
                _score_rows(student, teacher, rolls, range(s, min(s + batch_size, len(rolls))), s_prompts,
                            t_prompts, vocab_size, topk, full_kl)  # fmt: skip
                for s in range(0, len(rolls), batch_size)
            ]
            width = rolls.ids.shape[1]
            cat = [None if chunks[0][k] is None else _cat([c[k] for c in chunks], width) for k in range(6)]
            out.append(Scored(m, rolls, s_prompts, paths, *cat))  # type: ignore[arg-type]
    return out


def _score_rows(
    student: ModelAdapter, teacher: ModelAdapter, rolls: Rollouts, rows: range, s_prompts: Sequence[Prompt],
    t_prompts: Sequence[Prompt], vocab_size: int, topk: int, full_kl: bool,
) -> tuple[Tensor | None, ...]:
    """(teacher lp, student lp, advantage, top-k ids, top-k lp, KL or None) of ``rows``, on the CPU."""
    sub = rolls.select(list(rows))
    idx = sub.prompt_index.tolist()
    s_h = student.completion_hidden([s_prompts[i] for i in idx], sub.ids, sub.mask)
    t_h = teacher.completion_hidden([t_prompts[i] for i in idx], sub.ids, sub.mask)
    (s_w, s_b), (t_w, t_b) = student.head, teacher.head
    t = head_scores(t_h, t_w, t_b, sub.ids.to(t_h.device), sub.mask.to(t_h.device), vocab_size=vocab_size,
                    topk=topk, chunk_size=teacher.chunk_size)  # fmt: skip
    t_h, ids, mask = t_h.to(s_h.device), sub.ids.to(s_h.device), sub.mask.to(s_h.device)
    s_lp = losses.token_logprobs(
        s_h, s_w, ids, mask, bias=s_b, vocab_size=vocab_size, chunk_size=student.chunk_size
    )
    t_lp = t.logprobs.to(s_lp.device)
    adv = losses.xopd_advantage(t_lp, s_lp, mask)
    kl = None
    if full_kl:
        kl = losses.reverse_kl_full(
            s_h, s_w, t_h, t_w, mask, vocab_size=vocab_size, student_bias=s_b, teacher_bias=t_b,
            chunk_size=student.chunk_size,
        )  # fmt: skip
    scores = (t_lp, s_lp, adv, t.topk_ids, t.topk_logprobs, kl)
    return tuple(x.cpu() if x is not None else None for x in scores)


def _cat(parts: list[Tensor], width: int) -> Tensor:
    """Row chunks (each trimmed to its own longest completion) padded back to ``width`` and stacked."""
    pad = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
    return torch.cat(pad)


def heldout_reverse_kl(
    student: ModelAdapter,
    teacher: ModelAdapter,
    pairs: Sequence[PromptPair],
    *,
    seed: int = 1234,
    **sampling: Any,
) -> dict[str, float]:
    """Mean teacher-student reverse KL on held-out pairs, per modality, on the student's own samples.

    ``sampling``: the keywords of :func:`sample_and_score` that choose the samples (``vocab_size``, required;
    ``modalities``, ``n``, ``max_new_tokens``, ``temperature``, ``batch_size``, ``system``, ``variant``).
    ``kl_<m>``: exact full-vocabulary KL(pi_S || pi_T) per position (chunked), averaged over all sampled
    tokens; ``kl_sampled_<m>``: the sampled-token estimate (mean of ``lp_S - lp_T``); ``len_<m>``;
    ``kl_mean``: the mean of ``kl_<m>`` over modalities.
    """
    scored = sample_and_score(student, teacher, pairs, seed=seed, full_kl=True, **sampling)
    out: dict[str, float] = {}
    for s in scored:
        tokens = max(1, int(s.rollouts.mask.sum()))
        out[f"kl_{s.modality}"] = float(s.kl.double().sum()) / tokens  # type: ignore[union-attr]
        out[f"kl_sampled_{s.modality}"] = float((s.student_lp - s.teacher_lp).double().sum()) / tokens
        out[f"len_{s.modality}"] = float(s.rollouts.lengths.float().mean())
    out["kl_mean"] = sum(out[f"kl_{s.modality}"] for s in scored) / len(scored)
    return out
