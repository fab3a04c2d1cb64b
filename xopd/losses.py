"""The X-OPD loss family as pure functions on tensors (torch only, no model code).

Conventions shared by every function here:

* Shapes: ``[B, T]`` per-token tensors over *completion* tokens, already aligned so that position ``t`` holds
  the log-prob / hidden state that *predicts* token ``t`` (shift before calling: the log-prob of token ``t``
  comes from the logits at ``t - 1`` of the full sequence).
* ``mask``: bool or float ``[B, T]`` (non-zero counts as 1; it is not a weight): 1 = real completion token
  (EOS included), 0 = padding / after EOS. Masked positions never enter the arithmetic: inputs are replaced
  by finite values *before* any ``exp``/``log``, so a ``-inf`` or ``NaN`` at a padded position can poison
  neither the value nor the gradient (TRL PR #5594).
* Log-probs are of the *sampled* token unless a name says otherwise. Per-token outputs are 0 where ``mask``
  is 0.
* Reduction (:func:`masked_mean`): ``normalize="sequence"`` (default, the paper's) takes the token mean within
  each rollout, then the mean over rollouts; ``normalize="token"`` divides the masked sum by one token count.
  For exact gradient accumulation / DDP equivalence pass the *global* count (``num_tokens``, or
  ``num_sequences`` for the sequence mode) so that summing micro-batch losses gives the full-batch loss (TRL
  #4719).
* Full-vocab divergences come in two forms: ``*_plain`` / logits-in functions for references and small
  vocabularies, and chunked hidden-state-in functions (:func:`reverse_kl_full`, :func:`chunked_divergence`,
  :func:`token_logprobs`, :func:`sft_loss` with ``weight=``) that build logits a chunk of completion tokens at
  a time from ``hidden @ lm_head.T`` under ``torch.utils.checkpoint``, so neither the forward nor the backward
  ever holds ``[B, T, V]`` (TRL #2255, ms-swift #10097). Padding rows are skipped entirely.
* Padded vocabularies (student 151936 rows vs teacher 152064, TRL #2215/#3028): pass ``vocab_size`` = the
  shared tokenizer size and both heads/logits are sliced to it; without it, differing sizes are an error.
* Teacher tensors, old (sampler) log-probs and advantages are detached here; gradients flow only into the
  student.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

Normalize = Literal["sequence", "token"]
TopkMode = Literal["tail", "renormalize", "none"]
Divergence = Literal["reverse_kl", "forward_kl", "jsd", "topk_reverse_kl"]

DEFAULT_CHUNK_SIZE = 512  # completion tokens per chunk: 512 x 152k fp32 logits = 0.3 GB per live buffer


# ------------------------------------------------------------------------------------------------------------
# validation and reduction
# ------------------------------------------------------------------------------------------------------------


def _bool_mask(mask: Tensor, shape: torch.Size, name: str = "mask") -> Tensor:
    if mask.dim() != 2:
        raise ValueError(f"{name} must be [B, T], got shape {tuple(mask.shape)}")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; the per-token tensors have {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_same_shape(**tensors: Tensor) -> torch.Size:
    items = list(tensors.items())
    name0, t0 = items[0]
    if t0.dim() != 2:
        raise ValueError(f"{name0} must be [B, T], got shape {tuple(t0.shape)}")
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but {name0} has {tuple(t0.shape)}")
    return t0.shape


def _upcast(x: Tensor) -> Tensor:
    # log_softmax in half precision loses the small differences a KL is made of; float64 stays float64
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def masked_mean(
    values: Tensor,
    mask: Tensor,
    *,
    normalize: Normalize = "sequence",
    num_tokens: int | float | Tensor | None = None,
    num_sequences: int | float | Tensor | None = None,
) -> Tensor:
    """Reduce per-token ``values [B, T]`` to a scalar over the positions where ``mask`` is set.

    ``"sequence"``: mean over rollouts of each rollout's token mean; the rollout count is ``num_sequences``
    (default: the local ``B``, so an all-masked row counts as a rollout contributing 0).
    ``"token"``: masked sum / ``num_tokens`` (default: the local masked-token count, at least 1).
    Pass the global counts when micro-batches or ranks share one update: the summed losses then equal the
    full-batch loss exactly. Values at masked positions are ignored even when they are ``inf``/``NaN``.
    """
    m = _bool_mask(mask, values.shape)
    v = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if normalize == "sequence":
        if num_tokens is not None:
            raise ValueError("num_tokens is for normalize='token'; the sequence mode takes num_sequences")
        per_seq = v.sum(-1) / m.sum(-1).clamp_min(1).to(v.dtype)
        denom = values.shape[0] if num_sequences is None else num_sequences
        return per_seq.sum() / denom
    if normalize == "token":
        if num_sequences is not None:
            raise ValueError("num_sequences is for normalize='sequence'; the token mode takes num_tokens")
        denom = m.sum().clamp_min(1).to(v.dtype) if num_tokens is None else num_tokens
        return v.sum() / denom
    raise ValueError(f"normalize must be 'sequence' or 'token', got {normalize!r}")


# ------------------------------------------------------------------------------------------------------------
# X-OPD: sampled-token advantage and importance-weighted policy gradient
# ------------------------------------------------------------------------------------------------------------


def xopd_advantage(teacher_logprobs: Tensor, student_logprobs: Tensor, mask: Tensor) -> Tensor:
    """A_t = log pi_T(y_t | T, y<t) - log pi_S(y_t | ctx, y<t), detached, 0 where ``mask`` is 0.

    Its token mean is minus the sampled-token (k1) estimate of the reverse KL(pi_S || pi_T).
    """
    shape = _check_same_shape(teacher_logprobs=teacher_logprobs, student_logprobs=student_logprobs)
    m = _bool_mask(mask, shape)
    zero = torch.zeros((), dtype=student_logprobs.dtype, device=student_logprobs.device)
    lp_t = torch.where(m, teacher_logprobs.detach(), zero)
    lp_s = torch.where(m, student_logprobs.detach(), zero)
    return lp_t - lp_s


def xopd_policy_loss(
    student_logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float | None = None,
    normalize: Normalize = "sequence",
    num_tokens: int | float | Tensor | None = None,
    num_sequences: int | float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = -mean_rollouts[(1/|y|) sum_t rho_t A_t], rho_t = exp(lp_t - lp_old_t); returns ``(loss, stats)``.

    ``old_logprobs=None`` means on-policy (rho = 1 in value, gradient ``A_t * grad lp_t``). With ``clip_eps``
    the per-token objective is PPO's pessimistic ``min(rho A, clip(rho, 1-eps, 1+eps) A)``, for several
    optimizer steps on one batch or a sampler (vLLM) whose log-probs differ from the trainer's. ``advantages``
    may be the X-OPD advantage or any other detached per-token reward (e.g. :func:`power_opd_reward`).

    With rho = 1 the expected gradient equals the gradient of the per-token reverse KL
    ``sum_t E_{y<t}[KL(pi_S(.|y<t) || pi_T(.|y<t))]`` with the prefix distribution held fixed (discount 0, as
    in the paper) -- not the gradient of the sequence-level KL, which would weight each token by the
    return-to-go.

    stats (detached scalars, local token means): ``ratio_mean``, ``ratio_min``, ``ratio_max``, ``clip_frac`` (share of tokens where the
    clipped branch is active), ``advantage_mean`` (= -reverse-KL estimate when ``advantages`` is the X-OPD
    advantage), ``tokens``.
    """
    if old_logprobs is None:
        shape = _check_same_shape(student_logprobs=student_logprobs, advantages=advantages)
    else:
        shape = _check_same_shape(
            student_logprobs=student_logprobs, old_logprobs=old_logprobs, advantages=advantages
        )
    m = _bool_mask(mask, shape)
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    zero = torch.zeros((), dtype=student_logprobs.dtype, device=student_logprobs.device)
    # sanitise before exp: a -inf/NaN log-prob at a padded position must not meet 0 * (TRL PR #5594)
    lp = torch.where(m, student_logprobs, zero)
    old = lp.detach() if old_logprobs is None else torch.where(m, old_logprobs.detach(), zero)
    adv = torch.where(m, advantages.detach(), zero)
    ratio = torch.exp(lp - old)
    obj = ratio * adv
    if clip_eps is not None:
        obj_clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
        clipped = obj_clipped < obj
        obj = torch.minimum(obj, obj_clipped)
    else:
        clipped = torch.zeros_like(m)
    loss = -masked_mean(obj, m, normalize=normalize, num_tokens=num_tokens, num_sequences=num_sequences)
    with torch.no_grad():
        n = m.sum().clamp_min(1)
        r = ratio.detach()
        stats = {
            "ratio_mean": (r * m).sum() / n,
            "ratio_min": torch.where(m, r, torch.full_like(r, float("inf"))).min() if m.any() else zero + 1,
            "ratio_max": torch.where(m, r, torch.full_like(r, float("-inf"))).max() if m.any() else zero + 1,
            "clip_frac": (clipped & m).sum() / n,
            "advantage_mean": adv.sum() / n,
            "tokens": m.sum(),
        }
    return loss, stats


