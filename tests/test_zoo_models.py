"""The real zoo models, through transformers: SmolLM2 answers, the assembled student equals its decoder on text,
the cascade hears a spoken question, and bad model names fail with messages that say what to do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evalsuite.tts import espeak_synthesize
from xopd.cascade import Cascade, parse_cascade
from xopd.loading import ModelLoadError, load_speech_lm, load_text_lm
from xopd.zoo import ZOO, ensure, resolve

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def teacher(zoo_smollm2: Path):
    return load_text_lm(str(zoo_smollm2))


@pytest.fixture(scope="module")
def student(zoo_student: Path):
    return load_speech_lm("xopd-speech-smollm2")


def _greedy(model, tokenizer, messages, n: int = 16) -> str:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_smollm2_is_plain_safetensors_and_answers_paris(zoo_smollm2: Path, teacher) -> None:
    cfg = json.loads((zoo_smollm2 / "config.json").read_text())
    assert "quantization_config" not in cfg  # a fresh model's state_dict, not the GGUF-backed one
    assert (zoo_smollm2 / "model.safetensors").exists()
    model, tok = teacher
    answer = _greedy(model, tok, FRANCE)
    print("SmolLM2:", answer)
    assert "Paris" in answer


def test_resolve_passes_hub_ids_and_paths_through(tmp_path: Path) -> None:
    assert resolve("Qwen/Qwen2-Audio-7B-Instruct") == "Qwen/Qwen2-Audio-7B-Instruct"
    assert resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(KeyError, match="available: smollm2-135m-instruct"):
        ensure("no-such-model")


def test_ensure_is_cached(zoo_smollm2: Path) -> None:
    before = (zoo_smollm2 / "model.safetensors").stat().st_mtime_ns
    assert ensure("smollm2-135m-instruct") == zoo_smollm2
    assert (zoo_smollm2 / "model.safetensors").stat().st_mtime_ns == before


def test_assembled_student_layout_is_vllm_compatible(zoo_student: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(zoo_student / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"audio_tower", "multi_modal_projector", "language_model"}
    assert "language_model.model.layers.0.self_attn.q_proj.bias" in keys
    cfg = json.loads((zoo_student / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2AudioForConditionalGeneration"]
    assert cfg["audio_config"]["num_mel_bins"] == 80 and cfg["audio_config"]["d_model"] == 384


def test_student_equals_teacher_on_text(student, teacher) -> None:
    """SmolLM2 as a Qwen2 decoder with zero q/k/v biases computes exactly SmolLM2 on text-only input."""
    s_model, proc = student
    t_model, t_tok = teacher
    s_enc = proc.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    t_enc = t_tok.apply_chat_template(FRANCE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(s_enc["input_ids"], t_enc["input_ids"])
    with torch.no_grad():
        s_logits = s_model(**s_enc).logits[0]
        t_logits = t_model(**t_enc).logits[0]
    vocab = t_logits.shape[-1]
    assert s_logits.shape[-1] >= vocab + 3  # three audio tokens, padded to a multiple of 64
    torch.testing.assert_close(s_logits[:, :vocab], t_logits, atol=1e-4, rtol=1e-4)


def test_student_audio_placeholder_expands_to_encoder_frames(student) -> None:
    model, proc = student
    audio = espeak_synthesize("Is seven greater than four?")
    msgs = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Answer yes or no."}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = proc(text=text, audio=[audio], sampling_rate=16000, return_tensors="pt")
    n_placeholders = int((enc["input_ids"] == model.config.audio_token_index).sum())
    frames = int(enc["feature_attention_mask"].sum())
    assert n_placeholders == ((frames - 1) // 2 + 1 - 2) // 2 + 1  # conv stride 2, then 2× average pool
    assert n_placeholders == round(len(audio) / 16000 * 25)  # 25 audio tokens per second
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_cascade_answers_a_spoken_question() -> None:
    cascade = Cascade.load("cascade:")
    audio = espeak_synthesize("What is the capital of France?")
    answer, heard = cascade.generate([{"role": "user", "content": [{"type": "audio", "audio": audio}]}])
    print("heard:", heard, "answer:", answer)
    assert "capital of france" in heard[0].lower()
    assert "Paris" in answer


def test_cascade_spec_parsing() -> None:
    assert parse_cascade("cascade:") == ("whisper-tiny.en", "smollm2-135m-instruct")
    assert parse_cascade("cascade:openai/whisper-small+Qwen/Qwen2.5-7B-Instruct") == (
        "openai/whisper-small",
        "Qwen/Qwen2.5-7B-Instruct",
    )
    with pytest.raises(ValueError, match="exactly one"):
        parse_cascade("cascade:a+b+c")


def test_text_model_refused_as_speech_student(zoo_smollm2: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no audio encoder, so it cannot be a speech student"):
        load_speech_lm("smollm2-135m-instruct")


def test_speech_model_refused_as_text_teacher(zoo_student: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a speech LLM"):
        load_text_lm("xopd-speech-smollm2")


def test_missing_and_garbled_paths_fail_clearly(tmp_path: Path, zoo_smollm2: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_text_lm(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="could not be found: it is not a zoo name"):
        load_text_lm("nobody/no-such-model-xopd")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_text_lm(str(empty))
    bad_json = tmp_path / "bad-json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_text_lm(str(bad_json))
    # Real config, truncated weights: the error names the model and the failure.
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    for f in zoo_smollm2.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (garbled / f.name).write_bytes(f.read_bytes())
    (garbled / "model.safetensors").write_bytes((zoo_smollm2 / "model.safetensors").read_bytes()[:4096])
    with pytest.raises(ModelLoadError, match="loading weights from .*garbled.* failed"):
        load_text_lm(str(garbled))


def test_zoo_registry_lists_kinds() -> None:
    assert {e.kind for e in ZOO.values()} == {"text-lm", "asr", "speech-lm"}
    assert np.all([e.description for e in ZOO.values()])
