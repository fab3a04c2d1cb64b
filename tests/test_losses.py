"""Tests for xopd.losses: hand-computed values, chunked == plain, the X-OPD gradient identity, NaN safety."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from xopd import losses as L

D = torch.float64
CHUNK_SIZES = [1, 2, 3, 4, 7, 1000]  # 1000 > N; 3, 4, 7 do not divide the 11 real tokens used below


def _logits(*probs: list[float]) -> torch.Tensor:
    """[1, len(probs), V] logits whose softmax is exactly the given rows."""
    return torch.tensor([[math.log(p) for p in row] for row in probs], dtype=D).unsqueeze(0)


ONE = torch.ones(1, 1, dtype=torch.bool)


# ------------------------------------------------------------------------------------------------------------
# hand-computed values
# ------------------------------------------------------------------------------------------------------------

# student S = [0.5, 0.5], teacher T = [0.25, 0.75]
S2, T2 = _logits([0.5, 0.5]), _logits([0.25, 0.75])


def test_reverse_kl_hand_value():
    # KL(S||T) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 ln(4/3)
    got = L.reverse_kl_full_plain(S2, T2, ONE)
    assert got.item() == pytest.approx(0.14384103622589042, abs=1e-12)


def test_forward_kl_hand_value():
    # KL(T||S) = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5)
    got = L.forward_kl(S2, T2, ONE)
    assert got.item() == pytest.approx(0.13081203594113697, abs=1e-12)


def test_generalized_jsd_hand_values():
    # beta = 0.5: M = [0.375, 0.625]; KL(T||M) = 0.25 ln(2/3) + 0.75 ln(1.2) = 0.0353749;
    # KL(S||M) = 0.5 ln(4/3) + 0.5 ln(0.8) = 0.0322693; JSD = 0.5 * (0.0353749 + 0.0322693)
    assert L.generalized_jsd(S2, T2, ONE, beta=0.5).item() == pytest.approx(0.033822075568605205, abs=1e-12)
    # beta = 0.25: M = 0.25 T + 0.75 S = [0.4375, 0.5625]; JSD = 0.25 KL(T||M) + 0.75 KL(S||M)
    assert L.generalized_jsd(S2, T2, ONE, beta=0.25).item() == pytest.approx(0.024870035701797136, abs=1e-12)


# student S = [0.4, 0.3, 0.2, 0.1], teacher T = [0.1, 0.2, 0.3, 0.4], student top-2 = tokens {0, 1}
S4, T4 = _logits([0.4, 0.3, 0.2, 0.1]), _logits([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("none", 0.6761572768804055),  # 0.4 ln(0.4/0.1) + 0.3 ln(0.3/0.2)
        ("renormalize", 0.1186411065848044),  # S_K = [4/7, 3/7], T_K = [1/3, 2/3]: sum S_K ln(S_K/T_K)
        ("tail", 0.42196791876424444),  # the "none" terms + 0.3 ln(0.3/0.7)   (tail masses 0.3 vs 0.7)
    ],
)
def test_topk_reverse_kl_hand_values(mode, expected):
    got = L.topk_reverse_kl(S4, T4, ONE, k=2, mode=mode)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_topk_tail_bounded_by_full_and_all_modes_exact_at_k_equals_v():
    full = L.reverse_kl_full_plain(S4, T4, ONE).item()
    assert full == pytest.approx(0.4564348191467835, abs=1e-12)  # sum_v S ln(S/T)
    assert L.topk_reverse_kl(S4, T4, ONE, k=2, mode="tail").item() <= full
    for mode in ("none", "renormalize", "tail"):
        assert L.topk_reverse_kl(S4, T4, ONE, k=4, mode=mode).item() == pytest.approx(full, abs=1e-12)


def test_sft_loss_hand_value():
    # -ln softmax([ln .25, ln .75])[1] = -ln 0.75; the masked second position must not count
    logits = _logits([0.25, 0.75], [0.9, 0.1])
    labels = torch.tensor([[1, 0]])
    mask = torch.tensor([[1, 0]])
    assert L.sft_loss(logits, labels, mask).item() == pytest.approx(0.2876820724517809, abs=1e-12)


# X-OPD policy loss on B = 2 rollouts of lengths 3 and 2
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
ADV = torch.tensor([[0.2, -0.4, 0.5], [-0.3, -0.1, 99.0]], dtype=D)  # 99 sits at a padded position


def test_xopd_policy_loss_on_policy_hand_values():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.8], [0.4, 0.5, 0.3]], dtype=D)).requires_grad_()
    loss, stats = L.xopd_policy_loss(lp, None, ADV, MASK)
    # rollout means: (0.2 - 0.4 + 0.5)/3 = 0.1 and (-0.3 - 0.1)/2 = -0.2 -> L = -0.05 -> loss = 0.05
    assert loss.item() == pytest.approx(0.05, abs=1e-12)
    loss.backward()
    # d loss / d lp_t = -(1/B)(1/|y|) A_t
    expected = torch.tensor([[-0.2 / 6, 0.4 / 6, -0.5 / 6], [0.3 / 4, 0.1 / 4, 0.0]], dtype=D)
    torch.testing.assert_close(lp.grad, expected, rtol=0, atol=1e-12)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["clip_frac"].item() == 0.0
    assert stats["advantage_mean"].item() == pytest.approx(-0.1 / 5)  # (0.3 - 0.4) / 5 tokens
    assert stats["tokens"].item() == 5
    # global token mean: (0.3 - 0.4) / 5 = -0.02 -> loss 0.02
    loss_tok, _ = L.xopd_policy_loss(lp, None, ADV, MASK, normalize="token")
    assert loss_tok.item() == pytest.approx(0.02, abs=1e-12)


def test_xopd_policy_loss_clipped_hand_values():
    lp = torch.zeros(2, 3, dtype=D, requires_grad=True)
    ratios = torch.tensor([[1.5, 0.5, 1.0], [1.1, 0.7, 1.0]], dtype=D)
    old = lp.detach() - ratios.log()  # exp(lp - old) = ratios
    loss, stats = L.xopd_policy_loss(lp, old, ADV, MASK, clip_eps=0.2)
    # row 0: min(1.5*.2, 1.2*.2) = .24 (clipped); min(.5*-.4, .8*-.4) = -.32 (clipped); .5  -> mean .14
    # row 1: 1.1*-.3 = -.33 (inside the band); min(.7*-.1, .8*-.1) = -.08 (clipped)      -> mean -.205
    # L = (.14 - .205)/2 = -.0325
    assert loss.item() == pytest.approx(0.0325, abs=1e-12)
    assert stats["clip_frac"].item() == pytest.approx(3 / 5)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.0 + 1.1 + 0.7) / 5)
    loss.backward()
    # clipped tokens get no gradient; others d/dlp (rho A) = rho A, times -(1/B)(1/|y|)
    expected = torch.tensor([[0.0, 0.0, -0.5 / 6], [1.1 * 0.3 / 4, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(lp.grad, expected, rtol=0, atol=1e-12)


def test_xopd_advantage_and_combined_loss():
    lp_t = torch.log(torch.tensor([[0.5, 0.1]], dtype=D))
    lp_s = torch.log(torch.tensor([[0.25, 0.2]], dtype=D))
    a = L.xopd_advantage(lp_t, lp_s, torch.tensor([[1, 0]]))
    torch.testing.assert_close(a, torch.tensor([[math.log(2.0), 0.0]], dtype=D))
    im, cm = torch.tensor(2.0), torch.tensor(4.0)
    assert L.xopd_loss(im, cm).item() == pytest.approx(3.0)  # 0.5*2 + 0.5*4
    assert L.xopd_loss(im, cm, lam=0.25).item() == pytest.approx(3.5)  # 0.25*2 + 0.75*4
    assert L.xopd_loss(None, cm, lam=0.0).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="in_modal_loss is None"):
        L.xopd_loss(None, cm, lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        L.xopd_loss(im, cm, lam=1.5)


def test_power_opd_reward_hand_values_bounds_and_limit():
    lp_t = torch.log(torch.tensor([[0.5, 0.2, 0.3]], dtype=D))
    lp_s = torch.log(torch.tensor([[0.25, 0.4, 0.3]], dtype=D))
    mask = torch.tensor([[1, 1, 0]])
    r = L.power_opd_reward(lp_t, lp_s, mask, alpha=2.0)
    # 0.5^2 - 0.25^2 = 0.1875; 0.2^2 - 0.4^2 = -0.12; masked -> 0
    torch.testing.assert_close(r, torch.tensor([[0.1875, -0.12, 0.0]], dtype=D))
    r_bc = L.power_opd_reward(lp_t, lp_s, mask, alpha=2.0, box_cox=True)
    torch.testing.assert_close(r_bc, torch.tensor([[0.09375, -0.06, 0.0]], dtype=D))
    # Box-Cox scaling -> the log-ratio as alpha -> 0
    r0 = L.power_opd_reward(lp_t, lp_s, mask, alpha=1e-7, box_cox=True)
    torch.testing.assert_close(r0, L.xopd_advantage(lp_t, lp_s, mask), rtol=0, atol=1e-6)
    # bounded in [-1, 1] and sign-consistent with the log-ratio, even for log-ratios near -50
    g = torch.Generator().manual_seed(0)
    a, b = -50 * torch.rand(4, 64, generator=g, dtype=D), -50 * torch.rand(4, 64, generator=g, dtype=D)
    full = torch.ones(4, 64, dtype=torch.bool)
    r = L.power_opd_reward(a, b, full, alpha=0.5)
    assert r.abs().max() <= 1.0
    nz = r != 0
    assert torch.equal(torch.sign(r[nz]), torch.sign((a - b)[nz]))
    assert not r.requires_grad


# ------------------------------------------------------------------------------------------------------------
# chunked == plain (values and gradients)
# ------------------------------------------------------------------------------------------------------------

B, T, HS, HT, V = 3, 5, 6, 4, 13
# 11 real tokens
MASK_CH = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)


def _heads(seed: int = 0, v_student: int = V, v_teacher: int = V):
    g = torch.Generator().manual_seed(seed)
    sh = torch.randn(B, T, HS, generator=g, dtype=D)
    sw = torch.randn(v_student, HS, generator=g, dtype=D)
    sb = torch.randn(v_student, generator=g, dtype=D)
    th = torch.randn(B, T, HT, generator=g, dtype=D)
    tw = torch.randn(v_teacher, HT, generator=g, dtype=D)
    return sh, sw, sb, th, tw


def _grads(loss: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


DIVERGENCES = [
    ("reverse_kl", {}, lambda s, t, m: L.reverse_kl_full_plain(s, t, m)),
    ("forward_kl", {}, lambda s, t, m: L.forward_kl(s, t, m)),
    ("jsd", {"beta": 0.3}, lambda s, t, m: L.generalized_jsd(s, t, m, beta=0.3)),
    ("jsd", {"beta": 0.0}, lambda s, t, m: L.generalized_jsd(s, t, m, beta=0.0)),
    ("topk_reverse_kl", {"k": 4, "topk_mode": "tail"}, lambda s, t, m: L.topk_reverse_kl(s, t, m, 4)),
    (
        "topk_reverse_kl",
        {"k": 4, "topk_mode": "renormalize"},
        lambda s, t, m: L.topk_reverse_kl(s, t, m, 4, mode="renormalize"),
    ),
    (
        "topk_reverse_kl",
        {"k": 4, "topk_mode": "none"},
        lambda s, t, m: L.topk_reverse_kl(s, t, m, 4, mode="none"),
    ),
]


DIV_IDS = [f"{d}-{'-'.join(map(str, kw.values()))}" for d, kw, _ in DIVERGENCES]


@pytest.mark.parametrize("divergence, kwargs, plain", DIVERGENCES, ids=DIV_IDS)
def test_chunked_divergence_equals_plain(divergence, kwargs, plain):
    sh, sw, sb, th, tw = (x.requires_grad_() for x in _heads())
    ref = plain(sh @ sw.T + sb, th @ tw.T, MASK_CH)
    ref_loss = L.masked_mean(ref, MASK_CH)
    ref_grads = _grads(ref_loss, sh, sw, sb)
    for cs in CHUNK_SIZES:
        got = L.chunked_divergence(
            divergence, sh, sw, th, tw, MASK_CH, student_bias=sb, chunk_size=cs, **kwargs
        )
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
        got_grads = _grads(L.masked_mean(got, MASK_CH), sh, sw, sb)
        for a, b in zip(got_grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert (ref[~MASK_CH] == 0).all() and (ref[MASK_CH] != 0).all()


def test_reverse_kl_full_wrapper_and_temperature():
    sh, sw, sb, th, tw = _heads(1)
    got = L.reverse_kl_full(sh, sw, th, tw, MASK_CH, student_bias=sb, chunk_size=3, temperature=2.0)
    ref = L.reverse_kl_full_plain((sh @ sw.T + sb) / 2.0, (th @ tw.T) / 2.0, MASK_CH)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    ref_t = L.reverse_kl_full_plain(sh @ sw.T + sb, th @ tw.T, MASK_CH, temperature=2.0)
    torch.testing.assert_close(ref_t, ref, rtol=0, atol=1e-12)


def test_chunked_token_logprobs_and_sft_equal_plain():
    sh, sw, sb, _, _ = (x.requires_grad_() for x in _heads(2))
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    ids[~MASK_CH] = -100  # pad ids at masked positions must be ignored, not indexed
    logits = sh @ sw.T + sb
    ref = L.token_logprobs_from_logits(logits, ids, MASK_CH)
    manual = logits.log_softmax(-1).gather(-1, ids.clamp_min(0).unsqueeze(-1)).squeeze(-1) * MASK_CH
    torch.testing.assert_close(ref, manual, rtol=0, atol=1e-12)
    ref_grads = _grads(L.sft_loss(logits, ids, MASK_CH), sh, sw, sb)
    for cs in CHUNK_SIZES:
        got = L.token_logprobs(sh, sw, ids, MASK_CH, bias=sb, chunk_size=cs)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
        loss = L.sft_loss(sh, ids, MASK_CH, weight=sw, bias=sb, chunk_size=cs)
        for a, b in zip(_grads(loss, sh, sw, sb), ref_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_no_completion_tokens_gives_zero_loss_with_a_graph():
    sh, sw, sb, th, tw = (x.requires_grad_() for x in _heads(3))
    empty = torch.zeros(B, T, dtype=torch.bool)
    kl = L.reverse_kl_full(sh, sw, th, tw, empty, student_bias=sb)
    loss = L.masked_mean(kl, empty)
    assert loss.item() == 0.0
    loss.backward()  # must not raise; every student parameter gets a (zero) gradient, as DDP needs
    assert sw.grad is not None and (sw.grad == 0).all() and (sh.grad == 0).all()
    assert tw.grad is None and th.grad is None


# ------------------------------------------------------------------------------------------------------------
# the identity the method rests on, and the zero point
# ------------------------------------------------------------------------------------------------------------


def test_xopd_gradient_equals_per_token_reverse_kl_gradient_on_enumerated_toy_policy():
    """E_{y~pi}[grad of the X-OPD loss at rho = 1] == grad of sum_t E_{y<t}[KL(pi(.|y<t) || pi_T(.|y<t))] / T.

    Toy autoregressive policy: logits table [T, V+1 (previous token or BOS), V]. All V^T sequences are
    enumerated and weighted by their (detached) probability, so both sides are exact expectations.
    """
    v, t_len = 3, 3
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(t_len, v + 1, v, generator=g, dtype=D, requires_grad=True)
    theta_t = torch.randn(t_len, v + 1, v, generator=g, dtype=D)
    seqs = torch.tensor(list(itertools.product(range(v), repeat=t_len)))  # [27, 3]
    prev = torch.cat([torch.full((len(seqs), 1), v), seqs[:, :-1]], dim=1)  # BOS index = v
    pos = torch.arange(t_len).expand_as(seqs)
    s_logits, t_logits = theta[pos, prev], theta_t[pos, prev]  # [27, 3, V]
    lp_s = s_logits.log_softmax(-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
    lp_t = t_logits.log_softmax(-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones_like(seqs, dtype=torch.bool)
    w = lp_s.sum(-1).exp().detach()  # p(y)
    assert w.sum().item() == pytest.approx(1.0)

    adv = L.xopd_advantage(lp_t, lp_s, mask)
    # the loss is linear in A, so folding B * p(y) into A turns the rollout mean into the exact expectation
    loss, _ = L.xopd_policy_loss(lp_s, None, adv * (len(seqs) * w).unsqueeze(1), mask)
    (g_xopd,) = torch.autograd.grad(loss, theta, retain_graph=True)

    kl = L.reverse_kl_full_plain(s_logits, t_logits, mask)  # [27, 3], exact KL at each prefix
    exact = (w.unsqueeze(1) * kl).sum() / t_len
    (g_exact,) = torch.autograd.grad(exact, theta)
    torch.testing.assert_close(g_xopd, g_exact, rtol=1e-10, atol=1e-12)
    # and the loss value is minus the expected advantage = the same expected reverse KL
    assert loss.item() == pytest.approx(exact.item(), abs=1e-12)


def test_student_equals_teacher_gives_zero_advantage_loss_and_gradient():
    sh, sw, sb, _, _ = _heads(4)
    sh, sw = sh.requires_grad_(), sw.requires_grad_()
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(4))
    lp_s = L.token_logprobs(sh, sw, ids, MASK_CH, chunk_size=4)
    lp_t = L.token_logprobs(sh.detach(), sw.detach(), ids, MASK_CH, chunk_size=4)
    adv = L.xopd_advantage(lp_t, lp_s, MASK_CH)
    assert (adv == 0).all()
    # another chunking changes only the BLAS rounding
    lp_t_other = L.token_logprobs(sh.detach(), sw.detach(), ids, MASK_CH, chunk_size=1000)
    assert L.xopd_advantage(lp_t_other, lp_s, MASK_CH).abs().max().item() < 1e-12
    loss, _ = L.xopd_policy_loss(lp_s, lp_s.detach(), adv, MASK_CH, clip_eps=0.2)
    assert loss.item() == 0.0
    assert all((g == 0).all() for g in _grads(loss, sh, sw))
    kl = L.reverse_kl_full(sh, sw, sh.detach(), sw.detach(), MASK_CH, chunk_size=5)
    assert kl.abs().max().item() < 1e-14
    assert all(g.abs().max().item() < 1e-14 for g in _grads(L.masked_mean(kl, MASK_CH), sh, sw))


# ------------------------------------------------------------------------------------------------------------
# safety: NaN/-inf at masked positions, detached teacher/old, normalisation, vocab padding
# ------------------------------------------------------------------------------------------------------------


def test_nan_safety_with_inf_logprobs_at_masked_positions():
    inf = math.inf
    lp = torch.tensor([[-0.5, -1.0, -inf], [-0.2, -inf, -inf]], dtype=D, requires_grad=True)
    old = torch.tensor([[-0.6, -0.9, math.nan], [-0.1, -inf, math.nan]], dtype=D)
    lp_t = torch.tensor([[-0.4, -2.0, -inf], [-0.3, -inf, -inf]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = L.xopd_advantage(lp_t, lp, mask)
    assert torch.isfinite(adv).all()
    for clip in (None, 0.2):
        for norm in ("sequence", "token"):
            loss, stats = L.xopd_policy_loss(lp, old, adv, mask, clip_eps=clip, normalize=norm)
            assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
            (g,) = torch.autograd.grad(loss, lp)
            assert torch.isfinite(g).all() and (g[mask == 0] == 0).all() and (g[mask == 1] != 0).all()
    r = L.power_opd_reward(lp_t, lp, mask)
    assert torch.isfinite(r).all()
    # masked_mean ignores inf / NaN at masked positions
    assert L.masked_mean(lp, mask).item() == pytest.approx(((-0.5 - 1.0) / 2 - 0.2) / 2)


def test_nan_safety_of_divergences_with_inf_logits():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 3, 5, generator=g, dtype=D)
    t = torch.randn(2, 3, 5, generator=g, dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    s[~mask] = -math.inf  # whole padded rows of -inf: log_softmax of such a row is NaN
    t[~mask] = -math.inf
    s[..., 4] = -math.inf  # a vocabulary entry both sides exclude: 0 * (-inf - -inf) must not appear
    t[..., 4] = -math.inf
    s.requires_grad_()
    for fn in (
        L.reverse_kl_full_plain,
        L.forward_kl,
        lambda a, b, m: L.generalized_jsd(a, b, m, beta=0.5),
        lambda a, b, m: L.topk_reverse_kl(a, b, m, k=5, mode="tail"),
        lambda a, b, m: L.topk_reverse_kl(a, b, m, k=2, mode="tail"),
        lambda a, b, m: L.topk_reverse_kl(a, b, m, k=5, mode="renormalize"),
    ):
        out = fn(s, t, mask)
        assert torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(L.masked_mean(out, mask), s)
        assert torch.isfinite(grad).all()
    # k = V with "tail": the tail bucket is empty; value equals the full KL and the gradient stays finite
    full = L.reverse_kl_full_plain(s, t, mask)
    torch.testing.assert_close(L.topk_reverse_kl(s, t, mask, k=5), full, rtol=0, atol=1e-12)


def test_gradients_flow_only_into_the_student():
    lp_s = torch.log(torch.tensor([[0.5, 0.25]], dtype=D)).requires_grad_()
    lp_t = torch.log(torch.tensor([[0.6, 0.1]], dtype=D)).requires_grad_()
    old = torch.log(torch.tensor([[0.4, 0.3]], dtype=D)).requires_grad_()
    mask = torch.ones(1, 2)
    adv = L.xopd_advantage(lp_t, lp_s, mask)
    assert not adv.requires_grad
    adv_leaky = (lp_t - lp_s)  # an advantage that still carries a graph must be detached inside the loss
    loss, _ = L.xopd_policy_loss(lp_s, old, adv_leaky, mask, clip_eps=0.2)
    loss.backward()
    assert lp_s.grad is not None and lp_t.grad is None and old.grad is None
    # a leaky advantage gives the same gradient as the detached one
    lp_s2 = lp_s.detach().requires_grad_()
    L.xopd_policy_loss(lp_s2, old, adv, mask, clip_eps=0.2)[0].backward()
    torch.testing.assert_close(lp_s.grad, lp_s2.grad)

    sh, sw, sb, th, tw = (x.requires_grad_() for x in _heads(6))
    for fn in (
        lambda: L.reverse_kl_full(sh, sw, th, tw, MASK_CH, student_bias=sb, chunk_size=4),
        lambda: L.reverse_kl_full_plain(sh @ sw.T + sb, th @ tw.T, MASK_CH),
    ):
        L.masked_mean(fn(), MASK_CH).backward()
        assert sh.grad is not None and sw.grad is not None and sb.grad is not None
        assert th.grad is None and tw.grad is None


@pytest.mark.parametrize("normalize", ["token", "sequence"])
def test_global_normalisation_makes_half_batches_sum_to_the_full_batch(normalize):
    g = torch.Generator().manual_seed(7)
    lp = (-torch.rand(4, 6, generator=g, dtype=D)).requires_grad_()
    adv = torch.randn(4, 6, generator=g, dtype=D)
    old = lp.detach() + 0.3 * torch.randn(4, 6, generator=g, dtype=D)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] + [0] * 5], dtype=torch.bool)
    key = "num_tokens" if normalize == "token" else "num_sequences"
    count = int(mask.sum()) if normalize == "token" else 4
    full, _ = L.xopd_policy_loss(lp, old, adv, mask, clip_eps=0.2, normalize=normalize)
    (g_full,) = torch.autograd.grad(full, lp)
    global_count = {key: count}
    halves = [
        L.xopd_policy_loss(
            lp[sl], old[sl], adv[sl], mask[sl], clip_eps=0.2, normalize=normalize, **global_count
        )[0]
        for sl in (slice(0, 2), slice(2, 4))
    ]
    (g_acc,) = torch.autograd.grad(halves[0] + halves[1], lp)
    torch.testing.assert_close(g_acc, g_full, rtol=0, atol=1e-14)
    assert (halves[0] + halves[1]).item() == pytest.approx(full.item(), abs=1e-14)
    # with local counts (the TRL #4719 bug) the summed half-batch losses are not the full-batch loss
    local = [
        L.xopd_policy_loss(lp[sl], old[sl], adv[sl], mask[sl], clip_eps=0.2, normalize=normalize)[0]
        for sl in (slice(0, 2), slice(2, 4))
    ]
    assert abs((local[0] + local[1]).item() - full.item()) > 1e-3


def test_padded_vocab_rows_are_sliced():
    # the student head has 3 padded rows whose huge logits would swallow the probability mass if kept
    sh, sw, sb, th, tw = _heads(8, v_student=V + 3, v_teacher=V)
    sw[V:] = 50.0
    sb[V:] = 50.0
    sw.requires_grad_()
    with pytest.raises(ValueError, match=rf"{V + 3}.*{V}.*vocab_size"):
        L.reverse_kl_full(sh, sw, th, tw, MASK_CH)
    with pytest.raises(ValueError, match="vocab_size"):
        L.reverse_kl_full_plain(sh @ sw.T + sb, th @ tw.T, MASK_CH)
    got = L.reverse_kl_full(sh, sw, th, tw, MASK_CH, student_bias=sb, vocab_size=V, chunk_size=4)
    ref = L.reverse_kl_full_plain((sh @ sw[:V].T + sb[:V]), th @ tw.T, MASK_CH)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    plain = L.reverse_kl_full_plain(sh @ sw.T + sb, th @ tw.T, MASK_CH, vocab_size=V)
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(L.masked_mean(got, MASK_CH), sw)
    assert (grad[V:] == 0).all() and (grad[:V] != 0).any()
    # sampled-token log-probs over the shared vocabulary only
    ids = torch.zeros(B, T, dtype=torch.long)
    lp = L.token_logprobs(sh, sw, ids, MASK_CH, bias=sb, vocab_size=V)
    ref_lp = L.token_logprobs_from_logits(sh @ sw.T + sb, ids, MASK_CH, vocab_size=V)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-12)
    assert lp[MASK_CH].min().item() > -30  # with the padded rows kept it would be about -50
    with pytest.raises(ValueError, match=r"token ids .* \[0, 13\)"):
        L.token_logprobs(sh, sw, torch.full((B, T), V + 1), MASK_CH, vocab_size=V)


def test_gkd_beta_ends_are_forward_and_reverse_kl_and_the_mixture_tends_to_them():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(2, 4, 7, generator=g, dtype=D), torch.randn(2, 4, 7, generator=g, dtype=D)
    mask = torch.ones(2, 4, dtype=torch.bool)
    fkl, rkl = L.forward_kl(s, t, mask), L.reverse_kl_full_plain(s, t, mask)
    torch.testing.assert_close(L.generalized_jsd(s, t, mask, beta=0.0), fkl, rtol=0, atol=0)
    torch.testing.assert_close(L.generalized_jsd(s, t, mask, beta=1.0), rkl, rtol=0, atol=0)
    assert not torch.allclose(fkl, rkl)  # the two directions really differ on this data
    # pins the direction convention beyond the special cases: JSD/beta -> KL(T||S), JSD/(1-beta) -> KL(S||T)
    eps = 1e-6
    torch.testing.assert_close(L.generalized_jsd(s, t, mask, beta=eps) / eps, fkl, rtol=1e-4, atol=0)
    torch.testing.assert_close(L.generalized_jsd(s, t, mask, beta=1 - eps) / eps, rkl, rtol=1e-4, atol=0)


def test_bad_input_errors_name_the_argument():
    lp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        L.xopd_policy_loss(lp, None, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        L.xopd_policy_loss(lp, None, lp, torch.ones(3, 3))
    with pytest.raises(ValueError, match="num_tokens"):
        L.masked_mean(lp, torch.ones(2, 3), normalize="sequence", num_tokens=5)
    with pytest.raises(ValueError, match="normalize"):
        L.masked_mean(lp, torch.ones(2, 3), normalize="rollout")
    with pytest.raises(ValueError, match="clip_eps"):
        L.xopd_policy_loss(lp, None, lp, torch.ones(2, 3), clip_eps=0.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        L.chunked_divergence("tvd", *_heads()[0:2], *_heads()[3:5], MASK_CH)
    with pytest.raises(ValueError, match="beta"):
        L.generalized_jsd(S2, T2, ONE, beta=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        L.reverse_kl_full(*_heads()[0:2], *_heads()[3:5], MASK_CH, chunk_size=0)


# ------------------------------------------------------------------------------------------------------------
# on a real (tiny, random) transformers model: hidden states + lm_head give the model's own log-probs
# ------------------------------------------------------------------------------------------------------------


def test_chunked_functions_on_hidden_states_of_a_real_causal_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)

    def tiny(vocab: int, hidden: int) -> Qwen2ForCausalLM:
        cfg = Qwen2Config(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        return Qwen2ForCausalLM(cfg).double().eval()

    shared = 40
    student, teacher = tiny(shared + 8, 16), tiny(shared, 24)  # padded student vocab, other hidden size
    ids = torch.randint(0, shared, (2, 10))
    prompt_len = 4
    mask = torch.ones(2, 10 - prompt_len, dtype=torch.bool)
    mask[1, -2:] = False  # rollout 1 ended early
    completion = ids[:, prompt_len:]
    s_out = student(ids, output_hidden_states=True)
    t_out = teacher(ids, output_hidden_states=True)
    # position t's log-prob comes from the logits at t - 1
    s_h = s_out.hidden_states[-1][:, prompt_len - 1 : -1]
    t_h = t_out.hidden_states[-1][:, prompt_len - 1 : -1]
    s_logits = s_out.logits[:, prompt_len - 1 : -1]
    t_logits = t_out.logits[:, prompt_len - 1 : -1]
    s_w, t_w = student.lm_head.weight, teacher.lm_head.weight

    lp = L.token_logprobs(s_h, s_w, completion, mask, vocab_size=shared, chunk_size=5)
    ref = L.token_logprobs_from_logits(s_logits, completion, mask, vocab_size=shared)
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-10)
    kl = L.reverse_kl_full(s_h, s_w, t_h, t_w, mask, vocab_size=shared, chunk_size=5)
    kl_ref = L.reverse_kl_full_plain(s_logits, t_logits, mask, vocab_size=shared)
    torch.testing.assert_close(kl, kl_ref, rtol=0, atol=1e-10)
    assert (kl[mask] > 0).all()
    # the gradient reaches the student's decoder weights through the hidden states, and not the teacher's
    L.masked_mean(kl, mask).backward()
    assert student.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# --- the sampler's distribution (importance ratio on the same processed distribution) ------------------------


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.9), (1.0, 1.0), (1.0, 0.9), (0.7, 1.0), (1.3, 0.5)])
@pytest.mark.parametrize("banned_first", [False, True])
def test_sampler_logits_match_transformers_and_vllm_order(temperature, top_p, banned_first):
    """Banned ids masked before temperature -> top-p (vLLM's allowed_token_ids; transformers with a custom
    processor) or after them: both orders, against transformers' own warpers."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, 50, generator=g)
    banned = torch.zeros(50, dtype=torch.bool)
    banned[[3, 7, 11]] = True
    want = logits.clone()
    if banned_first:
        want = want.masked_fill(banned, float("-inf"))
    if temperature != 1.0:
        want = TemperatureLogitsWarper(temperature)(None, want)
    if top_p < 1.0:
        want = TopPLogitsWarper(top_p)(None, want)
    if not banned_first:
        want = want.masked_fill(banned, float("-inf"))
    got = L.sampler_logits(logits, temperature=temperature, top_p=top_p, banned=banned,
                                banned_first=banned_first)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    fin = torch.isfinite(want)
    assert torch.allclose(got.log_softmax(-1)[fin], want.log_softmax(-1)[fin], atol=1e-6)