def xopd_loss(
    in_modal_loss: Tensor | None, cross_modal_loss: Tensor | None, *, lam: float = 0.5
) -> Tensor:
    """The X-OPD objective -[lam * L_im + (1 - lam) * L_cm] from the two per-modality losses.

    Each argument is a *loss* as returned by :func:`xopd_policy_loss` (already the negated objective), so this
    is ``lam * in_modal_loss + (1 - lam) * cross_modal_loss``. A modality whose weight is 0 may be ``None``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    terms = []
    named = (("in_modal_loss", in_modal_loss, lam), ("cross_modal_loss", cross_modal_loss, 1.0 - lam))
    for name, loss, weight in named:
        if loss is None:
            if weight != 0:
                raise ValueError(f"{name} is None but its weight is {weight}")
            continue
        if loss.dim() != 0:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(loss.shape)}")
        terms.append(weight * loss)
    if not terms:
        raise ValueError("both losses are None")
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def power_opd_reward(
    teacher_logprobs: Tensor,
    student_logprobs: Tensor,
    mask: Tensor,
    *,
    alpha: float = 5.0,
    box_cox: bool = False,
) -> Tensor:
    """PowerOPD's bounded, sign-consistent per-token reward (arXiv 2606.17199), detached, 0 where masked.

    ``r_t = p_T(y_t)^alpha - p_S(y_t)^alpha = exp(alpha lp_T) - exp(alpha lp_S)`` in ``[-1, 1]``, with the
    sign of the log-ratio. This is the formula in the authors' README and their trainer code
    (EIT-NLP/PowerOPD, ``opd_dynamics/trainer.py``, reward mode ``sampled_power_diff``); their scripts default
    to ``alpha = 5``. It was checked against that code and the paper's abstract, not against the paper's
    equations. ``box_cox=True`` divides by ``alpha`` (the Box-Cox scaling), which recovers the log-ratio
    ``lp_T - lp_S`` as ``alpha -> 0`` and bounds ``r`` by ``1/alpha``. Use it as ``advantages`` in
    :func:`xopd_policy_loss`. It needs both log-probs, not only their difference: ``p_T^a - p_S^a`` is not a
    function of ``lp_T - lp_S``.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    shape = _check_same_shape(teacher_logprobs=teacher_logprobs, student_logprobs=student_logprobs)
    m = _bool_mask(mask, shape)
    zero = torch.zeros((), dtype=student_logprobs.dtype, device=student_logprobs.device)
    lp_t = torch.where(m, teacher_logprobs.detach(), zero)
    lp_s = torch.where(m, student_logprobs.detach(), zero)
    r = torch.exp(alpha * lp_t) - torch.exp(alpha * lp_s)  # 0 at masked positions (1 - 1)
    return r / alpha if box_cox else r


