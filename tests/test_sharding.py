"""FSDP's units and optimizer groups come from the family's decoder prefix, read through the adapter (fast: no
process group; the 2-process FSDP runs are in test_distributed.py)."""

from __future__ import annotations

import pytest

from xopd.config import ModelsConfig
from xopd.models import load_adapter, prepare_trainable
from xopd.sharding import decoder_layers, is_layer_param, optimizer_groups


@pytest.mark.parametrize("key", ["qwen2_audio", "qwen2_5_omni_thinker", "teacher"])
def test_layers_and_groups_follow_the_lm_prefix(key: str) -> None:
    adapter = load_adapter(f"fixture:{key}", device="cpu")
    prepare_trainable(adapter, ModelsConfig(student=f"fixture:{key}"))
    layers = decoder_layers(adapter)
    assert layers == adapter.decoder_layers()
    assert len(layers) == adapter.core.config.get_text_config().num_hidden_layers
    named = adapter.trainable_parameters()
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    assert {id(p) for n, p in named if is_layer_param(n, adapter)} == in_layers
    assert all(adapter.in_llm(n) for n, _ in named)  # freeze_audio: only the LLM trains
    groups = optimizer_groups(adapter)
    assert [len(g["params"]) for g in groups] == [
        sum(is_layer_param(n, adapter) for n, _ in named),
        sum(not is_layer_param(n, adapter) for n, _ in named),
    ]


def test_missing_layers_say_where_they_were_looked_for() -> None:
    adapter = load_adapter("fixture:teacher", device="cpu")
    adapter.family = type(adapter.family)(**{**adapter.family.__dict__, "lm_prefix": "nowhere"})
    with pytest.raises(ValueError, match="no decoder layers at nowhere.layers"):
        decoder_layers(adapter)
