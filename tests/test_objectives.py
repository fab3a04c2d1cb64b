"""The objectives table (xopd.objectives), named metrics (xopd.metrics.Tally), source merging
(xopd.batches).

Every objective's loss is checked on one synthetic micro-batch (random hidden states and heads, seeded)
against the loss math of xopd.losses composed by hand, and pinned to its value, so a change in either shows.
Adding a baseline: one function in xopd/objectives.py, one OBJECTIVES entry, one case here.
"""

from __future__ import annotations

import typing
from types import SimpleNamespace

import pytest
import torch

from xopd import losses
from xopd.batches import GOLD, STUDENT, TEACHER, merge_sources
from xopd.config import LossConfig, RunConfig
from xopd.metrics import Tally
from xopd.objectives import OBJECTIVES, REWARDS, LossInputs, gkd_on_policy
from xopd.rollout import Rollouts

B, T, H, V = 3, 5, 8, 16


def _inputs(lc: LossConfig, *, sampled: bool = True, seed: int = 0) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    s_h = torch.randn(B, T, H, generator=g, dtype=torch.float64).requires_grad_()
    t_h = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    s_w = torch.randn(V, H, generator=g, dtype=torch.float64)
    t_w = torch.randn(V, H, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    t_lp = losses.token_logprobs(t_h, t_w, ids, mask)
    old = (losses.token_logprobs(s_h.detach(), s_w, ids, mask) + 0.1 * torch.randn(B, T, generator=g)) * mask
    return LossInputs(
        lc=lc, part=SimpleNamespace(sampled_by_student=sampled), old_logprobs=old, ids=ids, mask=mask,
        teacher_lp=t_lp, teacher_hidden=t_h, teacher_head=(t_w, None), student_hidden=s_h,
        student_head=(s_w, None),
        norm={"num_sequences": 4} if lc.normalize == "sequence" else {"num_tokens": 12},
        student_lp=lambda h: losses.token_logprobs(h, s_w, ids, mask),
        ratio_lp=lambda h: losses.sampler_token_logprobs(h, s_w, ids, mask, temperature=1.0, top_p=1.0),
        vocab_size=V, chunk_size=4,
    )  # fmt: skip


def test_the_table_covers_every_kind_and_reward_the_config_accepts():
    kinds = typing.get_args(typing.get_type_hints(LossConfig)["kind"])
    rewards = typing.get_args(typing.get_type_hints(LossConfig)["reward"])
    assert set(OBJECTIVES) == set(kinds) and set(REWARDS) == set(rewards)
    assert all(o.name == k for k, o in OBJECTIVES.items())


def test_each_objective_declares_its_sequences():
    cfg = RunConfig()
    assert {k: o.sources(cfg) for k, o in OBJECTIVES.items() if k != "gkd"} == {
        "xopd": {STUDENT}, "sft": {GOLD}, "offline_kd": {TEACHER}
    }
    assert [OBJECTIVES["xopd"].source(cfg, 1, i) for i in range(3)] == [STUDENT] * 3
    gkd = OBJECTIVES["gkd"]
    for fraction, expected in ((0.0, {GOLD}), (1.0, {STUDENT}), (0.5, {STUDENT, GOLD})):
        cfg.loss.gkd_student_fraction = fraction
        assert gkd.sources(cfg) == expected
        drawn = {gkd.source(cfg, s, i) for s in range(1, 20) for i in range(4)}
        assert drawn == expected
        assert all((gkd.source(cfg, 3, i) == STUDENT) == gkd_on_policy(cfg, 3, i) for i in range(8))
    cfg.rollout.n = 3
    assert gkd.gold_copies(cfg) == 3 and OBJECTIVES["sft"].gold_copies(cfg) == 1


# the pinned values were computed once with float64 on the synthetic batch above
PINNED = {
    "xopd": 0.1077020520723182,
    "xopd-power-clip": 0.04126650353165459,
    "xopd-own-samples-off": 0.16276707950255886,
    "sft": 3.3150124803106387,
    "offline_kd": 3.3150124803106387,
    "gkd-jsd": 3.034874721314532,
    "gkd-forward-token": 3.320612156814963,
}


@pytest.mark.parametrize("case", list(PINNED))
def test_objective_losses_are_the_loss_math_composed_and_pinned(case):
    lc = LossConfig()
    sampled = case != "xopd-own-samples-off"
    kind = case.split("-")[0]
    lc.kind = kind
    if case == "xopd-power-clip":
        lc.reward, lc.clip_eps, lc.power_alpha = "power", 0.2, 2.0
    if case == "gkd-forward-token":
        lc.divergence, lc.normalize = "forward_kl", "token"
    x = _inputs(lc, sampled=sampled)
    out = OBJECTIVES[kind].loss(x)
    s_lp = x.student_lp(x.student_hidden)
    if kind == "xopd":
        adv = REWARDS[lc.reward](x.teacher_lp, s_lp, x.mask, lc)
        ratio_lp, old = (x.ratio_lp(x.student_hidden), x.old_logprobs) if sampled else (s_lp, None)
        want, _ = losses.xopd_policy_loss(ratio_lp, old, adv, x.mask, clip_eps=lc.clip_eps, **x.norm)
        ratio = {"ratio_sum", "ratio_clipped", "ratio_tokens", "ratio_min", "ratio_max"}
        assert set(out.metrics.values) == (ratio if sampled else set())
        if sampled:
            assert out.metrics.values["ratio_tokens"] == 9 and out.metrics.ops["ratio_min"] == "min"
    elif kind == "gkd":
        div = losses.chunked_divergence(lc.divergence, x.student_hidden, x.student_head[0], x.teacher_hidden,
                                        x.teacher_head[0], x.mask, beta=lc.beta, chunk_size=4)  # fmt: skip
        want = losses.masked_mean(div, x.mask, normalize=lc.normalize, **x.norm)
    else:
        want = losses.sft_loss(x.student_hidden, x.ids, x.mask, weight=x.student_head[0], **x.norm)
    torch.testing.assert_close(out.loss, want, rtol=0, atol=1e-12)
    if lc.reward == "logratio":  # the logged advantage: lp_T - lp_S
        torch.testing.assert_close(out.advantage, losses.xopd_advantage(x.teacher_lp, s_lp, x.mask))
    value = float(out.loss.detach())
    print(f"{case}: {value!r}")
    assert value == pytest.approx(PINNED[case], rel=1e-9)
    out.loss.backward()  # the gradient reaches the student's hidden states
    assert x.student_hidden.grad is not None and x.student_hidden.grad.abs().sum() > 0


class _TwoProcesses:
    """A fake ``Dist`` of two processes: the other one holds ``other``; the calls are recorded."""

    def __init__(self, other: dict[str, float]) -> None:
        self.other, self.calls = other, []

    def sum(self, values):
        self.calls.append(("sum", list(values)))
        keys = sorted(k for k in self.other if not k.startswith(("lo", "hi")))  # the sums' names, sorted
        return [v + self.other[k] for k, v in zip(keys, values, strict=True)]

    def gather(self, obj):
        self.calls.append(("gather", dict(obj)))
        return [obj, {k: self.other[k] for k in obj}]


def test_tally_reduces_by_name_in_one_sum_and_one_gather():
    t = Tally()
    t.add("b", 1.0)
    t.add("a", 2.0)
    t.add("b", 0.5)
    t.add("lo", 3.0, "min")
    t.add("lo", 1.0, "min")
    t.add("hi", -1.0, "max")
    other = Tally()
    other.add("x", 4.0)
    other.add("lo", 0.25, "min")
    t.merge(other, suffix="_speech")
    assert t.values == {"b": 1.5, "a": 2.0, "lo": 1.0, "hi": -1.0, "x_speech": 4.0, "lo_speech": 0.25}
    dist = _TwoProcesses({"a": 10.0, "b": 20.0, "x_speech": 30.0, "lo": -5.0, "hi": 7.0, "lo_speech": 9.0})
    out = t.reduce(dist)
    assert [c[0] for c in dist.calls] == ["sum", "gather"]  # one all-reduce, one gather, whatever the names
    assert dist.calls[0][1] == [2.0, 1.5, 4.0]  # a, b, x_speech: sorted names, not insertion order
    assert out == {"a": 12.0, "b": 21.5, "x_speech": 34.0, "hi": 7.0, "lo": -5.0, "lo_speech": 0.25}
    with pytest.raises(ValueError, match="reduced by min"):
        t.add("lo", 1.0)
    plain = Tally()
    plain.add("n", 3)
    dist = _TwoProcesses({"n": 4.0})
    assert plain.reduce(dist) == {"n": 7.0}
    assert [c[0] for c in dist.calls] == ["sum"]  # no minima or maxima: no gather


def test_merge_sources_is_prompt_major_and_flags_the_student_rows():
    def rows_of(source: str, ks: list[int]) -> Rollouts:
        copies = 2
        index = torch.tensor([i for i in range(len(ks)) for _ in range(copies)])
        width = 3 if source == STUDENT else 2
        ids = torch.tensor([[100 * ks[i] + (1 if source == STUDENT else 2)] * width for i in index.tolist()])
        return Rollouts(index, ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(ids.shape))

    seqs, flags = merge_sources([GOLD, STUDENT, GOLD, STUDENT], rows_of)
    assert seqs.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert seqs.ids[:, 0].tolist() == [2, 2, 101, 101, 202, 202, 301, 301]
    assert flags == [False, False, True, True, False, False, True, True]
    assert seqs.mask.sum(-1).tolist() == [2, 2, 3, 3, 2, 2, 3, 3]  # gold rows padded to the longest
    one, flags = merge_sources([STUDENT] * 2, rows_of)  # one source: its rows as they come
    assert one.ids.shape == (4, 3) and flags == [True] * 4