# ------------------------------------------------------------------------------------------------------------
# per-row math on logits [N, V] (shared by the plain and the chunked forms)
# ------------------------------------------------------------------------------------------------------------


def _kl_logp(lp: Tensor, lq: Tensor) -> Tensor:
    """KL(P || Q) = sum_v p (log p - log q) per row, from log-probs; entries with p = 0 contribute exactly 0.

    The ``where`` comes before the product so that ``-inf - -inf`` (a vocabulary entry both sides exclude)
    yields neither a NaN value nor a NaN gradient.
    """
    p = lp.exp()
    diff = torch.where(p > 0, lp - lq, torch.zeros((), dtype=lp.dtype, device=lp.device))
    return (p * diff).sum(-1)


def _safe_logsumexp(x: Tensor) -> Tensor:
    """logsumexp over the last dim, ``-inf`` for an all ``-inf`` row, with a finite (zero) gradient there."""
    empty = torch.isneginf(x).all(-1, keepdim=True)
    lse = torch.where(empty, torch.zeros((), dtype=x.dtype, device=x.device), x).logsumexp(-1, keepdim=True)
    return torch.where(empty, torch.full((), -math.inf, dtype=x.dtype, device=x.device), lse)


def _reverse_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    return _kl_logp(s.log_softmax(-1), t.log_softmax(-1))


