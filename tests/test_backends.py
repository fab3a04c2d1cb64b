"""Generation backends on real models: tiny random fixtures for the fast checks; the zoo models for vLLM.

vLLM's CPU attention has no kernel for the tiny fixtures' head_dim 16 ("Unsupported CPU attention
configuration: head_dim=16 isa=2 kv_cache_idx=0"), so hf-vs-vllm agreement runs on the zoo's assembled student
(SmolLM2's head_dim 64), on text and on espeak-ng audio, with one engine for the whole module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from evalsuite.backends import BACKENDS, make_backend
from evalsuite.backends.base import Result, isolate_failures
from evalsuite.tts import espeak_synthesize
from evalsuite.types import GenParams, Request
from xopd.loading import ModelLoadError
from requires import import_vllm

QUESTIONS = [
    "What is the capital of France?",
    "Tom has three apples and buys five more. How many apples does he have now?",
    "Is a whale a fish? Answer yes or no.",
    "Name a primary color.",
]
GREEDY = GenParams(max_new_tokens=12)


def text_request(i: int, text: str) -> Request:
    return Request(f"t{i}", [{"role": "user", "content": text}])


def audio_request(i: int, audio: np.ndarray, instruction: str = "Answer the question.") -> Request:
    content = [{"type": "audio", "audio": audio}, {"type": "text", "text": instruction}]
    return Request(f"a{i}", [{"role": "user", "content": content}])


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from xopd.zoo.fixtures import build_all

    return build_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def spoken() -> list[np.ndarray]:
    return [espeak_synthesize(q) for q in QUESTIONS[:2]]


# ------------------------------------------------------------------------------------------ fast: tiny models


def test_unknown_backend_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tgi'.*hf.*vllm"):
        make_backend("tgi", "smollm2-135m-instruct")
    assert set(BACKENDS) == {"hf", "vllm"}


def test_kinds(fixtures: dict[str, Path]) -> None:
    assert make_backend("hf", str(fixtures["teacher"])).kind == "text"
    assert make_backend("hf", str(fixtures["qwen2_audio"])).kind == "speech"
    # The Omni thinker fixture ships a tokenizer and feature extractor, no processor (that needs torchvision).
    with pytest.raises(ModelLoadError, match="no speech processor"):
        make_backend("hf", str(fixtures["qwen2_5_omni_thinker"]))
    with pytest.raises(ModelLoadError, match="no such directory"):
        make_backend("vllm", "./no/such/model")


def test_hf_batched_equals_unbatched_text(fixtures: dict[str, Path]) -> None:
    reqs = [text_request(i, q) for i, q in enumerate(QUESTIONS)]  # different lengths: real left padding
    batched = make_backend("hf", str(fixtures["teacher"]), batch_size=4).generate(reqs, GREEDY)
    single = make_backend("hf", str(fixtures["teacher"]), batch_size=1).generate(reqs, GREEDY)
    assert all(r.ok and len(r.token_ids) > 0 for r in batched)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({tuple(r.token_ids) for r in batched}) > 1  # answers depend on the prompt: order was restored


def test_hf_batched_equals_unbatched_speech(fixtures: dict[str, Path], spoken: list[np.ndarray]) -> None:
    # Audio of two lengths and a text-only request in one batch: the processor pads both text and features.
    reqs = [
        audio_request(0, spoken[0]),
        text_request(1, QUESTIONS[2]),
        audio_request(2, spoken[1], "Solve it."),
    ]
    model = str(fixtures["qwen2_audio"])
    batched = make_backend("hf", model, batch_size=3).generate(reqs, GREEDY)
    single = make_backend("hf", model, batch_size=1).generate(reqs, GREEDY)
    assert all(r.ok for r in batched), [r.error for r in batched]
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    # The one <|AUDIO|> placeholder became as many tokens as the audio has embeddings.
    from xopd.zoo.fixtures import audio_token_count, num_feature_frames

    rendered = make_backend("hf", model).render(reqs[0].messages).ids
    expected = len(rendered) - 1 + audio_token_count(num_feature_frames(len(spoken[0])))
    assert batched[0].meta["prompt_tokens"] == expected


def test_checkpoint_sampling_defaults_do_not_leak_into_greedy(
    fixtures: dict[str, Path], tmp_path: Path
) -> None:
    """transformers fills unset decoding fields from the checkpoint's generation_config; greedy must stay
    greedy (and equal to vLLM's) whatever the checkpoint ships."""
    import json

    model = tmp_path / "teacher-with-defaults"
    shutil.copytree(fixtures["teacher"], model)
    cfg = json.loads((model / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=5.0, top_k=2, repetition_penalty=3.0, no_repeat_ngram_size=1)
    (model / "generation_config.json").write_text(json.dumps(cfg))
    reqs = [text_request(i, q) for i, q in enumerate(QUESTIONS[:2])]
    want = make_backend("hf", str(fixtures["teacher"])).generate(reqs, GREEDY)
    got = make_backend("hf", str(model)).generate(reqs, GREEDY)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    # The trap is real: the tiny model repeats tokens, which no_repeat_ngram_size=1 would have forbidden.
    assert any(len(set(r.token_ids)) < len(r.token_ids) for r in want)


def test_text_model_errors_on_audio_and_answers_the_rest(fixtures: dict[str, Path], spoken) -> None:
    reqs = [text_request(0, QUESTIONS[0]), audio_request(1, spoken[0]), text_request(2, QUESTIONS[1])]
    out = make_backend("hf", str(fixtures["teacher"]), batch_size=4).generate(reqs, GREEDY)
    assert out[1].error and "text LLM" in out[1].error and out[1].token_ids == []
    assert out[0].ok and out[2].ok and out[0].token_ids and out[2].token_ids
    alone = make_backend("hf", str(fixtures["teacher"])).generate([reqs[0], reqs[2]], GREEDY)
    assert [out[0].token_ids, out[2].token_ids] == [r.token_ids for r in alone]


def test_vllm_text_model_errors_on_audio_without_starting_an_engine(
    fixtures: dict[str, Path], spoken
) -> None:
    backend = make_backend("vllm", str(fixtures["teacher"]))
    out = backend.generate([audio_request(0, spoken[0])], GREEDY)
    assert out[0].error and "text LLM" in out[0].error
    assert backend._llm is None  # nothing to generate: the engine was never started


def test_bad_requests_fail_alone(fixtures: dict[str, Path]) -> None:
    backend = make_backend("hf", str(fixtures["qwen2_audio"]), batch_size=4, max_model_len=64)
    stereo = np.zeros((2, 16000), dtype=np.float32)
    pcm16 = np.zeros(16000, dtype=np.int16)
    reqs = [
        Request("stereo", [{"role": "user", "content": [{"type": "audio", "audio": stereo}]}]),
        Request("int", [{"role": "user", "content": [{"type": "audio", "audio": pcm16}]}]),
        Request("empty", [{"role": "user", "content": "  "}]),
        Request("long", [{"role": "user", "content": "one two three " * 40}]),
        text_request(4, QUESTIONS[0]),
    ]
    out = backend.generate(reqs, GREEDY)
    assert "mono" in out[0].error and "float" in out[1].error and "empty" in out[2].error
    assert "takes at most 64" in out[3].error
    assert out[4].ok and out[4].token_ids


def test_isolate_failures_finds_the_bad_item() -> None:
    calls = []

    def run(items: list[int]) -> list[Result]:
        calls.append(len(items))
        if 13 in items:
            raise ValueError("thirteen")
        return [Result(str(i), [i]) for i in items]

    out = isolate_failures(run, list(range(16)))
    assert [r.text for r in out if r.ok] == [str(i) for i in range(16) if i != 13]
    assert out[13].error == "ValueError: thirteen"
    assert len(calls) <= 1 + 2 * 4  # halving: O(log n) extra calls for one bad item


def test_fingerprint_tracks_content_not_names(fixtures: dict[str, Path], tmp_path: Path) -> None:
    teacher = fixtures["teacher"]
    fp = make_backend("hf", str(teacher)).fingerprint()
    assert fp == make_backend("hf", str(teacher)).fingerprint()  # stable
    copy = tmp_path / "copy"
    shutil.copytree(teacher, copy)
    assert make_backend("hf", str(copy)).fingerprint() == fp  # same bytes elsewhere: same model
    assert make_backend("hf", str(teacher), dtype="bfloat16").fingerprint() != fp
    assert make_backend("vllm", str(teacher)).fingerprint() != fp  # backend is part of it
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight (the tensor data sits after the header)
    weights.write_bytes(bytes(data))
    assert make_backend("hf", str(copy)).fingerprint() != fp
    template = teacher / "chat_template.jinja"
    (tmp_path / "copy2").mkdir()
    for f in teacher.iterdir():
        shutil.copy(f, tmp_path / "copy2" / f.name)
    (tmp_path / "copy2" / template.name).write_text(template.read_text() + " ")
    assert make_backend("hf", str(tmp_path / "copy2")).fingerprint() != fp


# ------------------------------------------------------------------------------------------ slow: zoo + vLLM


@pytest.fixture(scope="module")
def vllm_student(zoo_student: Path):
    import_vllm()
    backend = make_backend("vllm", "xopd-speech-smollm2", max_model_len=2048)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf_student(zoo_student: Path):
    backend = make_backend("hf", "xopd-speech-smollm2", batch_size=4)
    yield backend
    backend.close()


@pytest.mark.slow
def test_hf_and_vllm_agree_on_text(vllm_student, hf_student) -> None:
    reqs = [text_request(i, q) for i, q in enumerate(QUESTIONS)]
    seen: list[int] = []
    v = vllm_student.generate(reqs, GREEDY, progress=seen.append)
    h = hf_student.generate(reqs, GREEDY)
    assert sum(seen) == len(reqs)
    assert all(r.ok for r in v + h), [r.error for r in v + h]
    assert [r.token_ids for r in v] == [r.token_ids for r in h]
    assert [r.text for r in v] == [r.text for r in h]
    assert [r.meta["finish_reason"] for r in v] == [r.meta["finish_reason"] for r in h]
    assert "Paris" in v[0].text


@pytest.mark.slow
def test_hf_and_vllm_agree_on_audio(vllm_student, hf_student, spoken) -> None:
    reqs = [audio_request(i, a) for i, a in enumerate(spoken)]
    v = vllm_student.generate(reqs, GREEDY)
    h = hf_student.generate(reqs, GREEDY)
    assert all(r.ok for r in v + h), [r.error for r in v + h]
    # vLLM expanded <|AUDIO|> to as many tokens as the HF processor (ms-swift #9414's bug class).
    assert [r.meta["prompt_tokens"] for r in v] == [r.meta["prompt_tokens"] for r in h]
    assert [r.token_ids for r in v] == [r.token_ids for r in h]


@pytest.mark.slow
def test_cascade_on_hf_hears_the_question(spoken) -> None:
    backend = make_backend("hf", "cascade:", batch_size=2)
    assert backend.kind == "cascade"
    out = backend.generate([audio_request(0, spoken[0])], GenParams(max_new_tokens=24))
    assert out[0].ok, out[0].error
    assert "france" in out[0].meta["heard"][0].lower()
    assert "Paris" in out[0].text
