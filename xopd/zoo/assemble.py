"""Assemble a speech LLM from parts: a Whisper-style encoder + a linear projector + a LLaMA/Qwen2-style decoder.

The result is saved in the Qwen2-Audio checkpoint layout (``audio_tower.*``, ``multi_modal_projector.linear.*``,
``language_model.model.*``), the layout of the released Qwen2-Audio weights, so that transformers'
``Qwen2AudioForConditionalGeneration`` and vLLM's Qwen2-Audio model both load it. We write the safetensors
file ourselves because transformers 5.19's ``save_pretrained`` emits ``language_model.model.model.*`` keys,
which vLLM rejects.

A LLaMA decoder goes in as a Qwen2 decoder: the two differ only in Qwen2's q/k/v biases, which we set to zero,
so on text-only input the assembled model computes exactly what the source LLM computes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Qwen2AudioConfig,
    Qwen2AudioEncoderConfig,
    Qwen2AudioProcessor,
    Qwen2Config,
    WhisperFeatureExtractor,
    WhisperModel,
)

from xopd.offline import check_online
from xopd.zoo import resolve

AUDIO_TOKENS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")
DECODER_TYPES = ("llama", "qwen2")


class AssemblyError(ValueError):
    pass


def chatml_audio_template(system_default: str | None) -> str:
    """ChatML with audio parts: ``{"type": "audio"}`` renders as Qwen2-Audio's placeholder triple.

    ``system_default`` reproduces the source LLM's implicit system turn, so that a text-only conversation
    renders to the very same token ids for the speech student and for its text teacher.
    """
    system = (
        "{%- if loop.first and messages[0]['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n" + system_default.replace("'", "\\'") + "<|im_end|>\\n' }}"
        "{%- endif -%}"
        if system_default
        else ""
    )
    return (
        "{%- for message in messages -%}" + system + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'audio' -%}{{ '<|audio_bos|><|AUDIO|><|audio_eos|>' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def _implicit_system_turn(tokenizer) -> str | None:
    """The system message a ChatML LLM's template inserts on its own (SmolLM2 does), or None."""
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template:
        raise AssemblyError(
            "the decoder's chat template is not ChatML (<|im_start|>role ... <|im_end|>); "
            "assemble_speech_lm supports ChatML decoders such as SmolLM2 and Qwen2"
        )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False)
    head = rendered.split("<|im_start|>user\n")[0]
    prefix = "<|im_start|>system\n"
    if head.startswith(prefix) and head.endswith("<|im_end|>\n"):
        return head[len(prefix) : -len("<|im_end|>\n")]
    return None


def _encoder_config(whisper_cfg) -> Qwen2AudioEncoderConfig:
    return Qwen2AudioEncoderConfig(
        num_mel_bins=whisper_cfg.num_mel_bins,
        encoder_layers=whisper_cfg.encoder_layers,
        encoder_attention_heads=whisper_cfg.encoder_attention_heads,
        encoder_ffn_dim=whisper_cfg.encoder_ffn_dim,
        d_model=whisper_cfg.d_model,
        activation_function=whisper_cfg.activation_function,
        max_source_positions=whisper_cfg.max_source_positions,
        scale_embedding=whisper_cfg.scale_embedding,
    )


def _decoder_config(src, vocab_size: int) -> Qwen2Config:
    if getattr(src, "attention_bias", False) or getattr(src, "mlp_bias", False):
        raise AssemblyError("decoders with o_proj or MLP biases do not map onto Qwen2; use one without them")
    head_dim = getattr(src, "head_dim", None) or src.hidden_size // src.num_attention_heads
    if head_dim * src.num_attention_heads != src.hidden_size:
        raise AssemblyError(f"head_dim {head_dim} × heads {src.num_attention_heads} != hidden {src.hidden_size}")
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=src.hidden_size,
        intermediate_size=src.intermediate_size,
        num_hidden_layers=src.num_hidden_layers,
        num_attention_heads=src.num_attention_heads,
        num_key_value_heads=src.num_key_value_heads,
        hidden_act=src.hidden_act,
        max_position_embeddings=src.max_position_embeddings,
        rms_norm_eps=src.rms_norm_eps,
        rope_parameters=dict(src.rope_parameters),
        # transformers' Qwen2-Audio class does not tie weights (the released 7B is untied): store lm_head.
        tie_word_embeddings=False,
        bos_token_id=src.bos_token_id,
        eos_token_id=src.eos_token_id,
        use_sliding_window=False,
    )


