"""The training objectives as data: ``OBJECTIVES[loss.kind]`` says what an objective trains on and its loss.

An :class:`Objective` declares

* ``source(cfg, step, index)`` -- where the training sequences of the ``index``-th prompt of ``step``'s global
  batch come from (:mod:`xopd.batches`: ``STUDENT`` samples, ``GOLD`` reference answers, ``TEACHER`` answers
  cached once), and ``sources(cfg)``, every source it may use (what setup has to prepare);
* ``loss(inputs) -> LossOut`` -- one modality's loss on one micro-batch, already normalised by the step's
  global counts, with the per-token log-probs and advantages the metrics and the rollout log show, and its
  own named metrics (a :class:`xopd.metrics.Tally`), turned into ``metrics.jsonl`` keys by ``summarize``.

The trainer looks its objective up once and never branches on the kind; the modalities are combined the same
way for every kind (``lam * L_text + (1 - lam) * L_speech``, :func:`xopd.losses.xopd_loss`). The pure math
lives in :mod:`xopd.losses`. Adding a baseline is one loss function, one table entry and its pinned test.

* ``xopd`` (arXiv 2603.24596): on the student's own samples, the detached advantage ``A_t`` -- the log-ratio
  ``lp_T - lp_S``, or PowerOPD's bounded reward (``loss.reward: power``, table :data:`REWARDS`) -- drives the
  importance-weighted policy gradient (:func:`xopd.losses.xopd_policy_loss`); the ratio compares the trainer's
  log-probs with the sampler's on the sampler's own distribution (temperature, top-p, banned ids).
* ``sft``: cross-entropy on the reference answers. ``offline_kd``: the same on the teacher's fixed answers.
* ``gkd``: generalized JSD(beta) (``beta: 0`` = forward KL) over the full vocabulary, chunked from hidden
  states, on the student's samples for a seeded ``loss.gkd_student_fraction`` of the prompts and on their
  reference answers (n copies) for the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from xopd import losses
from xopd.batches import GOLD, STUDENT, TEACHER, ModalityBatch, prompt_seed
from xopd.config import LossConfig, RunConfig
from xopd.metrics import Tally, TokenStats
from xopd.models import head_scores
from xopd.state import Run


@dataclass
class LossInputs:
    """One modality's micro-batch, scored: what an objective's loss reads."""

    lc: LossConfig  # cfg.loss
    part: ModalityBatch
    old_logprobs: Tensor  # the sampler's log-probs of these rows (zeros where the student did not sample)
    ids: Tensor  # [B, T] completion ids, on the models' device
    mask: Tensor
    teacher_lp: Tensor  # log pi_T of the ids (no gradient)
    teacher_hidden: Tensor
    teacher_head: tuple[Tensor, Tensor | None]
    student_hidden: Tensor  # with gradient
    student_head: tuple[Tensor, Tensor | None]
    norm: dict[str, int]  # {"num_sequences": N} or {"num_tokens": N}: the step's global count
    student_lp: Callable[[Tensor], Tensor]  # hidden -> log pi_S of the ids, chunked over the vocabulary
    ratio_lp: Callable[[Tensor], Tensor]  # hidden -> log-probs under the sampler's processed distribution
    vocab_size: int
    chunk_size: int


@dataclass
class LossOut:
    """An objective's answer: the loss (with gradient) and what the metrics and the rollout log show."""

    loss: Tensor
    student_lp: Tensor  # for the metrics and the rollout log
    advantage: Tensor
    metrics: Tally


@dataclass(frozen=True)
class Objective:
    """A loss kind: where each prompt's sequences come from, its loss, how its own metrics read."""

    name: str
    loss: Callable[[LossInputs], LossOut]
    source: Callable[[RunConfig, int, int], str]  # (cfg, step, global prompt index) -> STUDENT|GOLD|TEACHER
    sources: Callable[[RunConfig], frozenset[str]]  # every source it may use
    gold_copies: Callable[[RunConfig], int] = lambda cfg: 1  # rows per reference answer
    # (reduced metrics, modality) -> its metrics.jsonl keys for that modality
    summarize: Callable[[dict[str, float], str], dict[str, float]] = lambda values, m: {}
    gold_hint: str = ""  # said when reference answers are missing


# ------------------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------------------