def test_sampler_token_logprobs_chunked_equals_plain_and_has_finite_gradients():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    weight = torch.randn(40, 8, generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    kw = dict(vocab_size=32, temperature=0.7, top_p=0.9, banned_ids=[5, 6], banned_first=True)
    logits = L.sampler_logits(hidden @ weight[:32].T, temperature=0.7, top_p=0.9,
                              banned=torch.isin(torch.arange(32), torch.tensor([5, 6])), banned_first=True)
    ids = logits.argmax(-1)  # in the nucleus by construction
    plain = L.sampler_token_logprobs(hidden, weight, ids, mask, chunk_size=64, **kw)
    chunked = L.sampler_token_logprobs(hidden, weight, ids, mask, chunk_size=3, **kw)
    assert torch.allclose(plain, chunked, atol=1e-6)
    want = logits.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.allclose(plain[mask], want[mask], atol=1e-5) and (plain[~mask] == 0).all()
    chunked.sum().backward()
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()
    # a token outside the nucleus (or banned) gets the floor, not -inf
    out = L.sampler_token_logprobs(hidden.detach(), weight.detach(), torch.full_like(ids, 5), mask, **kw)
    assert (out[mask] == -1e4).all()
    # banning last, the padded rows (>= vocab_size) take part in top-p before they are removed
    last = L.sampler_token_logprobs(hidden.detach(), weight.detach(), ids, mask, **{**kw, "banned_first": False})
    assert torch.isfinite(last).all() and not torch.allclose(last, plain.detach())


def test_policy_loss_reports_ratio_range():
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    old = torch.tensor([[-1.0, -2.5, -2.0]])
    adv = torch.tensor([[0.5, -0.5, 1.0]])
    _, st = L.xopd_policy_loss(lp, old, adv, torch.tensor([[1, 1, 0]]), clip_eps=0.2)
    assert st["ratio_min"] == pytest.approx(1.0) and st["ratio_max"] == pytest.approx(math.exp(0.5))


def test_sft_loss_default_is_the_sequence_mean_as_every_baseline_uses():
    # two answers of lengths 2 and 1: nll ln 2, ln 4 | ln 4/3; the sequence mean weighs each answer alike
    logits = torch.cat([_logits([0.5, 0.5], [0.75, 0.25]), _logits([0.25, 0.75], [0.5, 0.5])])
    labels = torch.tensor([[0, 1], [1, 0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    nll = [math.log(2), math.log(4), math.log(4 / 3)]
    by_sequence = ((nll[0] + nll[1]) / 2 + nll[2]) / 2
    by_token = sum(nll) / 3
    assert L.sft_loss(logits, labels, mask).item() == pytest.approx(by_sequence, abs=1e-12)
    assert L.sft_loss(logits, labels, mask, normalize="token").item() == pytest.approx(by_token, abs=1e-12)
    assert by_sequence == pytest.approx(0.6637, abs=1e-4) and by_token == pytest.approx(0.7890, abs=1e-4)