def _forward_kl_rows(s: Tensor, t: Tensor) -> Tensor:
    return _kl_logp(t.log_softmax(-1), s.log_softmax(-1))


def _jsd_rows(s: Tensor, t: Tensor, beta: float) -> Tensor:
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    if beta == 0.0:
        return _kl_logp(lt, ls)  # forward KL(T || S)
    if beta == 1.0:
        return _kl_logp(ls, lt)  # reverse KL(S || T)
    # log M via a logsumexp that stays NaN-free in backward where both sides are -inf (an excluded token)
    lm = _safe_logsumexp(torch.stack([ls + math.log(1.0 - beta), lt + math.log(beta)], dim=-1)).squeeze(-1)
    return beta * _kl_logp(lt, lm) + (1.0 - beta) * _kl_logp(ls, lm)


def _topk_reverse_kl_rows(s: Tensor, t: Tensor, k: int, mode: TopkMode) -> Tensor:
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    idx = ls.topk(k, dim=-1).indices  # the student's top-k support; selection carries no gradient
    ls_k, lt_k = ls.gather(-1, idx), lt.gather(-1, idx)
    if mode == "none":
        return _kl_logp(ls_k, lt_k)  # truncated sum of the exact KL's terms (can be < 0)
    if mode == "renormalize":
        return _kl_logp(ls_k.log_softmax(-1), lt_k.log_softmax(-1))
    # "tail": the rest of the vocabulary as one extra outcome -> an exact KL of a coarsened distribution
    ls_tail = _safe_logsumexp(ls.scatter(-1, idx, -math.inf))
    lt_tail = _safe_logsumexp(lt.scatter(-1, idx, -math.inf))
    return _kl_logp(torch.cat([ls_k, ls_tail], -1), torch.cat([lt_k, lt_tail], -1))


def _row_fn(divergence: Divergence, *, beta: float, k: int | None, topk_mode: TopkMode) -> Callable:
    if divergence == "reverse_kl":
        return _reverse_kl_rows
    if divergence == "forward_kl":
        return _forward_kl_rows
    if divergence == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        return lambda s, t: _jsd_rows(s, t, beta)
    if divergence == "topk_reverse_kl":
        if k is None or k < 1:
            raise ValueError(f"topk_reverse_kl needs k >= 1, got {k}")
        if topk_mode not in ("tail", "renormalize", "none"):
            raise ValueError(f"topk mode must be 'tail', 'renormalize' or 'none', got {topk_mode!r}")
        return lambda s, t: _topk_reverse_kl_rows(s, t, k, topk_mode)
    raise ValueError(
        f"unknown divergence {divergence!r}; expected reverse_kl, forward_kl, jsd or topk_reverse_kl"
    )


def _shared_vocab(v_student: int, v_teacher: int, vocab_size: int | None, what: str) -> int:
    if vocab_size is None:
        if v_student != v_teacher:
            raise ValueError(
                f"student {what} has {v_student} vocabulary rows but the teacher's has {v_teacher}; pass "
                f"vocab_size=<shared tokenizer size> to slice padded rows (TRL #2215)"
            )
        return v_student
    if not 0 < vocab_size <= min(v_student, v_teacher):
        raise ValueError(
            f"vocab_size={vocab_size} must be in [1, {min(v_student, v_teacher)}] "
            f"(student {what}: {v_student} rows, teacher: {v_teacher})"
        )
    return vocab_size


def _scatter_rows(vals: Tensor, m: Tensor) -> Tensor:
    """Place per-row values [N] back at the ``True`` positions of ``m`` [B, T]; zeros elsewhere."""
    flat_idx = m.reshape(-1).nonzero().squeeze(1)
    out = vals.new_zeros(m.numel()).index_put((flat_idx,), vals)
    return out.view(m.shape)


