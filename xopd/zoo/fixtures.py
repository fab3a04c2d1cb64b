"""Tiny random-weight fixtures: a Qwen-style tokenizer, a text teacher and two speech students, built fast.

Everything here is made locally (no hub, no downloads) and written with ``save_pretrained`` (safetensors), so
it reloads with ``HF_HUB_OFFLINE=1`` through the usual ``from_pretrained`` calls:

``tokenizer/``
    Byte-level BPE (Qwen2 pre-tokenizer regex) trained on a small built-in English corpus, ChatML template,
    Qwen audio/vision special tokens appended after the learned vocabulary, as in the real Qwen vocabularies.
``tiny-teacher/``
    ``Qwen2ForCausalLM`` with the tokenizer beside it; its vocabulary is padded up to a multiple of 64.
``tiny-qwen2-audio/``
    ``Qwen2AudioForConditionalGeneration`` + ``Qwen2AudioProcessor``. Its language model *is* the teacher
    (weights copied), so on text-only input student and teacher give the same logits.
``tiny-qwen2.5-omni-thinker/``
    ``Qwen2_5OmniThinkerForConditionalGeneration`` (tiny audio and vision towers), language model copied from
    the teacher as well. Without torchvision ``Qwen2_5OmniProcessor`` cannot be built (its video processor
    needs it), so the directory holds the tokenizer and the ``WhisperFeatureExtractor`` and
    :func:`xopd.families.omni_thinker_inputs` (the family's input builder, re-exported here) builds what the
    processor would return for text + audio.

All builds are deterministic: the same call writes the same bytes. Test-only: production code names the
fixtures (``fixture:<key>``, :data:`xopd.zoo.FIXTURE_SUBDIRS`) and imports this module only to build them
(:func:`xopd.zoo.resolve_model_name`).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xopd.audio import SAMPLE_RATE as SAMPLING_RATE
from xopd.families import (  # the families' own input builder and weight-key map, re-exported for the tests
    FAMILIES,
    HOP_LENGTH,
    audio_token_count,
    num_feature_frames,
    omni_thinker_inputs,
)
from xopd.zoo import FIXTURE_SUBDIRS as SUBDIRS

if TYPE_CHECKING:  # heavy imports stay lazy so that importing xopd.zoo stays cheap
    from transformers import PreTrainedTokenizerFast, WhisperFeatureExtractor

__all__ = [
    "HOP_LENGTH",
    "SAMPLING_RATE",
    "SUBDIRS",
    "audio_token_count",
    "build_all",
    "num_feature_frames",
    "omni_thinker_inputs",
]

SEED = 0
NUM_MEL_BINS = 80

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"
IMAGE_TOKEN, VIDEO_TOKEN = "<|IMAGE|>", "<|VIDEO|>"
VISION_BOS, VISION_EOS = "<|vision_bos|>", "<|vision_eos|>"
# Same relative order as Qwen2.5-Omni's added tokens (151643 <|endoftext|> ... 151656 <|VIDEO|>).
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    AUDIO_TOKEN,
    AUDIO_BOS,
    AUDIO_EOS,
    VISION_BOS,
    VISION_EOS,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
)
# Named so that ``tokenizer.audio_token`` etc. exist: Qwen2AudioProcessor and Qwen2_5OmniProcessor read them.
NAMED_SPECIAL_TOKENS: dict[str, str] = {
    "audio_token": AUDIO_TOKEN,
    "audio_bos_token": AUDIO_BOS,
    "audio_eos_token": AUDIO_EOS,
    "image_token": IMAGE_TOKEN,
    "video_token": VIDEO_TOKEN,
    "vision_bos_token": VISION_BOS,
    "vision_eos_token": VISION_EOS,
}

# Qwen2's pre-tokenizer: digits are split one by one, which matters for arithmetic prompts.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML. Content is a string or a list of parts; an audio part becomes <|audio_bos|><|AUDIO|><|audio_eos|>,
# which the processors then expand to one <|AUDIO|> per audio embedding.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}"
    "{{- '<|audio_bos|><|AUDIO|><|audio_eos|>' -}}"
    "{%- elif part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_bos|><|IMAGE|><|vision_eos|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_bos|><|VIDEO|><|vision_eos|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# The one text-model shape shared by teacher and students (head_dim = 16).
TEXT_DIMS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "use_sliding_window": False,
    "tie_word_embeddings": False,  # like Qwen2-7B / Qwen2-Audio: a separate lm_head we can copy
}
ROPE_THETA = 1_000_000.0
# Qwen2.5-Omni's [16, 24, 24] (head_dim 128) scaled to head_dim 16. With text-only positions the three
# M-RoPE streams are equal, so this is plain RoPE and the thinker matches the teacher on text.
MROPE_SECTION = [2, 3, 3]

AUDIO_ENCODER_DIMS: dict[str, Any] = {
    "num_mel_bins": NUM_MEL_BINS,
    "d_model": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "max_source_positions": 1500,  # 3000 mel frames = the standard 30 s Whisper window
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# --------------------------------------------------------------------------------------------------- corpus


_NAMES = "Tom Anna Ben Maria Sam Lily Omar Mei Lucas Sara Noah Emma Ravi Chen Jack Zoe Leo Nina Ivan Grace"
_NAMES = _NAMES.split()
_ITEMS = (
    "apples oranges books pencils marbles cookies stickers coins cards shells balloons candies flowers "
    "stamps toys cupcakes bananas crayons buttons eggs lemons cherries peaches notebooks rulers bottles"
).split()
_PLACES = (
    "school park library market station museum garden bakery hospital river bridge castle airport harbor "
    "village farm zoo beach"
).split()
_ANIMALS = (
    "dog cat bird fish horse cow sheep rabbit lion tiger elephant monkey snake duck penguin giraffe zebra"
).split()
_COLORS = "red blue green yellow black white orange purple brown pink".split()
_DIRECTIONS = "north south east west".split()
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
_ADJECTIVES = (
    "small large happy quiet bright heavy friendly clever sleepy hungry tiny gentle famous strange"
).split()
_VERBS = "jumped walked climbed painted counted carried collected watched visited cleaned".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = "January February March April May June July August September October November December".split()
_FACTS = [
    ("Is the sky blue on a clear day?", "Yes"),
    ("Can a fish breathe under water?", "Yes"),
    ("Is ice colder than boiling water?", "Yes"),
    ("Do cats bark?", "No"),
    ("Is the sun a star?", "Yes"),
    ("Can an elephant fly?", "No"),
    ("Is Monday the day after Sunday?", "Yes"),
    ("Does a week have eight days?", "No"),
    ("Is a square a circle?", "No"),
    ("Do birds have feathers?", "Yes"),
    ("Is snow usually white?", "Yes"),
    ("Can a rock swim?", "No"),
]
_PREAMBLES = [
    "You are a helpful assistant.",
    "Please answer the question.",
    "Listen to the audio and answer the question.",
    "Think step by step, then give the final answer.",
    "Answer with a single number.",
    "Answer yes or no.",
    "Let's think step by step.",
    "First, read the question carefully.",
    "The user asks a question and the assistant answers it.",
    "Transcribe the speech and then solve the problem.",
]


def build_corpus(num_each: int = 120, seed: int = SEED) -> list[str]:
    """A small deterministic English corpus: word problems, yes/no questions, directions, short answers."""
    rng = random.Random(seed)
    out: list[str] = list(_PREAMBLES)
    for _ in range(num_each):
        name, other = rng.sample(_NAMES, 2)
        item, place, animal = rng.choice(_ITEMS), rng.choice(_PLACES), rng.choice(_ANIMALS)
        a, b = rng.randint(2, 60), rng.randint(1, 40)
        c, d = rng.randint(2, 9), rng.randint(2, 9)
        out += [
            f"{name} has {a} {item}. {name} buys {b} more {item} at the {place}. "
            f"How many {item} does {name} have now? The answer is {a + b}.",
            f"{name} had {a + b} {item} and gave {b} to {other}. How many {item} are left? "
            f"{a + b} minus {b} equals {a}. The answer is {a}.",
            f"There are {c} boxes with {d} {item} in each box. How many {item} are there in total? "
            f"{c} times {d} is {c * d}, so the answer is {c * d}.",
            f"{name} reads {c} pages every day for {d} days. How many pages does {name} read? "
            f"The answer is {c * d}.",
            f"Is {a} greater than {b}? {'Yes' if a > b else 'No'}, "
            f"{a} is {'greater' if a > b else 'not greater'} than {b}.",
            f"Is {c * d} an even number? {'Yes' if c * d % 2 == 0 else 'No'}.",
            f"Is the {animal} {rng.choice(_COLORS)}? I think the answer is {rng.choice(['yes', 'no'])}.",
            f"Start at the {place}. Walk {c} blocks {rng.choice(_DIRECTIONS)}, turn left, then walk "
            f"{d} blocks {rng.choice(_DIRECTIONS)}. Turn right at the {rng.choice(_PLACES)}. "
            "Which way are you facing now?",
            f"Go straight for {_NUMBER_WORDS[c]} steps, turn around, and walk back {_NUMBER_WORDS[d]} steps. "
            f"Are you back at the start? {'Yes' if c == d else 'No'}.",
            f"{other} saw {_NUMBER_WORDS[c]} {animal}s near the {place} and {_NUMBER_WORDS[d]} more by the "
            f"{rng.choice(_PLACES)}. The answer is {c + d}.",
            f"user: What is {a} plus {b}? assistant: {a} plus {b} is {a + b}. The answer is {a + b}.",
            f"On {rng.choice(_DAYS)} in {rng.choice(_MONTHS)}, the {rng.choice(_ADJECTIVES)} {animal} "
            f"{rng.choice(_VERBS)} to the {rng.choice(_ADJECTIVES)} {place}.",
            f"{name} {rng.choice(_VERBS)} {_NUMBER_WORDS[c]} {rng.choice(_ADJECTIVES)} {item} yesterday. "
            f"Therefore, the total is {c}.",
        ]
        question, answer = rng.choice(_FACTS)
        out.append(f"{rng.choice(_PREAMBLES)} {question} {answer}.")
    return out


# ------------------------------------------------------------------------------------------------ tokenizer


def build_tokenizer(out_dir: str | Path, vocab_size: int = 1000, seed: int = SEED) -> PreTrainedTokenizerFast:
    """Train the shared byte-level BPE tokenizer, save it to ``out_dir`` and return it.

    The result is a ``Qwen2Tokenizer`` (a ``PreTrainedTokenizerFast``): for a directory whose ``config.json``
    says qwen2 / qwen2_audio, AutoTokenizer picks that class whatever ``tokenizer_class`` says, so this way
    every fixture directory loads the same class. ``vocab_size`` counts the special tokens, which take the
    last ids (as ``<|endoftext|>`` = 151643 does in Qwen).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer

    # Train with exactly Qwen2Tokenizer's pipeline (NFC, Qwen2 regex, byte level, no prefix space), so that
    # the vocabulary and merges mean the same thing once Qwen2Tokenizer rebuilds the pipeline around them.
    backend = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        special_tokens=[],
    )
    backend.train_from_iterator(build_corpus(seed=seed), trainer=trainer)
    bpe = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = dict(bpe["vocab"])
    if len(vocab) != vocab_size - len(SPECIAL_TOKENS):
        raise RuntimeError(f"corpus too small: BPE stopped at {len(vocab)} tokens")
    vocab.update({token: len(vocab) + i for i, token in enumerate(SPECIAL_TOKENS)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,  # instruct-model convention: the end of a turn ends generation
        pad_token=ENDOFTEXT,
        extra_special_tokens=NAMED_SPECIAL_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=TEXT_DIMS["max_position_embeddings"],
        padding_side="left",  # decoder-only batched generation
    )
    # Mark all of them special (never split, dropped by skip_special_tokens); they keep their vocab ids.
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def _copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy a saved tokenizer verbatim.

    Why not ``from_pretrained`` + ``save_pretrained``: transformers 5 then adds load-time kwargs
    (``is_local``, ``local_files_only``, ...) to ``tokenizer_config.json``, and the copies would differ.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, dst / name)


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Ids of the fixture special tokens, by token string."""
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


# --------------------------------------------------------------------------------------------------- models


def padded_vocab_size(n: int, multiple_of: int) -> int:
    """``n`` rounded up to a multiple of ``multiple_of``, as real checkpoints do (Qwen2: 151665 -> 152064)."""
    return n if multiple_of <= 1 else math.ceil(n / multiple_of) * multiple_of


def _token_config(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    ids = special_token_ids(tokenizer)
    return {"bos_token_id": ids[ENDOFTEXT], "eos_token_id": ids[IM_END], "pad_token_id": ids[ENDOFTEXT]}


def _generation_config(tokenizer: PreTrainedTokenizerFast) -> Any:
    from transformers import GenerationConfig

    ids = special_token_ids(tokenizer)
    # Greedy by default so that tests are reproducible; either end-of-turn or end-of-text stops.
    return GenerationConfig(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
        do_sample=False,
    )


def build_tiny_teacher(
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    pad_vocab_to_multiple_of: int = 64,
    seed: int = SEED,
) -> Path:
    """A tiny random ``Qwen2ForCausalLM`` text teacher, tokenizer saved beside it. Returns ``out_dir``.

    ``tokenizer_dir``: an existing fixture tokenizer to use; by default one is trained into ``out_dir``.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer = build_tokenizer(out, seed=seed)
    else:
        _copy_tokenizer_files(tokenizer_dir, out)
        tokenizer = AutoTokenizer.from_pretrained(str(out))

    config = Qwen2Config(
        vocab_size=padded_vocab_size(len(tokenizer), pad_vocab_to_multiple_of),
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        **TEXT_DIMS,
        **_token_config(tokenizer),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(str(out))
    return out


def _load_teacher(teacher_dir: str | Path | None, scratch: Path) -> tuple[Path, Any, PreTrainedTokenizerFast]:
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    if teacher_dir is None:  # the default teacher is deterministic, so building it here gives the same one
        teacher_dir = build_tiny_teacher(scratch / "teacher")
    teacher = Qwen2ForCausalLM.from_pretrained(str(teacher_dir), dtype="float32").eval()
    return Path(teacher_dir), teacher, AutoTokenizer.from_pretrained(str(teacher_dir))


def _whisper_feature_extractor(num_mel_bins: int = NUM_MEL_BINS) -> WhisperFeatureExtractor:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=SAMPLING_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=30,
        n_fft=400,
    )


