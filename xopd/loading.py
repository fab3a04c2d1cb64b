"""Load models by zoo name, Hugging Face id or local path, and fail with a message a person can act on.

A checkpoint's ``model_type`` selects its row of :data:`xopd.families.FAMILIES` -- the registry training uses
too -- which names the transformers class that holds its speech-to-text path (for omni models: the *thinker*,
which reads audio and writes text). Users with a hub load ``Qwen/Qwen2-Audio-7B-Instruct`` or
``Qwen/Qwen2.5-Omni-7B`` the same way the tests load the zoo's ``xopd-speech-smollm2``; a refused family
(Voxtral) fails here with the registry's one message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from xopd.families import ModelLoadError, speech_families, speech_family
from xopd.offline import OfflineError, check_online
from xopd.zoo import ZOO, resolve

__all__ = [
    "ModelLoadError",
    "ModelOfflineError",
    "checked_from_pretrained",
    "eos_ids_of",
    "load_speech_lm",
    "load_text_lm",
    "resolve_config",
    "speech_family",
]


class ModelOfflineError(ModelLoadError, OfflineError):
    """A hub model id was asked for while ``XOPD_OFFLINE`` is set (caught as either parent)."""


def eos_ids_of(generation_config: Any, tokenizer: Any) -> list[int]:
    """Every end-of-sequence id: all of generation_config's (chat models list end-of-turn *and* end-of-text)
    plus the tokenizer's (TRL PRs #1814/#2142: stopping on one of them only runs past the turn's end)."""
    ids: list[int] = []
    raw = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for value in (raw if isinstance(raw, (list, tuple)) else [raw]) + [
        getattr(tokenizer, "eos_token_id", None)
    ]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    return ids


def _check_hub_online(name: str, path: str) -> None:
    """Before ``from_pretrained(path)``: a path that is not on disk is a hub id, which offline is refused."""
    if Path(path).expanduser().exists():
        return
    try:
        check_online(
            f"model {name!r} from the Hugging Face hub", how="pass a zoo name or a local checkpoint directory"
        )
    except OfflineError as exc:
        raise ModelOfflineError(
            f"model {name!r} could not be found: it is not a zoo name ({', '.join(sorted(ZOO))}), "
            f"not a local directory; {exc}"
        ) from None


def resolve_config(name_or_path: str, trust_remote_code: bool):
    """Resolve and read a config, turning the four ways this fails into one clear message each."""
    path = resolve(name_or_path)
    local = Path(path).expanduser()
    looks_local = local.exists() or path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not local.exists():
        raise ModelLoadError(
            f"model {name_or_path!r}: no such directory. Pass a zoo name ({', '.join(sorted(ZOO))}), "
            "a Hugging Face id, or a local checkpoint directory."
        )
    if local.is_dir():
        cfg_file = local / "config.json"
        if not cfg_file.exists():
            raise ModelLoadError(f"model {name_or_path!r}: {local} has no config.json; it is not a checkpoint directory")
        try:
            json.loads(cfg_file.read_text())
        except ValueError as exc:
            raise ModelLoadError(f"model {name_or_path!r}: {cfg_file} is not valid JSON ({exc})") from exc
    _check_hub_online(name_or_path, path)
    try:
        return path, AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(
            f"model {name_or_path!r} could not be found: it is not a zoo name ({', '.join(sorted(ZOO))}), "
            f"not a local directory, and the Hugging Face hub did not provide it ({exc.__class__.__name__}: {exc})"
        ) from exc
    except ValueError as exc:
        hint = "" if trust_remote_code else " If it ships its own code, pass trust_remote_code=True."
        raise ModelLoadError(f"model {name_or_path!r}: unreadable config ({exc}).{hint}") from exc


def checked_from_pretrained(cls, path: str, name: str, **kwargs):
    _check_hub_online(name, path)
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as exc:  # safetensors, tokenizers, torch: each has its own error type for a bad file
        raise ModelLoadError(f"model {name!r}: loading weights from {path} failed: {exc}") from exc


def load_text_lm(
    name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str | None = None, trust_remote_code: bool = False
):
    """A causal LM and its tokenizer (a text teacher, or the LLM of a cascade)."""
    path, config = resolve_config(name_or_path, trust_remote_code)
    if speech_family(config) is not None:
        raise ModelLoadError(
            f"model {name_or_path!r} is a speech LLM ({config.model_type}); load it with load_speech_lm, "
            "or pass its text LLM as the teacher"
        )
    model = checked_from_pretrained(AutoModelForCausalLM, path, name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = checked_from_pretrained(AutoTokenizer, path, name_or_path, trust_remote_code=trust_remote_code)
    if device:
        model.to(device)
    return model.eval(), tokenizer


def load_speech_lm(
    name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str | None = None, trust_remote_code: bool = False
):
    """A speech LLM (its speech-to-text part) and its processor; refuses text-only checkpoints."""
    path, config = resolve_config(name_or_path, trust_remote_code)
    family = speech_family(config)
    if family is None:
        arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise ModelLoadError(
            f"model {name_or_path!r} ({arch}) has no audio encoder, so it cannot be a speech student. "
            f"Speech families: {', '.join(speech_families())}; a text LLM can serve as the teacher, "
            "or as the LLM of a cascade ('cascade:<asr>+<llm>')."
        )
    model = checked_from_pretrained(
        family.model_cls(), path, name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
    )
    processor = checked_from_pretrained(AutoProcessor, path, name_or_path, trust_remote_code=trust_remote_code)
    if device:
        model.to(device)
    return model.eval(), processor