def _check_student_teacher(student: Tensor, teacher: Tensor, what: str, each: str, last: str) -> None:
    """Both ``[B, T, <last>]`` over the same ``[B, T]``; ``what`` names both in the messages, ``each`` one."""
    if student.dim() != 3 or teacher.dim() != 3:
        raise ValueError(
            f"{what} must be [B, T, {last}], got student {tuple(student.shape)}, "
            f"teacher {tuple(teacher.shape)}"
        )
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"student {each} {tuple(student.shape)} and teacher {each} {tuple(teacher.shape)} "
            "cover different [B, T]"
        )


def _plain_divergence(
    row_fn: Callable, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, vocab_size: int | None,
    temperature: float,
) -> Tensor:
    _check_student_teacher(student_logits, teacher_logits, "logits", "logits", "V")
    v = _shared_vocab(student_logits.shape[-1], teacher_logits.shape[-1], vocab_size, "logits")
    m = _bool_mask(mask, student_logits.shape[:2])
    # only real completion rows are touched: a padded row of -inf logits would make log_softmax NaN
    s = _upcast(student_logits[..., :v][m]) / temperature
    t = _upcast(teacher_logits.detach()[..., :v][m]) / temperature
    return _scatter_rows(row_fn(s, t), m)


# ------------------------------------------------------------------------------------------------------------
# plain (logits-in) divergences: [B, T, V] inputs, per-token [B, T] outputs
# ------------------------------------------------------------------------------------------------------------


