"""Tests for xopd.zoo.fixtures: the tiny tokenizer / teacher / speech-student fixtures."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from xopd.zoo import fixtures as fx

PROMPT = "Tom has 12 apples. He buys 5 more apples. How many apples does Tom have now?"
SENTENCE = "Tom has 12 apples. He buys 5 more apples. The answer is 17."


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # In-process loads below read local directories only; test_reload_offline_via_auto_classes checks the
    # same in a fresh interpreter started with HF_HUB_OFFLINE=1 (the hub reads it at import time).
    return fx.build_all(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="module")
def tokenizer(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(built["tokenizer"]))


@pytest.fixture(scope="module")
def teacher(built):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(built["teacher"])).eval()


@pytest.fixture(scope="module")
def qwen2_audio(built):
    from transformers import AutoModelForMultimodalLM, AutoProcessor

    path = str(built["qwen2_audio"])
    model, info = AutoModelForMultimodalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    return model.eval(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def omni_thinker(built):
    from transformers import AutoFeatureExtractor, AutoTokenizer, Qwen2_5OmniThinkerForConditionalGeneration

    path = str(built["qwen2_5_omni_thinker"])
    model, info = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    return model.eval(), AutoTokenizer.from_pretrained(path), AutoFeatureExtractor.from_pretrained(path)


def _sine(seconds: float = 1.5, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * fx.SAMPLING_RATE)) / fx.SAMPLING_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _chat(tokenizer, with_audio: bool) -> str:
    content = ([{"type": "audio"}] if with_audio else []) + [{"type": "text", "text": PROMPT}]
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(tokenizer, tmp_path):
    ids = tokenizer(SENTENCE)["input_ids"]
    assert tokenizer.decode(ids) == SENTENCE
    # The reloaded tokenizer encodes exactly like the one build_tokenizer returned.
    assert fx.build_tokenizer(tmp_path)(SENTENCE)["input_ids"] == ids
    # Qwen2 pre-tokenisation: numbers are split into digits.
    assert tokenizer.convert_ids_to_tokens(tokenizer("12")["input_ids"]) == ["1", "2"]


def test_tokenizer_special_tokens(tokenizer):
    assert len(tokenizer) == 1000
    ids = fx.special_token_ids(tokenizer)
    assert list(ids.values()) == list(range(len(tokenizer) - len(fx.SPECIAL_TOKENS), len(tokenizer)))
    for token, token_id in ids.items():
        assert tokenizer(token)["input_ids"] == [token_id]  # never split
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.audio_token == "<|AUDIO|>" and tokenizer.audio_token_id == ids["<|AUDIO|>"]
    turn = tokenizer("<|im_start|>hi<|im_end|>")["input_ids"]
    assert tokenizer.decode(turn, skip_special_tokens=True) == "hi"


def test_chat_template(tokenizer):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is 2 plus 3?"}]},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>What is 2 plus 3?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is 5.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )


# ------------------------------------------------------------------------------------------ shared vocab


def test_teacher_and_students_share_the_vocabulary(built, tokenizer, teacher, qwen2_audio, omni_thinker):
    tokenizer_files = {p.name: p.read_bytes() for p in built["tokenizer"].iterdir()}
    for key in ("teacher", "qwen2_audio", "qwen2_5_omni_thinker"):
        for name, data in tokenizer_files.items():
            assert (built[key] / name).read_bytes() == data, (key, name)

    vocab = teacher.config.vocab_size
    assert vocab % 64 == 0 and len(tokenizer) <= vocab < len(tokenizer) + 64
    assert qwen2_audio[0].config.text_config.vocab_size == vocab
    assert omni_thinker[0].config.text_config.vocab_size == vocab
    assert qwen2_audio[0].config.audio_token_id == tokenizer.audio_token_id
    assert omni_thinker[0].config.audio_token_id == tokenizer.audio_token_id
    assert qwen2_audio[1].tokenizer.get_vocab() == tokenizer.get_vocab()


def test_vocab_padding_is_an_argument(tmp_path, built):
    out = fx.build_tiny_teacher(tmp_path / "t", tokenizer_dir=built["tokenizer"], pad_vocab_to_multiple_of=1)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 1000


# ------------------------------------------------------------------------------------------- text-only


@torch.no_grad()
def test_qwen2_audio_equals_teacher_on_text(tokenizer, teacher, qwen2_audio):
    enc = tokenizer(_chat(tokenizer, with_audio=False), return_tensors="pt")
    expected = teacher(**enc).logits
    got = qwen2_audio[0](**enc).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_omni_thinker_equals_teacher_on_text(tokenizer, teacher, omni_thinker):
    # M-RoPE with identical text positions in all three sections is plain RoPE.
    enc = tokenizer(_chat(tokenizer, with_audio=False), return_tensors="pt")
    torch.testing.assert_close(omni_thinker[0](**enc).logits, teacher(**enc).logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- audio


def _check_forward_and_generate(model, inputs) -> None:
    """One prompt's forward: finite logits over the vocabulary; greedy generation continues the prompt."""
    out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert generated.shape[0] == 1 and prompt_len < generated.shape[1] <= prompt_len + 4
    assert torch.equal(generated[:, :prompt_len], inputs["input_ids"])


