"""The model-family registry (xopd.families): one row per family, and one test entry per row.

Adding a family is one row in ``xopd.families.FAMILIES`` plus its entry in ``TESTED`` below (a fixture that
exercises the row on a real model, or the reason there is none). Also here: the registry is what training,
evaluation and vLLM export read (Voxtral refused by all of them with one message), production code never
imports the test-fixture module, and there is one sample rate and one audio validator.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xopd import families
from xopd.audio import SAMPLE_RATE, AudioFormatError, checked_audio
from xopd.families import FAMILIES, ModelLoadError, family_of

ROOT = Path(__file__).resolve().parents[1]

# family -> the fixture that exercises its row here (None: the reason it has no fixture)
TESTED: dict[str, str | None] = {
    "qwen2_audio": "fixture:qwen2_audio",
    "qwen2_5_omni_thinker": "fixture:qwen2_5_omni_thinker",
    "causal": "fixture:teacher",
    "qwen3_omni_moe": None,  # no tiny fixture: its row is checked against transformers' class only
    "voxtral": None,  # refused: its processor needs mistral-common (not installed)
}
WITH_FIXTURE = [name for name, fixture in TESTED.items() if fixture]


def test_every_family_has_its_test() -> None:
    assert set(TESTED) == set(FAMILIES), "a new family row needs its entry in TESTED (and its checks)"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_row_is_consistent(name: str) -> None:
    import transformers

    f = FAMILIES[name]
    assert f.name == name
    if f.model_class is not None:
        assert hasattr(transformers, f.model_class), f.model_class
    assert f.model_cls() is not None
    assert (f.audio_placeholder is not None) == f.is_speech
    for mt in f.model_types:
        if f.unsupported is None:
            assert family_of(mt) is f
    assert f.in_llm(f.lm_prefix + ".layers.0.mlp.up_proj.weight") and f.in_llm("lm_head.weight")
    assert f.llm_key(f.lm_prefix + ".embed_tokens.weight") == "model.embed_tokens.weight"
    assert f.llm_key("lm_head.weight") == "lm_head.weight"


def test_model_types_select_one_row_and_unknown_is_causal() -> None:
    types = [mt for f in FAMILIES.values() for mt in f.model_types]
    assert len(types) == len(set(types))
    assert family_of("qwen2_5_omni").name == "qwen2_5_omni_thinker"  # the full Omni checkpoint: its thinker
    assert family_of("qwen3_omni_moe_thinker").name == "qwen3_omni_moe"
    assert family_of("llama") is families.CAUSAL and family_of("qwen2") is families.CAUSAL
    assert families.speech_family(type("Cfg", (), {"model_type": "qwen2"})()) is None
    assert "voxtral" not in families.speech_families()


def test_weight_key_maps() -> None:
    q = FAMILIES["qwen2_audio"]
    assert q.vllm_key("model.language_model.layers.0.self_attn.q_proj.weight") == (
        "language_model.model.layers.0.self_attn.q_proj.weight"
    )
    assert q.export_key("language_model.model.model.norm.weight") == "language_model.model.norm.weight"
    assert q.vllm_key("model.audio_tower.conv1.weight") == "audio_tower.conv1.weight"
    assert q.vllm_key("lm_head.weight") == "language_model.lm_head.weight"
    assert q.vllm_key("audio_tower.conv1.weight") == "audio_tower.conv1.weight"  # already released: unchanged
    assert FAMILIES["qwen2_5_omni_thinker"].vllm_key("model.norm.weight") == "thinker.model.norm.weight"
    assert FAMILIES["qwen2_5_omni_thinker"].export_key is None
    assert families.CAUSAL.vllm_key("model.norm.weight") == "model.norm.weight"


# -- Voxtral: refused everywhere, with the registry's one message ----------------------------------------


@pytest.fixture(scope="module")
def voxtral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("voxtral")
    (path / "config.json").write_text(json.dumps({"model_type": "voxtral"}))
    return path


def test_voxtral_refused_by_training_evaluation_and_loading(voxtral_dir: Path) -> None:
    from evalsuite.backends.resolve import resolve_model
    from xopd.loading import load_speech_lm, load_text_lm
    from xopd.loading import ModelLoadError as LoadingError
    from xopd.models import load_adapter

    assert LoadingError is ModelLoadError  # one class: the CLIs treat it as a user error
    with pytest.raises(ModelLoadError) as direct:
        family_of("voxtral")
    message = str(direct.value)
    assert families.VOXTRAL_REFUSAL in message and "mistral" in message
    for load in (load_adapter, load_speech_lm, load_text_lm, resolve_model):
        with pytest.raises(ModelLoadError) as exc:
            load(str(voxtral_dir))
        assert str(exc.value) == message, load.__name__


# -- each row against a real (tiny) model -------------------------------------------------------------


@pytest.fixture(scope="module", params=WITH_FIXTURE)
def adapter(request: pytest.FixtureRequest):
    from xopd.models import load_adapter

    a = load_adapter(TESTED[request.param], device="cpu")
    assert a.family.name == request.param
    return a


@pytest.fixture(scope="module", params=[n for n in WITH_FIXTURE if families.FAMILIES[n].is_speech])
def speech_adapter(request: pytest.FixtureRequest):
    from xopd.models import load_adapter

    return load_adapter(TESTED[request.param], device="cpu")


def _audio(seconds: float = 1.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_row_matches_the_model(adapter) -> None:
    f = adapter.family
    names = [n for n, _ in adapter.core.named_parameters()]
    layers = adapter.decoder_layers()
    assert layers
    for i in range(len(layers)):
        assert any(n.startswith(f"{f.lm_prefix}.layers.{i}.") for n in names)
    assert adapter.lm_prefix == f.lm_prefix
    # the LLM is the decoder + lm_head; for a speech model something (the audio tower) lies outside it
    outside = [n for n in names if not adapter.in_llm(n)]
    assert bool(outside) == f.is_speech
    if f.audio_encoder is not None:
        encoder = adapter.core.get_submodule(f.audio_encoder)
        assert adapter.encoder_cache is not None and adapter.encoder_cache.encoder is encoder
    else:
        assert adapter.encoder_cache is None


def test_input_builder_expands_the_placeholder_per_embedding(speech_adapter) -> None:
    adapter = speech_adapter
    audio = _audio()
    prompt = adapter.speech_prompt(audio, "Answer with a number.")
    audio_id = int(adapter.core.config.audio_token_id)
    frames = families.num_feature_frames(len(audio))
    assert int(prompt.features["feature_attention_mask"].sum()) == frames
    assert sum(t == audio_id for t in prompt.ids) == families.audio_token_count(frames)
    # the model takes exactly that many embeddings (ms-swift #9414)
    batch = adapter.collate([prompt])
    import torch

    with torch.no_grad():
        adapter.core(**batch)


def test_saved_checkpoint_keys_are_the_vllm_keys() -> None:
    """The Qwen2-Audio fixture is saved in the released layout: the family's key map of every live name."""
    from safetensors import safe_open

    from xopd.models import load_adapter
    from xopd.zoo import resolve_model_name

    a = load_adapter("fixture:qwen2_audio", device="cpu")
    with safe_open(str(Path(resolve_model_name("fixture:qwen2_audio")) / "model.safetensors"), "pt") as fh:
        saved = set(fh.keys())
    assert {a.family.vllm_key(n) for n in a.core.state_dict()} == saved