def build_tiny_qwen2_audio(
    out_dir: str | Path,
    teacher_dir: str | Path | None = None,
    seed: int = SEED + 1,
) -> Path:
    """A tiny ``Qwen2AudioForConditionalGeneration`` whose language model is a copy of the teacher's.

    Saves the model, a ``Qwen2AudioProcessor`` (Whisper features with 80 mel bins + the teacher's tokenizer +
    ChatML template) and the generation config to ``out_dir``, which it returns.
    """
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        teacher_dir, teacher, tokenizer = _load_teacher(teacher_dir, Path(scratch))
        text_config = teacher.config.to_dict()
        for key in ("_name_or_path", "architectures"):  # a build path in config.json would break determinism
            text_config.pop(key, None)
        config = Qwen2AudioConfig(
            audio_config={"model_type": "qwen2_audio_encoder", **AUDIO_ENCODER_DIMS},
            text_config=text_config,
            audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        )
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config).eval()
        # The student's LM *is* the teacher: text-only logits must match exactly.
        model.model.language_model.load_state_dict(teacher.model.state_dict())
        model.lm_head.load_state_dict(teacher.lm_head.state_dict())
        model.generation_config = _generation_config(tokenizer)

        processor = Qwen2AudioProcessor(
            feature_extractor=_whisper_feature_extractor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
        )
        model.save_pretrained(str(out))
        _resave_in_qwen2_audio_checkpoint_layout(model, out)
        processor.save_pretrained(str(out))
        # Byte-identical to the teacher's tokenizer files; processor_config.json names the processor class.
        _copy_tokenizer_files(teacher_dir, out)
    return out