def reverse_kl_full_plain(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, vocab_size: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Exact per-token reverse KL(pi_S || pi_T) over the full vocabulary, from full logits -> [B, T]."""
    return _plain_divergence(_reverse_kl_rows, student_logits, teacher_logits, mask, vocab_size, temperature)


def forward_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, vocab_size: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Exact per-token forward KL(pi_T || pi_S) (mode-covering; GKD's beta = 0) -> [B, T]."""
    return _plain_divergence(_forward_kl_rows, student_logits, teacher_logits, mask, vocab_size, temperature)


def generalized_jsd(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, beta: float = 0.5, temperature: float = 1.0,
    *, vocab_size: int | None = None,
) -> Tensor:
    """Generalized JSD(beta) of GKD (Agarwal et al. 2024, Eq. 1), as TRL's ``generalized_jsd_loss``.

    M = beta * pi_T + (1 - beta) * pi_S;  JSD = beta * KL(pi_T || M) + (1 - beta) * KL(pi_S || M).
    ``beta = 0`` is the forward KL(pi_T || pi_S), ``beta = 1`` the reverse KL(pi_S || pi_T) -- special-cased,
    as in TRL: the mixture formula itself tends to 0 at both ends (JSD/beta -> forward KL as beta -> 0 and
    JSD/(1 - beta) -> reverse KL as beta -> 1). Logits are divided by ``temperature`` first. -> [B, T]
    """
    row_fn = _row_fn("jsd", beta=beta, k=None, topk_mode="tail")
    return _plain_divergence(row_fn, student_logits, teacher_logits, mask, vocab_size, temperature)


def topk_reverse_kl(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, k: int, *, mode: TopkMode = "tail",
    vocab_size: int | None = None, temperature: float = 1.0,
) -> Tensor:
    """Reverse KL(pi_S || pi_T) restricted to the student's top-k tokens at each position -> [B, T].

    ``mode``:
      * ``"tail"`` (default): the k tokens plus one "everything else" outcome carrying the remaining mass of
        each side. An exact KL of a coarsened distribution: 0 <= value <= full KL (data processing), = full KL
        at k = V.
      * ``"renormalize"``: both distributions renormalised over the k tokens (KL of the conditionals on the
        top-k set; what TRL's top-k GKD does). >= 0, = full KL at k = V.
      * ``"none"``: the k terms p_S (log p_S - log p_T) of the exact sum, unnormalised; may be negative.
    The selection is by the (detached) student ranking; gradients flow through the selected values.
    """
    row_fn = _row_fn("topk_reverse_kl", beta=0.5, k=k, topk_mode=mode)
    return _plain_divergence(row_fn, student_logits, teacher_logits, mask, vocab_size, temperature)


# ------------------------------------------------------------------------------------------------------------
# chunked (hidden-states-in) forms: logits built a chunk of completion tokens at a time
# ------------------------------------------------------------------------------------------------------------


def _head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    logits = _upcast(F.linear(hidden, weight, bias))
    return logits / temperature if temperature != 1.0 else logits


def _chunked_rows(
    fn: Callable[..., Tensor], rows: Sequence[Tensor], shared: Sequence[Tensor | None], chunk_size: int
) -> Tensor:
    """Apply ``fn(*row_chunks, *shared) -> [c]`` over row chunks and concatenate the results -> [N].

    When a gradient is needed, each chunk runs under non-reentrant ``checkpoint``: only its inputs (row slices
    and the shared head weights) are kept, and its ``[c, V]`` logits are rebuilt during backward, so peak
    memory is one chunk's logits in the forward and in the backward.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = rows[0].shape[0]
    grad_inputs = [x for x in (*rows, *shared) if x is not None and x.requires_grad]
    needs_grad = torch.is_grad_enabled() and bool(grad_inputs)
    if n == 0:
        # no completion tokens: a 0-sized result still wired to the inputs, so backward and DDP see all params
        dtype = _upcast(rows[0]).dtype
        if not needs_grad:
            return rows[0].new_zeros(0, dtype=dtype)
        anchor = sum((x.sum() for x in grad_inputs), torch.zeros((), dtype=dtype, device=rows[0].device))
        return (anchor * 0.0).reshape(1).expand(0)
    out = []
    # Recomputing each chunk's logits in backward (checkpoint) is what keeps [B, T, V] from ever being held;
    # with a single chunk there is nothing to save, and the recompute would only cost time.
    recompute = needs_grad and n > chunk_size
    for start in range(0, n, chunk_size):
        chunk = [x[start : start + chunk_size] for x in rows]
        if recompute:
            out.append(checkpoint(fn, *chunk, *shared, use_reentrant=False, preserve_rng_state=False))
        else:
            out.append(fn(*chunk, *shared))
    return torch.cat(out)


def chunked_divergence(
    divergence: Divergence,
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor,
    *,
    vocab_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    beta: float = 0.5,
    k: int | None = None,
    topk_mode: TopkMode = "tail",
) -> Tensor:
    """Per-token divergence between student and teacher heads, never materialising ``[B, T, V]`` -> [B, T].

    ``student_hidden [B, T, H_s]`` and ``teacher_hidden [B, T, H_t]`` are the final hidden states at the
    positions that predict each completion token; ``*_weight [V_*, H_*]`` the lm_head weights (``*_bias``
    optional). ``divergence``: ``"reverse_kl"`` | ``"forward_kl"`` | ``"jsd"`` (``beta``, as
    :func:`generalized_jsd`) | ``"topk_reverse_kl"`` (``k``, ``topk_mode``, as :func:`topk_reverse_kl`). Only
    the ``mask``-ed rows are computed, ``chunk_size`` of them at a time; differentiable w.r.t. the student
    hidden states, weight and bias; the teacher side runs without gradient. Equal to the plain function on
    ``hidden @ weight.T`` logits.
    """
    row_fn = _row_fn(divergence, beta=beta, k=k, topk_mode=topk_mode)
    _check_student_teacher(student_hidden, teacher_hidden, "hidden states", "hidden", "H")
    heads = (("student", student_hidden, student_weight), ("teacher", teacher_hidden, teacher_weight))
    for name, h, w in heads:
        if w.dim() != 2 or w.shape[1] != h.shape[-1]:
            raise ValueError(f"{name}_weight must be [V, {h.shape[-1]}], got {tuple(w.shape)}")
    v = _shared_vocab(student_weight.shape[0], teacher_weight.shape[0], vocab_size, "lm_head")
    if k is not None and divergence == "topk_reverse_kl" and k > v:
        raise ValueError(f"k={k} exceeds the vocabulary size {v}")
    m = _bool_mask(mask, student_hidden.shape[:2])
    s_w, t_w = student_weight[:v], teacher_weight.detach()[:v]
    s_b = None if student_bias is None else student_bias[:v]
    t_b = None if teacher_bias is None else teacher_bias.detach()[:v]

    def chunk_fn(s_h: Tensor, t_h: Tensor, s_w: Tensor, s_b: Tensor | None, t_w: Tensor, t_b: Tensor | None):
        with torch.no_grad():
            t_logits = _head_logits(t_h, t_w, t_b, temperature)
        return row_fn(_head_logits(s_h, s_w, s_b, temperature), t_logits)

    rows = [student_hidden[m], teacher_hidden.detach()[m]]
    vals = _chunked_rows(chunk_fn, rows, [s_w, s_b, t_w, t_b], chunk_size)
    return _scatter_rows(vals, m)


def reverse_kl_full(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor,
    *,
    vocab_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
) -> Tensor:
    """Exact full-vocab reverse KL(pi_S || pi_T) per token, chunked over completion tokens -> [B, T].

    See :func:`chunked_divergence`; reduce with :func:`masked_mean` for a loss. Equals
    :func:`reverse_kl_full_plain` on ``hidden @ weight.T`` logits, in value and in gradient.
    """
    return chunked_divergence(
        "reverse_kl", student_hidden, student_weight, teacher_hidden, teacher_weight, mask,
        vocab_size=vocab_size, chunk_size=chunk_size, temperature=temperature,
        student_bias=student_bias, teacher_bias=teacher_bias,
    )


# ------------------------------------------------------------------------------------------------------------
# sampled-token log-probs and SFT
# ------------------------------------------------------------------------------------------------------------


def _check_ids(ids: Tensor, v: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
        raise ValueError(
            f"token ids at completion positions must be in [0, {v}), "
            f"got min {int(ids.min())}, max {int(ids.max())}"
        )


def _completion_ids(
    token_ids: Tensor, mask: Tensor, shape: torch.Size, rows: int, vocab_size: int | None, what: str
) -> tuple[Tensor, int, Tensor]:
    """(bool mask, vocabulary size, the ``token_ids`` at its positions) for a ``[B, T]`` = ``shape`` ``mask``
    and a head of ``rows`` rows (``what``: said after them in the message); ids are checked against it."""
    m = _bool_mask(mask, shape)
    _check_same_shape(token_ids=token_ids, mask=mask)
    v = rows if vocab_size is None else vocab_size
    if not 0 < v <= rows:
        raise ValueError(f"vocab_size={v} must be in [1, {rows}]{what}")
    ids = token_ids[m].long()
    _check_ids(ids, v)
    return m, v, ids


def _token_logprob_rows(logits: Tensor, ids: Tensor) -> Tensor:
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs_from_logits(
    logits: Tensor,
    token_ids: Tensor,
    mask: Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """log softmax(logits / temperature)[token_ids] at completion positions, 0 elsewhere -> [B, T]."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got {tuple(logits.shape)}")
    m, v, ids = _completion_ids(token_ids, mask, logits.shape[:2], logits.shape[-1], vocab_size, "")
    rows = _upcast(logits[..., :v][m]) / temperature
    return _scatter_rows(_token_logprob_rows(rows, ids), m)


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    token_ids: Tensor,
    mask: Tensor,
    *,
    bias: Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Log-prob of ``token_ids`` under ``softmax(hidden @ weight[:vocab_size].T / temperature)``, chunked ->
    [B, T].

    ``hidden [B, T, H]`` at the positions that predict ``token_ids [B, T]``. 0 where ``mask`` is 0 (never
    -inf). Differentiable w.r.t. ``hidden``, ``weight`` and ``bias``; ``[B, T, V]`` is never held.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}], got {tuple(weight.shape)}")
    m, v, ids = _completion_ids(
        token_ids, mask, hidden.shape[:2], weight.shape[0], vocab_size, " (lm_head rows)"
    )
    w = weight[:v]
    b = None if bias is None else bias[:v]

    def chunk_fn(h: Tensor, i: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return _token_logprob_rows(_head_logits(h, w, b, temperature), i)

    return _scatter_rows(_chunked_rows(chunk_fn, [hidden[m], ids], [w, b], chunk_size), m)


def sampler_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    banned: Tensor | None = None,
    banned_first: bool = False,
) -> Tensor:
    """The logits a sampler draws from, rows ``[N, V]``: temperature, then top-p (nucleus), with the ``banned``
    ids (bool ``[V]``) set to -inf before the warpers (what vLLM's ``allowed_token_ids`` and a custom
    transformers logits processor do) or after them.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (transformers' and
    vLLM's rule: drop a token while the ascending cumulative mass is <= 1 - top_p; the most likely always
    stays). The set is chosen without gradient; the kept logits stay differentiable.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    x = _upcast(logits)
    if banned is not None and banned_first:
        x = x.masked_fill(banned, float("-inf"))
    if temperature != 1.0:
        x = x / temperature
    if top_p < 1.0:
        with torch.no_grad():
            sorted_x, order = torch.sort(x, dim=-1, descending=False)
            drop_sorted = sorted_x.softmax(-1).cumsum(-1) <= 1 - top_p
            drop_sorted[..., -1] = False
            drop = drop_sorted.scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    if banned is not None and not banned_first:
        x = x.masked_fill(banned, float("-inf"))
    return x


def sampler_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    token_ids: Tensor,
    mask: Tensor,
    *,
    bias: Tensor | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    banned_ids: Sequence[int] = (),
    banned_first: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Log-prob of ``token_ids`` under the *sampler's* distribution (see :func:`sampler_logits`), chunked -> [B, T].

    This is the distribution a rollout engine reports as its sampling log-prob, so the importance ratio
    ``exp(this - sampler_logprob)`` is 1 for on-policy samples whatever the temperature, top-p or banned ids.
    A token outside the current nucleus (off-policy) gets a floor of -1e4 (ratio 0), never -inf. 0 where
    ``mask`` is 0.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {tuple(hidden.shape)}")
    m, v, ids = _completion_ids(
        token_ids, mask, hidden.shape[:2], weight.shape[0], vocab_size, " (lm_head rows)"
    )
    # Rows past the shared vocabulary (padded head rows) are banned too. A sampler that bans first never
    # sees them; one that bans last (transformers) warps over them first, so they stay in for top-p.
    rows = v if banned_first else weight.shape[0]
    w = weight[:rows]
    b = None if bias is None else bias[:rows]
    banned = torch.zeros(rows, dtype=torch.bool, device=hidden.device)
    banned[v:] = True
    kept = [int(i) for i in banned_ids if 0 <= int(i) < v]
    if kept:
        banned[kept] = True
    any_banned = bool(banned.any())

    def chunk_fn(h: Tensor, i: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        x = sampler_logits(_head_logits(h, w, b, 1.0), temperature=temperature, top_p=top_p,
                           banned=banned if any_banned else None, banned_first=banned_first)
        return _token_logprob_rows(x, i).clamp_min(-1e4)

    return _scatter_rows(_chunked_rows(chunk_fn, [hidden[m], ids], [w, b], chunk_size), m)


def sft_loss(
    logits_or_hidden: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    normalize: Normalize = "sequence",
    num_tokens: int | float | Tensor | None = None,
    num_sequences: int | float | Tensor | None = None,
) -> Tensor:
    """Token-level cross-entropy of ``labels`` (SFT on reference answers; offline KD = SFT on teacher
    answers).

    With ``weight`` (the lm_head ``[V, H]``), ``logits_or_hidden`` is the hidden states ``[B, T, H]`` and the
    log-probs are computed chunked (:func:`token_logprobs`); without it, it is logits ``[B, T, V]``. Position
    ``t`` predicts ``labels[:, t]`` (shift first). Default ``normalize="sequence"``, as every loss here and
    the trainer's ``loss.normalize``: the token mean within each sequence, then the mean over sequences, so a
    baseline and X-OPD weigh each sequence alike whatever its length (pass the global ``num_sequences`` under
    accumulation/DDP); ``"token"``: the global token mean of the usual SFT recipes (``num_tokens``).
    """
    if weight is None:
        lp = token_logprobs_from_logits(logits_or_hidden, labels, mask, vocab_size=vocab_size)
    else:
        lp = token_logprobs(
            logits_or_hidden, weight, labels, mask, bias=bias, vocab_size=vocab_size, chunk_size=chunk_size
        )
    return -masked_mean(lp, mask, normalize=normalize, num_tokens=num_tokens, num_sequences=num_sequences)


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "chunked_divergence",
    "forward_kl",
    "generalized_jsd",
    "masked_mean",
    "power_opd_reward",
    "reverse_kl_full",
    "reverse_kl_full_plain",
    "sft_loss",
    "token_logprobs",
    "token_logprobs_from_logits",
    "topk_reverse_kl",
    "xopd_advantage",
    "xopd_loss",
    "xopd_policy_loss",
]