REWARDS: dict[str, Callable[[Tensor, Tensor, Tensor, LossConfig], Tensor]] = {
    "logratio": lambda t_lp, s_lp, mask, lc: losses.xopd_advantage(t_lp, s_lp, mask),
    "power": lambda t_lp, s_lp, mask, lc: losses.power_opd_reward(t_lp, s_lp, mask, alpha=lc.power_alpha),
}


def xopd_loss(x: LossInputs) -> LossOut:
    """The importance-weighted policy gradient on the advantage (``loss.reward``); the ratio's statistics."""
    lc = x.lc
    s_lp = x.student_lp(x.student_hidden)
    adv = REWARDS[lc.reward](x.teacher_lp, s_lp, x.mask, lc)
    old, ratio_lp = None, s_lp
    if x.part.sampled_by_student:
        # the ratio compares one distribution on both sides: the sampler's (temperature, top-p, banned ids),
        # which is what the sampler log-probs hold; the advantage above stays raw (T = 1)
        old, ratio_lp = x.old_logprobs, x.ratio_lp(x.student_hidden)
    loss, pst = losses.xopd_policy_loss(
        ratio_lp, old, adv, x.mask, clip_eps=lc.clip_eps, normalize=lc.normalize, **x.norm
    )
    metrics = Tally()
    if x.part.sampled_by_student:  # declared on every micro-batch, so every process reduces the same names
        n_tok = float(pst["tokens"])
        metrics.add("ratio_sum", float(pst["ratio_mean"]) * n_tok)
        metrics.add("ratio_clipped", float(pst["clip_frac"]) * n_tok)
        metrics.add("ratio_tokens", n_tok)
        metrics.add("ratio_min", float(pst["ratio_min"]) if n_tok else float("inf"), "min")
        metrics.add("ratio_max", float(pst["ratio_max"]) if n_tok else float("-inf"), "max")
    return LossOut(loss, s_lp, adv, metrics)


def ratio_summary(v: dict[str, float], m: str) -> dict[str, float]:
    """The importance ratio pi_theta / pi_sampler per modality (mean, min, max over tokens) and the share of
    tokens whose clipped branch was active: ~1 and ~0 on-policy; the first thing to read when a run
    misbehaves."""
    tokens = v.get(f"ratio_tokens_{m}", 0.0)
    if not tokens:
        return {}
    return {
        f"ratio_mean_{m}": v[f"ratio_sum_{m}"] / tokens,
        f"ratio_min_{m}": v[f"ratio_min_{m}"],
        f"ratio_max_{m}": v[f"ratio_max_{m}"],
        f"clip_frac_{m}": v[f"ratio_clipped_{m}"] / tokens,
    }


def cross_entropy_loss(x: LossInputs) -> LossOut:
    """sft / offline_kd: cross-entropy on the fixed target ids (``losses.sft_loss`` on these log-probs)."""
    s_lp = x.student_lp(x.student_hidden)
    loss = -losses.masked_mean(s_lp, x.mask, normalize=x.lc.normalize, **x.norm)
    return LossOut(loss, s_lp, losses.xopd_advantage(x.teacher_lp, s_lp, x.mask), Tally())


def gkd_loss(x: LossInputs) -> LossOut:
    """Generalized JSD(beta) / forward / reverse / top-k KL over the full vocabulary, chunked."""
    lc = x.lc
    (s_w, s_b), (t_w, t_b) = x.student_head, x.teacher_head
    div = losses.chunked_divergence(
        lc.divergence, x.student_hidden, s_w, x.teacher_hidden, t_w, x.mask, vocab_size=x.vocab_size,
        chunk_size=x.chunk_size, student_bias=s_b, teacher_bias=t_b, beta=lc.beta, k=lc.topk,
    )  # fmt: skip
    loss = losses.masked_mean(div, x.mask, normalize=lc.normalize, **x.norm)
    with torch.no_grad():
        s_lp = x.student_lp(x.student_hidden.detach())  # for the log and metrics only
    return LossOut(loss, s_lp, losses.xopd_advantage(x.teacher_lp, s_lp, x.mask), Tally())


def gkd_on_policy(cfg: RunConfig, step: int, index: int) -> bool:
    """gkd: whether the ``index``-th prompt of ``step``'s global batch trains on the student's own samples
    (probability ``loss.gkd_student_fraction``) or on its reference answer; seeded by (seed, step, index), so
    every process decides the same and a resumed run decides again as before."""
    u = random.Random(prompt_seed(cfg.seed, step, index, "gkd")).random()  # in [0, 1)
    return u < cfg.loss.gkd_student_fraction