# -- fixtures stay out of the production path ---------------------------------------------------------


def test_production_never_imports_the_fixture_module() -> None:
    from xopd.zoo import resolve_model_name

    for key in ("teacher", "qwen2_audio", "qwen2_5_omni_thinker"):
        resolve_model_name(f"fixture:{key}")  # built (if need be) here, not in the child
    code = """
import sys
import numpy as np
from evalsuite.backends.resolve import resolve_model
from xopd.models import load_adapter
import xopd.loading, xopd.rollout, xopd.rollout_vllm, xopd.sharding, evalsuite.backends.prompts
audio = np.zeros(8000, np.float32) + 0.1
for key in ("teacher", "qwen2_audio", "qwen2_5_omni_thinker"):
    resolve_model("fixture:" + key)
    a = load_adapter("fixture:" + key, device="cpu")
    a.text_prompt("hi")
    if a.is_speech:
        a.speech_prompt(audio, "Answer.")
print("FIXTURES_IMPORTED", "xopd.zoo.fixtures" in sys.modules)
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FIXTURES_IMPORTED False" in out.stdout


def test_fixture_names_resolve_through_the_zoo() -> None:
    import xopd.models
    from xopd import zoo

    assert xopd.models.resolve_model_name is zoo.resolve_model_name
    assert zoo.resolve_model_name("some/hub-id") == "some/hub-id"
    with pytest.raises(ModelLoadError, match="unknown fixture 'fixture:nope'; available: fixture:tokenizer"):
        zoo.resolve_model_name("fixture:nope")
    from xopd.zoo import fixtures

    assert fixtures.SUBDIRS is zoo.FIXTURE_SUBDIRS
    assert fixtures.omni_thinker_inputs is families.omni_thinker_inputs


def test_registry_is_torch_free_at_import() -> None:
    code = (
        "import sys, xopd.families, xopd.audio, xopd.zoo\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


# -- one sample rate, one audio validator -------------------------------------------------------------


def test_one_sample_rate() -> None:
    import evalsuite.backends.prompts
    import evalsuite.speech
    import evalsuite.tts
    import xopd.zoo.fixtures
    import xopd.zoo.whisper

    for module in (evalsuite.tts, evalsuite.speech, evalsuite.backends.prompts, xopd.zoo.whisper):
        assert module.SAMPLE_RATE is SAMPLE_RATE, module.__name__
    assert xopd.zoo.fixtures.SAMPLING_RATE is SAMPLE_RATE


BAD = {
    "list": ([0.1, 0.2], "audio must be a numpy array of 16 kHz mono samples, got list"),
    "stereo": (np.zeros((10, 2), np.float32), "audio has shape (10, 2): expected mono"),
    "empty": (np.zeros(0, np.float32), "audio is empty"),
    "int": (np.ones(10, np.int16), "audio dtype is int16, expected float"),
    "nan": (np.array([0.1, np.nan], np.float32), "audio has 1 non-finite samples"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_one_audio_validator_behind_every_error_type(case: str) -> None:
    from evalsuite.backends.prompts import RequestError, check_audio
    from evalsuite.speech import AudioError
    from evalsuite.speech import check_audio as speech_check

    audio, reason = BAD[case]
    with pytest.raises(AudioFormatError, match=re.escape(reason)):
        checked_audio(audio)
    with pytest.raises(RequestError, match=re.escape(f"message 0: {reason}")):
        check_audio(audio, "message 0")
    if case != "list":  # the speech cache reads array-likes (a hub dataset's decoded audio)
        with pytest.raises(AudioError, match=re.escape(f"clip: {reason}")):
            speech_check(audio, SAMPLE_RATE, source="clip")
    assert checked_audio(np.ones(4, np.float64)).dtype == np.float32
    with pytest.raises(AudioFormatError, match="sample rate is 8000 Hz"):
        checked_audio(np.ones(4, np.float32), sample_rate=8000)


def test_adapter_refuses_bad_audio_with_the_shared_reason() -> None:
    from xopd.models import load_adapter

    a = load_adapter("fixture:qwen2_audio", device="cpu")
    with pytest.raises(ValueError, match="audio dtype is int16"):
        a.speech_prompt(np.ones(1600, np.int16))
    with pytest.raises(ValueError, match="audio is empty"):
        a.speech_prompt(np.zeros(0, np.float32))