@torch.no_grad()
def test_qwen2_audio_audio_prompt(tokenizer, qwen2_audio):
    model, processor = qwen2_audio
    audio = _sine()
    text = _chat(tokenizer, with_audio=True)
    inputs = processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="pt")

    n_placeholders = int((inputs["input_ids"] == model.config.audio_token_id).sum())
    frames = int(inputs["feature_attention_mask"].sum())
    assert frames == fx.num_feature_frames(len(audio)) == 150
    assert n_placeholders == fx.audio_token_count(frames) == 37
    # The embeddings the model scatters in: the encoder's valid outputs for this clip.
    encoded = model.model.audio_tower(inputs["input_features"]).last_hidden_state
    frames_per_audio = inputs["feature_attention_mask"].sum(-1)
    _, n_embeddings = model.model.audio_tower._get_feat_extract_output_lengths(frames_per_audio)
    assert int(n_embeddings.sum()) == n_placeholders <= encoded.shape[1]

    _check_forward_and_generate(model, inputs)


@torch.no_grad()
def test_omni_thinker_audio_prompt(tokenizer, omni_thinker):
    model, omni_tokenizer, feature_extractor = omni_thinker
    audio = _sine()
    text = _chat(tokenizer, with_audio=True)
    inputs = fx.omni_thinker_inputs(omni_tokenizer, feature_extractor, text, [audio])

    n_placeholders = int((inputs["input_ids"] == model.config.audio_token_id).sum())
    features = model.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
    embeddings = features.last_hidden_state  # (sum of valid audio embeddings, hidden)
    assert n_placeholders == embeddings.shape[0] == fx.audio_token_count(150) == 37
    assert embeddings.shape[1] == model.config.text_config.hidden_size

    _check_forward_and_generate(model, inputs)


def test_omni_thinker_inputs_match_the_official_expansion(tokenizer, qwen2_audio, omni_thinker):
    # Qwen2AudioProcessor expands <|AUDIO|> with the same formula Qwen2_5OmniProcessor uses.
    text, audio = _chat(tokenizer, with_audio=True), _sine(2.3)
    ours = fx.omni_thinker_inputs(omni_thinker[1], omni_thinker[2], text, [audio])
    official = qwen2_audio[1](text=text, audio=[audio], sampling_rate=16000, return_tensors="pt")
    assert torch.equal(ours["input_ids"], official["input_ids"])
    assert torch.equal(ours["feature_attention_mask"], official["feature_attention_mask"])
    torch.testing.assert_close(ours["input_features"], official["input_features"])


@torch.no_grad()
def test_omni_thinker_batch_of_two_audios(omni_thinker):
    model, omni_tokenizer, feature_extractor = omni_thinker
    texts = [
        "<|audio_bos|><|AUDIO|><|audio_eos|>What is 2 plus 3?",
        "Listen: <|audio_bos|><|AUDIO|><|audio_eos|>",
    ]
    inputs = fx.omni_thinker_inputs(omni_tokenizer, feature_extractor, texts, [_sine(1.0), _sine(2.0, 220.0)])
    counts = (inputs["input_ids"] == model.config.audio_token_id).sum(-1).tolist()
    assert counts == [fx.audio_token_count(100), fx.audio_token_count(200)] == [25, 50]
    assert inputs["attention_mask"][:, -1].all()  # left padding
    assert torch.isfinite(model(**inputs).logits).all()


def test_omni_thinker_inputs_checks_audio_count(omni_thinker):
    _, omni_tokenizer, feature_extractor = omni_thinker
    with pytest.raises(ValueError, match="audios"):
        fx.omni_thinker_inputs(omni_tokenizer, feature_extractor, "no placeholder here", [_sine()])


# ------------------------------------------------------------------------------------------- on disk


def test_qwen2_audio_checkpoint_layout(built):
    with safe_open(str(built["qwen2_audio"] / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "language_model.lm_head.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    assert {k.split(".")[0] for k in keys} == {"audio_tower", "multi_modal_projector", "language_model"}


def test_reload_offline_via_auto_classes(built):
    """A fresh interpreter with HF_HUB_OFFLINE=1 loads every fixture through the Auto classes."""
    script = textwrap.dedent(
        f"""
        from transformers import (AutoConfig, AutoFeatureExtractor, AutoModelForCausalLM,
                                  AutoModelForMultimodalLM, AutoProcessor, AutoTokenizer)
        AutoTokenizer.from_pretrained({str(built["tokenizer"])!r})
        AutoModelForCausalLM.from_pretrained({str(built["teacher"])!r})
        AutoModelForMultimodalLM.from_pretrained({str(built["qwen2_audio"])!r})
        processor = AutoProcessor.from_pretrained({str(built["qwen2_audio"])!r})
        assert type(processor).__name__ == "Qwen2AudioProcessor", type(processor)
        omni = {str(built["qwen2_5_omni_thinker"])!r}
        assert AutoConfig.from_pretrained(omni).model_type == "qwen2_5_omni_thinker"
        AutoModelForMultimodalLM.from_pretrained(omni)
        AutoTokenizer.from_pretrained(omni)
        AutoFeatureExtractor.from_pretrained(omni)
        print("ok")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_builds_are_deterministic(built, tmp_path):
    again = fx.build_all(tmp_path / "again")
    for key, path in built.items():
        assert _digests(again[key]) == _digests(path), key