def qwen2_audio_checkpoint_key(module_key: str) -> str:
    """``model.language_model.layers.0...`` -> ``language_model.model.layers.0...`` (the released layout: the
    qwen2_audio family's ``export_key``); a module key it does not rename is a KeyError."""
    key = FAMILIES["qwen2_audio"].export_key(module_key)  # type: ignore[misc]
    if key == module_key:
        raise KeyError(f"unexpected Qwen2-Audio parameter {module_key!r}")
    return key


def _resave_in_qwen2_audio_checkpoint_layout(model: Any, out: Path) -> None:
    """Rewrite ``model.safetensors`` with the key names of the real Qwen2-Audio checkpoints.

    Why: saving a freshly built Qwen2AudioForConditionalGeneration, transformers 5 reverses *both* of its
    load-time renamings (``qwen2_audio`` and ``Qwen2AudioModel``) and writes ``language_model.model.model.*``,
    a layout no released checkpoint has. transformers reloads either layout; other loaders (vLLM, scripts
    that read the safetensors directly) expect the released one.
    """
    from safetensors.torch import save_file

    if (out / "model.safetensors.index.json").exists():
        raise RuntimeError("tiny Qwen2-Audio fixture unexpectedly sharded")
    state = {qwen2_audio_checkpoint_key(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def build_tiny_qwen2_5_omni_thinker(
    out_dir: str | Path,
    teacher_dir: str | Path | None = None,
    seed: int = SEED + 2,
) -> Path:
    """A tiny ``Qwen2_5OmniThinkerForConditionalGeneration`` (audio + vision towers) with the teacher's LM.

    Saves the model, tokenizer, ``WhisperFeatureExtractor`` (``preprocessor_config.json``) and generation
    config. No ``Qwen2_5OmniProcessor``: it needs torchvision for its video processor. Build inputs with
    :func:`omni_thinker_inputs`, which reproduces the processor's text + audio path.
    """
    import torch
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        teacher_dir, teacher, tokenizer = _load_teacher(teacher_dir, Path(scratch))
        ids = special_token_ids(tokenizer)
        hidden = teacher.config.hidden_size
        config = Qwen2_5OmniThinkerConfig(
            audio_config={**AUDIO_ENCODER_DIMS, "n_window": 100, "output_dim": hidden},
            vision_config={
                "depth": 1,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": hidden,
                "fullatt_block_indexes": [0],
            },
            text_config={
                **TEXT_DIMS,
                "vocab_size": teacher.config.vocab_size,
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": ROPE_THETA,
                    "mrope_section": MROPE_SECTION,
                },
                **_token_config(tokenizer),
            },
            audio_token_index=ids[AUDIO_TOKEN],
            image_token_index=ids[IMAGE_TOKEN],
            video_token_index=ids[VIDEO_TOKEN],
            audio_start_token_id=ids[AUDIO_BOS],
            audio_end_token_id=ids[AUDIO_EOS],
            vision_start_token_id=ids[VISION_BOS],
            vision_end_token_id=ids[VISION_EOS],
            user_token_id=tokenizer.convert_tokens_to_ids("user"),
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(config).eval()
        model.model.load_state_dict(teacher.model.state_dict())
        model.lm_head.load_state_dict(teacher.lm_head.state_dict())
        model.generation_config = _generation_config(tokenizer)

        model.save_pretrained(str(out))
        _copy_tokenizer_files(teacher_dir, out)
        _whisper_feature_extractor().save_pretrained(str(out))
    return out


def build_all(out_dir: str | Path) -> dict[str, Path]:
    """Build every fixture under ``out_dir`` (see ``SUBDIRS``); returns ``{key: directory}``."""
    root = Path(out_dir)
    paths = {key: root / sub for key, sub in SUBDIRS.items()}
    build_tokenizer(paths["tokenizer"])
    build_tiny_teacher(paths["teacher"], tokenizer_dir=paths["tokenizer"])
    build_tiny_qwen2_audio(paths["qwen2_audio"], teacher_dir=paths["teacher"])
    build_tiny_qwen2_5_omni_thinker(paths["qwen2_5_omni_thinker"], teacher_dir=paths["teacher"])
    return paths