def assemble_speech_lm(
    encoder: str,
    decoder: str,
    out_dir: Path,
    *,
    seed: int = 0,
    pad_vocab_multiple: int = 64,
) -> None:
    """Write a Qwen2-Audio-layout speech LLM to ``out_dir``.

    ``encoder``: a Whisper checkpoint (zoo name, HF id or path). ``decoder``: a LLaMA or Qwen2 causal LM with a
    ChatML chat template. The projector is freshly initialised (seeded) so that projected audio frames have the
    decoder's embedding scale; training aligns it. New audio-token rows and vocabulary padding are zero.
    """
    out_dir = Path(out_dir)
    enc_path, dec_path = resolve(encoder), resolve(decoder)
    for name, path in ((encoder, enc_path), (decoder, dec_path)):
        if not Path(path).expanduser().exists():  # neither a zoo name nor a local path: a hub id
            check_online(f"model {name!r} from the Hugging Face hub", how="pass a zoo name or a local path")

    enc_cfg = AutoConfig.from_pretrained(enc_path)
    if enc_cfg.model_type != "whisper":
        raise AssemblyError(f"encoder {encoder!r} is a {enc_cfg.model_type!r} model; a Whisper checkpoint is needed")
    dec_cfg = AutoConfig.from_pretrained(dec_path)
    if dec_cfg.model_type not in DECODER_TYPES:
        raise AssemblyError(
            f"decoder {decoder!r} is a {dec_cfg.model_type!r} model; supported: {', '.join(DECODER_TYPES)}"
        )

    tokenizer = AutoTokenizer.from_pretrained(dec_path)
    system_default = _implicit_system_turn(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS)})
    n_tok = len(tokenizer)
    vocab = math.ceil(n_tok / pad_vocab_multiple) * pad_vocab_multiple

    whisper = WhisperModel.from_pretrained(enc_path, dtype=torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(dec_path, dtype=torch.float32)

    text_cfg = _decoder_config(dec_cfg, vocab)
    config = Qwen2AudioConfig(
        audio_config=_encoder_config(whisper.config),
        text_config=text_cfg,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.tie_word_embeddings = False
    config.architectures = ["Qwen2AudioForConditionalGeneration"]  # vLLM picks its model class from this

    tensors: dict[str, torch.Tensor] = {}
    # Qwen2AudioEncoder is Whisper's encoder plus a parameter-free 2× average pool: the names line up.
    for k, v in whisper.encoder.state_dict().items():
        tensors[f"audio_tower.{k}"] = v
    del whisper

    src = llm.state_dict()
    emb = src["model.embed_tokens.weight"]
    old_vocab = emb.shape[0]
    new_emb = torch.zeros(vocab, emb.shape[1], dtype=emb.dtype)
    new_emb[:old_vocab] = emb
    if "lm_head.weight" not in src or dec_cfg.tie_word_embeddings:
        src["lm_head.weight"] = emb.clone()
    for k, v in src.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            padded = torch.zeros(vocab, v.shape[1], dtype=v.dtype)
            padded[:old_vocab] = v
            v = padded
        tensors[f"language_model.{k}"] = v
    head_dim = text_cfg.hidden_size // text_cfg.num_attention_heads
    for i in range(text_cfg.num_hidden_layers):
        for proj, heads in (("q", text_cfg.num_attention_heads), ("k", text_cfg.num_key_value_heads), ("v", text_cfg.num_key_value_heads)):
            tensors.setdefault(f"language_model.model.layers.{i}.self_attn.{proj}_proj.bias", torch.zeros(heads * head_dim))
    del llm, src

    gen = torch.Generator().manual_seed(seed)
    d_audio = config.audio_config.d_model
    emb_rms = emb.pow(2).mean().sqrt().item()
    tensors["multi_modal_projector.linear.weight"] = (
        torch.randn(text_cfg.hidden_size, d_audio, generator=gen) * (emb_rms / math.sqrt(d_audio))
    )
    tensors["multi_modal_projector.linear.bias"] = torch.zeros(text_cfg.hidden_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)

    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    src_gen = llm_generation_eos(dec_path)
    eos += [e for e in src_gen if e not in eos]
    GenerationConfig(bos_token_id=text_cfg.bos_token_id, eos_token_id=eos, pad_token_id=eos[0]).save_pretrained(out_dir)

    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor.from_pretrained(enc_path),
        tokenizer=tokenizer,
        chat_template=chatml_audio_template(system_default),
    )
    tokenizer.chat_template = processor.chat_template
    processor.save_pretrained(out_dir)


def llm_generation_eos(path: str) -> list[int]:
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        return []
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def build_default(out_dir: Path) -> None:
    """``xopd-speech-smollm2``: whisper-tiny.en encoder + untrained projector + SmolLM2-135M-Instruct."""
    assemble_speech_lm("whisper-tiny.en", "smollm2-135m-instruct", out_dir)