def _gkd_sources(cfg: RunConfig) -> frozenset[str]:
    f = cfg.loss.gkd_student_fraction
    return frozenset(([STUDENT] if f > 0 else []) + ([GOLD] if f < 1 else []))


def _always(source: str) -> tuple[Callable[..., str], Callable[[RunConfig], frozenset[str]]]:
    """(source, sources) of an objective that trains every prompt on ``source``."""
    return (lambda cfg, step, index: source), (lambda cfg: frozenset([source]))


OBJECTIVES: dict[str, Objective] = {
    "xopd": Objective("xopd", xopd_loss, *_always(STUDENT), summarize=ratio_summary),
    "sft": Objective("sft", cross_entropy_loss, *_always(GOLD)),
    "offline_kd": Objective("offline_kd", cross_entropy_loss, *_always(TEACHER)),
    "gkd": Objective(
        "gkd",
        gkd_loss,
        source=lambda cfg, step, index: STUDENT if gkd_on_policy(cfg, step, index) else GOLD,
        sources=_gkd_sources,
        gold_copies=lambda cfg: cfg.rollout.n,  # a gold prompt stands in for its n samples: weighs the same
        gold_hint="loss.gkd_student_fraction=1 trains on student samples only",
    ),
}


# ------------------------------------------------------------------------------------------------------------
# one micro-batch of one modality: score it, apply the objective
# ------------------------------------------------------------------------------------------------------------


def micro_batch_loss(
    run: Run, part: ModalityBatch, rows: list[int], totals: dict[str, int], *, log_tokens: bool = False
) -> tuple[Tensor, TokenStats, Tally]:
    """One modality's loss on rows ``rows`` (normalised by the step's global ``totals``: sequences, tokens),
    their token stats and the objective's metrics. The teacher reads its own prompt + the same ids."""
    cfg, lc = run.cfg, run.cfg.loss
    sub = part.seqs.select(rows)
    index = sub.prompt_index.tolist()
    ids, mask = sub.ids, sub.mask
    with torch.no_grad():
        t_hidden = run.teacher.completion_hidden([part.teacher_prompts[i] for i in index], ids, mask)
    dev = t_hidden.device
    ids_d, mask_d = ids.to(dev), mask.to(dev)
    chunk, vocab = cfg.models.chunk_size, run.vocab_size
    t = head_scores(t_hidden, *run.teacher.head, ids_d, mask_d, vocab_size=vocab, topk=cfg.logging.topk,
                    chunk_size=chunk)  # fmt: skip
    s_hidden = run.student.completion_hidden([part.student_prompts[i] for i in index], ids, mask)
    s_w, s_b = run.student.head
    r = cfg.rollout

    def student_lp(hidden: Tensor) -> Tensor:
        return losses.token_logprobs(hidden, s_w, ids_d, mask_d, bias=s_b, vocab_size=vocab, chunk_size=chunk)

    def ratio_lp(hidden: Tensor) -> Tensor:
        return losses.sampler_token_logprobs(
            hidden, s_w, ids_d, mask_d, bias=s_b, vocab_size=vocab, temperature=r.temperature, top_p=r.top_p,
            banned_ids=run.banned_ids, banned_first=run.engine.bans_before_warping, chunk_size=chunk,
        )  # fmt: skip

    by_sequence = lc.normalize == "sequence"
    norm = {"num_sequences": totals["sequences"]} if by_sequence else {"num_tokens": totals["tokens"]}
    out = run.objective.loss(
        LossInputs(lc, part, sub.sampler_logprobs.to(dev), ids_d, mask_d, t.logprobs, t_hidden,
                   run.teacher.head, s_hidden, (s_w, s_b), norm, student_lp, ratio_lp, vocab,
                   chunk)  # fmt: skip
    )
    s_ent = None
    if log_tokens:  # the student's entropy: an extra pass over the head, only on logged steps
        with torch.no_grad():
            s_ent = head_scores(s_hidden.detach(), s_w, s_b, ids_d, mask_d, vocab_size=vocab, topk=0,
                                chunk_size=chunk).entropy.cpu()  # fmt: skip
    st = TokenStats(rows, mask.cpu(), out.student_lp.detach().cpu(), t.logprobs.cpu(),
                    out.advantage.detach().cpu(), t.topk_ids.cpu(), t.topk_logprobs.cpu(), t.entropy.cpu(),
                    s_ent)  # fmt: skip
    return out.loss, st, out.metrics
