"""Align the demo student's audio path: it hears a spoken prompt and must say what was said, the LLM frozen.

    python -m xopd.world.align --out artifacts/world/align \\
        --llm-adapter artifacts/world/teacher/step-000100 --batch-size 8 --lr 2e-3 --max-steps 1500 \\
        --max-minutes 100 --threads 1

The demo student (``xopd-demo-student``) is the zoo's assembled speech LLM (``xopd-speech-smollm2``: Whisper
tiny.en encoder + linear projector + SmolLM2-135M-Instruct, Qwen2-Audio layout) whose LLM is replaced by a
*weaker relative of the teacher*: SmolLM2 with an early LoRA checkpoint of the teacher-tuning run merged in
(``--llm-adapter``; ``none`` keeps plain SmolLM2). Its projector starts untrained; this script trains it.

Objective (content alignment, no answers): the user turn is ``[audio] + instruction``; the target is a
function of the text that was spoken (``task.render_spoken(item)``), tokenized and followed by the chat
end-of-turn; the loss is the mean cross-entropy over those target tokens. The instruction and its target
vary per batch slot (:mod:`xopd.world.objectives`: transcribe, the last word, the first words, in capitals,
was a word heard...), so the instruction, not the audio, decides what to do; ``--objectives transcribe`` is
the single-instruction objective of the v2 run, whose student said spoken questions back instead of
answering them. Items are the *train* split of ``--tasks``, from
both parts of :mod:`xopd.world.parts` by default: alignment only ever reads questions, never answers, so
it leaks nothing about what the teacher was tuned on or what distillation will teach (``--parts distill``
restricts it if one wants the student to never have heard the tuning questions at all). Each draw speaks its
item in a voice picked from ``--voices`` by a hash of (seed, step, slot); ``flite-kal`` is held out (refused
in ``--voices``) and, with ``hibari``, is what validation listens to.

What trains: the projector only (``multi_modal_projector.*``), or with ``--encoder-lora R`` also a rank-R LoRA
on the encoder's attention and MLP projections (``--init-trainable`` seeds it with a projector-only run's
projector). The LLM (embeddings, layers, lm_head) never gets a gradient. ``--audio-norm R`` holds the
projected frames' mean norm at R times the text embeddings' (:func:`hold_audio_norm`): a free projector's
frames grow far above the text's scale and the frozen LLM then reads the audio and not the instruction.

How a step runs: the encoder is frozen, so each clip's encoder states (real frames only) are computed once
and kept on disk by :class:`xopd.world.encoder_cache.EncoderCache`; a step reads them, applies the projector,
scatters the projected frames into the ``<|AUDIO|>`` placeholder rows of the text embeddings
(:func:`embed_with_audio`, the ``masked_scatter`` Qwen2-Audio's own forward does) and runs the language
model on ``inputs_embeds``. ``tests/test_world_align.py`` checks that this equals the model's own forward on
the processor's inputs. With ``--encoder-lora`` the cache is bypassed and the encoder runs every step.

Outputs under ``--out``: ``step-NNNNNN/trainable.safetensors`` (projector [+ encoder LoRA]), ``state.pt``
(optimizer, step, RNG, data position: rerunning the same command continues exactly), ``eval.jsonl`` (per
voice: repeat-WER by greedy decoding under the transcription instruction and its teacher-forced loss; and the
validation questions asked as evaluation asks them, the task's own instruction beside the clip: accuracy and
the share of responses that only restate the question), ``command.txt``, and after the
last step ``student/``: the full student (merged LLM + trained projector) as a Qwen2-Audio model folder.
``--prefill-only`` renders and encodes every clip the remaining steps will draw, then exits (resumable); run
with the same arguments beside the training process, it keeps ahead of it (a clip costs ~0.7 s of Whisper
encoding on one core, plus TTS: ~0.15 s flite, ~2 s hibari), so training steps only read the disk cache.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from evalsuite.run import judge
from evalsuite.speech import parse_variants, render_array
from evalsuite.tasks import DEFAULT_MIX, load_task
from evalsuite.textnorm import corpus_wer
from xopd.loading import load_text_lm
from xopd.models import export_pretrained, load_adapter, resolve_model_name
from xopd.paths import atomic_dir, atomic_write_text
from xopd.prompting import TRANSCRIBE_INSTRUCTION
from xopd.world.cli import add_run_args, parser
from xopd.world.encoder_cache import EncoderCache, audio_features, encode_features
from xopd.world.objectives import DEFAULT_OBJECTIVES, objective_for, parse_objectives
from xopd.world.parts import PARTS, items_of_part
from xopd.world.respond_pool import DEFAULT_RESPOND_FROM, respond_requests
from xopd.world.tune_teacher import (
    Sampler,
    collate,  # one right-padded (prompt, target) collation for both recipes
)

REPEAT_PROMPT = TRANSCRIBE_INSTRUCTION  # the words `xopd-eval perception` and `forgetting` ask with
HELD_OUT_VOICES = ("flite-kal",)  # never trained on: validation only
DEFAULT_VOICES = "hibari,hibari-slow,hibari-fast,flite-slt,flite-rms,flite-awb,clean"
ENCODER_LORA_TARGETS = r"layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
# Changing any of these changes the run: a resume with different values is refused.
RUN_KEYS = ("base", "llm", "llm_adapter", "tasks", "parts", "voices", "items_per_task", "seed", "lr",
            "warmup", "batch_size", "weight_decay", "grad_clip", "encoder_lora", "cache_dtype", "init_trainable",
            "objectives", "respond_from", "respond_per_dataset", "respond_voices", "respond_weight", "respond_llm",
            "respond_formats", "audio_norm", "respond_content", "ctc_weight")
DEFAULT_RESPOND_VOICES = "flite-slt,flite-rms,flite-awb,clean"  # fast to render: the requests are new clips
# what a run saved before a key existed trained on
LEGACY_RUN_KEYS = {"objectives": "transcribe", "respond_from": "none", "respond_per_dataset": 150,
                   "respond_voices": DEFAULT_RESPOND_VOICES, "respond_weight": 1.0, "respond_llm": "student",
                   "respond_formats": "none", "audio_norm": 0.0, "respond_content": 0.0, "ctc_weight": 0.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:

    p = parser("xopd.world.align", __doc__)
    p.add_argument("--out", required=True, help="run folder (checkpoints, state.pt, eval.jsonl)")
    p.add_argument("--base", default="xopd-speech-smollm2",
                   help="speech LLM to align (zoo name, path, fixture:<key>)")
    p.add_argument("--llm", default="smollm2-135m-instruct", help="text LLM the --llm-adapter was trained on")
    p.add_argument("--llm-adapter", default="none",
                   help="peft LoRA dir merged into --llm, which then replaces the base's LLM; 'none': keep")
    p.add_argument("--tasks", default=",".join(DEFAULT_MIX), help="comma-separated task names (train split)")
    p.add_argument("--parts", default="tune,distill", help="parts of the train split (xopd.world.parts)")
    p.add_argument("--voices", default=DEFAULT_VOICES, help="training voices (evalsuite.speech variants)")
    p.add_argument("--objectives", default=DEFAULT_OBJECTIVES,
                   help="content objectives drawn per batch slot (xopd.world.objectives; repeat a name to "
                        "weight it)")
    p.add_argument("--respond-from", default=DEFAULT_RESPOND_FROM,
                   help="reasoning-gym generators outside the mix whose spoken requests train behaviour: the "
                        "target is the LLM's own response to the typed request (xopd.world.respond_pool); none: off")
    p.add_argument("--respond-per-dataset", type=int, default=150, help="requests per --respond-from generator")
    p.add_argument("--respond-voices", default=DEFAULT_RESPOND_VOICES, help="voices of the requests")
    p.add_argument("--respond-weight", type=float, default=1.0,
                   help="sampling weight of each --respond-from generator (each mix task weighs 1)")
    p.add_argument("--respond-llm", default="student",
                   help="whose typed response is a request's target: 'student' (its own LLM) or a text LLM sharing "
                        "its vocabulary (zoo name or path), for a student LLM that no longer responds but answers")
    p.add_argument("--respond-formats", default="none", choices=("none", "mix"),
                   help="'mix': requests whose answer is a number, yes/no or one word are asked in the mix's own "
                        "answer format (xopd/world/respond_pool.py FORMATS), as evaluation asks")
    p.add_argument("--audio-norm", type=float, default=0.0,
                   help="hold the projected frames' mean L2 norm at this multiple of the LLM's mean input-embedding "
                        "norm (the projector is rescaled at the start and after every step); 0: free. Free, the "
                        "v2 projector's frames grew to 17x the text's and drowned the instruction (align.md)")
    p.add_argument("--respond-content", type=float, default=0.0,
                   help="share of request slots that take a content objective on the request's own words instead "
                        "of its response: the same audio is then sometimes said back, sometimes answered, so the "
                        "instruction, not the kind of audio, decides (without it, mix audio is only ever said back)")
    p.add_argument("--ctc-weight", type=float, default=0.0,
                   help="weight of a CTC loss that reads each projected frame through the LLM's own (tied) "
                        "output embeddings as a token, blank logit 0, against the clip's spoken tokens: it asks "
                        "every frame to look like the embedding of the token being said (ctc_loss); 0: off. At a "
                        "held --audio-norm its blank cannot win (v10 in reports/demo/align.md)")
    p.add_argument("--eval-voices", default="hibari,flite-kal", help="validation voices (seen, held out)")
    p.add_argument("--items-per-task", type=int, default=0, help="use only this many items per task (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps, then constant lr")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm (0: off)")
    p.add_argument("--encoder-lora", type=int, default=0,
                   help="rank of a LoRA on the encoder (0: projector only)")
    p.add_argument("--encoder-lora-alpha", type=int, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--init-trainable", default=None,
                   help="start from an earlier run's step-NNNNNN/trainable.safetensors (e.g. a projector-only "
                        "run continued with --encoder-lora); a fresh LoRA stays as initialised")
    p.add_argument("--cache-dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--cache-dir", default=None, help="encoder cache root (default $XOPD_HOME/encoder-cache)")
    p.add_argument("--autocast", default="none", choices=("none", "bf16"),
                   help="CPU bf16 autocast for the training forward/backward (fast where the CPU has AMX); "
                        "validation stays float32")
    add_run_args(p, max_steps=1500, save_every=50, eval_every=250, eval_limit=8,
                 eval_limit_help="validation items per task (per eval voice)", eval_batch_size=8,
                 eval_max_new_tokens=128)
    p.add_argument("--prefill-only", action="store_true",
                   help="render + encode the clips of the remaining steps and of validation, then exit")
    p.add_argument("--no-export", action="store_true", help="do not write student/ after the last step")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.llm_adapter.lower() in ("none", ""):
        args.llm_adapter = None
    return args


# --------------------------------------------------------------------------------------------- student


def build_student(base: str, llm: str | None = None, llm_adapter: str | None = None) -> Any:
    """The student as a :class:`xopd.models.ModelAdapter` (float32, CPU, eval mode): ``base`` with its LLM
    replaced by ``llm`` + the LoRA ``llm_adapter`` merged (when given). The base's in-memory encoder cache is
    removed: the disk cache replaces it."""

    adapter = load_adapter(base, dtype="float32", device="cpu")
    if adapter.family.name != "qwen2_audio":
        raise SystemExit(f"{base}: alignment supports Qwen2-Audio-layout models, got {adapter.family.name}")
    tower = adapter.core.get_submodule(adapter.family.audio_encoder)
    if adapter.encoder_cache is not None:
        tower.__dict__.pop("forward", None)  # FrozenEncoderCache patched the instance: back to the class's
        adapter.encoder_cache = None
    if llm_adapter:
        merge_llm_into(adapter.core, llm or "smollm2-135m-instruct", llm_adapter)
    return adapter


def merge_llm_into(core: Any, llm: str, lora_dir: str) -> None:
    """Replace ``core``'s language model + lm_head by ``llm`` with the peft LoRA in ``lora_dir`` merged.

    The speech model's vocabulary is the LLM's plus the audio tokens and padding: the LLM's rows are copied
    into the first rows, the rest (audio tokens, padding) stay as they are. Every LLM weight must find its
    place; only Qwen2's q/k/v biases may be missing from a LLaMA source (they stay zero, see assemble.py)."""
    from peft import PeftModel  # late: peft is slow to import


    if not (Path(lora_dir) / "adapter_config.json").is_file():
        raise SystemExit(f"--llm-adapter {lora_dir}: no adapter_config.json (expected a peft LoRA folder)")
    text, _ = load_text_lm(resolve_model_name(llm), dtype=torch.float32, device="cpu")
    merged = PeftModel.from_pretrained(text, lora_dir).merge_and_unload()
    src = merged.state_dict()
    if "lm_head.weight" not in src:
        src["lm_head.weight"] = src["model.embed_tokens.weight"]
    lm = core.model.language_model
    dst = dict(lm.named_parameters())
    covered = set()
    with torch.no_grad():
        for key, value in src.items():
            if key == "lm_head.weight":
                target, name = core.lm_head.weight, "lm_head.weight"
            elif key.startswith("model.") and key[len("model."):] in dst:
                name = key[len("model."):]
                target = dst[name]
            else:
                raise SystemExit(f"{llm} + {lora_dir}: weight {key!r} has no place in the speech model's LLM")
            if target.shape[1:] != value.shape[1:] or target.shape[0] < value.shape[0]:
                raise SystemExit(f"{key}: {tuple(value.shape)} does not fit {tuple(target.shape)}")
            target[: value.shape[0]].copy_(value)
            covered.add(name)
    missing = [n for n in dst if n not in covered and not re.search(r"\.(q|k|v)_proj\.bias$", n)]
    if missing:
        raise SystemExit(f"{llm} + {lora_dir}: no source for {missing[:5]}")


def setup_trainable(core: Any, encoder_lora: int = 0, alpha: int | None = None, seed: int = 0) -> list[str]:
    """Freeze everything but the projector (and a fresh encoder LoRA when ``encoder_lora`` > 0); returns the
    names of the trainable parameters."""
    core.requires_grad_(False)
    if encoder_lora > 0:
        from peft import LoraConfig, inject_adapter_in_model  # late: peft is slow to import

        torch.manual_seed(seed)  # the LoRA A matrices' initialisation
        cfg = LoraConfig(r=encoder_lora, lora_alpha=alpha or 2 * encoder_lora, lora_dropout=0.0,
                         target_modules=ENCODER_LORA_TARGETS, bias="none")
        inject_adapter_in_model(cfg, core.model.audio_tower)
    names = []
    for name, p in core.named_parameters():
        trainable = name.startswith("model.multi_modal_projector.") or (encoder_lora > 0 and "lora_" in name)
        p.requires_grad_(trainable)
        if trainable:
            names.append(name)
    return names


@torch.no_grad()
def hold_audio_norm(core: Any, audio_states: list[Tensor], ratio: float) -> float:
    """Scale the projector's weight and bias so that its frames' mean L2 norm on ``audio_states`` is ``ratio``
    times the mean norm of the LLM's input-embedding rows; returns the ratio it had before.

    Why: with the LLM frozen, a free projector grows its frames far above the text's scale (the v2 student's:
    55 against 3.2); the residual stream is then the audio, and the instruction beside it is not read
    (reports/demo/align.md). A linear map scaled by c scales every frame by c, so this is exact."""
    linear = core.model.multi_modal_projector.linear
    text = core.get_input_embeddings().weight.float().norm(dim=-1).mean()
    frames = torch.cat([s.detach() for s in audio_states]).to(linear.weight.device, linear.weight.dtype)
    now = core.model.multi_modal_projector(frames).float().norm(dim=-1).mean()
    c = ratio * text / now
    linear.weight.mul_(c.to(linear.weight.dtype))
    linear.bias.mul_(c.to(linear.bias.dtype))
    return float(now / text)


def trainable_state(core: Any) -> dict[str, Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in core.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------------------- prompts


class AudioPrompt:
    """A speech prompt's token ids (the clip, then ``instruction`` beside it, or the clip alone when it is
    empty) around its one ``<|AUDIO|>``, rendered once by the model's own chat template
    (:func:`xopd.prompting.render`, as evaluation renders it); ``ids(n)`` expands the placeholder to ``n``
    audio tokens, as ``Qwen2AudioProcessor`` does."""

    def __init__(self, adapter: Any, instruction: str = REPEAT_PROMPT) -> None:
        from xopd import prompting

        msgs = prompting.messages_for(None, modality=prompting.SPEECH, instruction=instruction)
        r = prompting.render(adapter.tokenizer, msgs, processor=adapter.processor,
                             placeholder=adapter.family.audio_placeholder)
        self.audio_id = int(adapter.core.config.audio_token_id)
        where = [i for i, t in enumerate(r.ids) if t == self.audio_id]
        if len(where) != 1:
            raise ValueError(f"the audio prompt renders {len(where)} audio tokens, expected 1: {r.text!r}")
        self.prefix, self.suffix = r.ids[: where[0]], r.ids[where[0] + 1 :]
        self.messages = msgs

    def ids(self, n_audio: int) -> list[int]:
        return self.prefix + [self.audio_id] * n_audio + self.suffix


class Prompts(dict):
    """instruction -> :class:`AudioPrompt`, rendered on first use."""

    def __init__(self, adapter: Any) -> None:
        super().__init__()
        self.adapter = adapter

    def __missing__(self, instruction: str) -> AudioPrompt:
        self[instruction] = AudioPrompt(self.adapter, instruction)
        return self[instruction]


def target_ids(adapter: Any, text: str) -> list[int]:
    """A target text, tokenized, then the chat end-of-turn (generation_config's first EOS: <|im_end|>)."""
    return list(adapter.tokenizer(text, add_special_tokens=False)["input_ids"]) + [adapter.eos_ids[0]]


# --------------------------------------------------------------------------------------------- forward


def embed_with_audio(core: Any, input_ids: Tensor, audio_states: list[Tensor]) -> Tensor:
    """Text embeddings with the projected audio frames scattered into the ``<|AUDIO|>`` rows, in order:
    what ``Qwen2AudioModel.forward`` builds from ``input_features``, from encoder states instead."""
    embeds = core.get_input_embeddings()(input_ids)
    mask = input_ids == core.config.audio_token_id
    n_tokens, n_frames = int(mask.sum()), sum(int(s.shape[0]) for s in audio_states)
    if n_tokens != n_frames:
        raise ValueError(f"{n_tokens} <|AUDIO|> tokens for {n_frames} audio frames")
    if not audio_states:
        return embeds
    proj = core.model.multi_modal_projector(torch.cat(audio_states, dim=0).to(embeds.device))
    return embeds.masked_scatter(mask.unsqueeze(-1), proj.to(embeds.dtype))


def lm_hidden(core: Any, input_ids: Tensor, attention_mask: Tensor, audio_states: list[Tensor]) -> Tensor:
    """Final hidden states ``[B, L, H]`` of the LLM on text + audio states (lm_head not applied)."""
    embeds = embed_with_audio(core, input_ids, audio_states)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = core.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions)
    return out.last_hidden_state


def repeat_loss(core: Any, ids: Tensor, mask: Tensor, labels: Tensor, audio_states: list[Tensor],
                reduction: str = "mean") -> Tensor:
    """Cross-entropy over the target tokens; the lm_head runs on those positions only."""
    hidden = lm_hidden(core, ids, mask, audio_states)
    targets = labels[:, 1:]
    keep = targets != -100
    logits = core.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction=reduction)


def ctc_loss(core: Any, audio_states: list[Tensor], token_rows: list[list[int]]) -> Tensor:
    """CTC of the projected frames against each clip's spoken tokens, mean over clips of the loss per target
    token. A frame's token logits are its dot products with the LLM's output embeddings (tied to the input
    ones in SmolLM2, so a frame that scores a token high looks like that token's input row); the blank's logit
    is 0, so a frame is blank when it looks like no token. Only the projector gets the gradient."""
    frames = core.model.multi_modal_projector(torch.cat(audio_states).to(core.lm_head.weight.device))
    logits = core.lm_head(frames).float()
    logp = torch.cat([torch.zeros_like(logits[:, :1]), logits], dim=1).log_softmax(-1)  # class 0: blank
    lengths = [int(s.shape[0]) for s in audio_states]
    padded = torch.nn.utils.rnn.pad_sequence(list(logp.split(lengths)))  # [T, B, V + 1]
    targets = torch.tensor([t + 1 for row in token_rows for t in row], dtype=torch.long)
    return torch.nn.functional.ctc_loss(padded, targets, torch.tensor(lengths),
                                        torch.tensor([len(r) for r in token_rows]), blank=0,
                                        reduction="mean", zero_infinity=True)


def typed(text: str, instruction: str) -> str:
    """A request typed as evaluation types a question: the text, a line break, the instruction (if any)."""
    return f"{text}\n{instruction}" if instruction else text


def left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Prompt id rows as a left-padded batch (ids, attention mask), as ``generate`` wants them."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def until_eos(rows: list[list[int]], eos: list[int], keep_eos: bool) -> list[list[int]]:
    """Each generated row up to its first end-of-turn (included when ``keep_eos``); a row without one whole."""
    out = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        out.append(row if cut is None else row[: cut + 1] if keep_eos else row[:cut])
    return out


@torch.no_grad()
def greedy(core: Any, adapter: Any, prompts: AudioPrompt | list[AudioPrompt], audio_states: list[Tensor],
           max_new_tokens: int) -> list[str]:
    """Greedy decoding of a prompt (one for all, or one per clip) for each clip (left-padded batch, generate
    on inputs_embeds)."""
    if isinstance(prompts, AudioPrompt):
        prompts = [prompts] * len(audio_states)
    rows = [p.ids(int(s.shape[0])) for p, s in zip(prompts, audio_states, strict=True)]
    return [adapter.tokenizer.decode(ids, skip_special_tokens=True).strip()
            for ids in greedy_ids(core, adapter, rows, audio_states, max_new_tokens)]


def own_responses(core: Any, adapter: Any, asks: list[tuple[str, str]], max_new_tokens: int) -> list[list[int]]:
    """The ``respond`` objective's targets: the LLM's own greedy response, as token ids, to each (spoken text,
    instruction) typed as evaluation types a question (text, line break, instruction), ending with the
    end-of-turn when it ended within ``max_new_tokens`` (a cut response has none, so it teaches no early
    stop). The ids are used as generated, never re-tokenized."""
    from xopd import prompting

    rows = []
    for text, instruction in asks:
        msgs = prompting.messages_for(typed(text, instruction), modality=prompting.TEXT)
        rows.append(prompting.render(adapter.tokenizer, msgs, processor=adapter.processor,
                                     placeholder=adapter.family.audio_placeholder).ids)
    # an <|AUDIO|> id in a target would take a frame's place in the training row
    return greedy_ids(core, adapter, rows, [], max_new_tokens, keep_eos=True,
                      suppress_tokens=[int(core.config.audio_token_id)])


class TextResponder:
    """Behaviour targets from a text LLM that shares the student's vocabulary (``--respond-llm``): its greedy
    response to the typed request under its own chat template, as token ids (valid student ids, checked)."""

    def __init__(self, name: str, student_tokenizer: Any) -> None:
        self.model, self.tokenizer = load_text_lm(resolve_model_name(name), dtype=torch.float32, device="cpu")
        ours = student_tokenizer.get_vocab()
        differ = [t for t, i in self.tokenizer.get_vocab().items() if ours.get(t) != i]
        if differ:
            raise SystemExit(f"--respond-llm {name}: its vocabulary differs from the student's ({differ[:3]} ...); "
                             "its token ids would mean other tokens to the student")
        eos = self.model.generation_config.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]

    @torch.no_grad()
    def __call__(self, asks: list[tuple[str, str]], max_new_tokens: int) -> list[list[int]]:
        from xopd import prompting

        rows = [prompting.render(self.tokenizer, prompting.messages_for(typed(text, instruction),
                                                                        modality=prompting.TEXT)).ids
                for text, instruction in asks]
        ids, mask = left_pad(rows, self.pad)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, eos_token_id=self.eos, pad_token_id=self.pad)
        return until_eos(out[:, ids.shape[1] :].tolist(), self.eos, keep_eos=True)


def request_targets(responder: Any, requests: dict[str, list[tuple[str, str]]], max_new_tokens: int, path: Path,
                    key: str, batch_size: int = 16) -> dict[str, list[list[int]]]:
    """The own-response target of every request, generated once by ``responder()`` (the responding LLM is frozen,
    so a target never changes) in a fixed order and batching, and kept in ``path``: a resumed run reads the same ids.
    Generating them per step instead cost ~4 s of every 12 s step."""
    asks = [(name, i, req) for name, reqs in requests.items() for i, req in enumerate(reqs)]
    digest = hashlib.sha256(json.dumps([key, max_new_tokens, [a[2] for a in asks]]).encode()).hexdigest()
    if path.exists():
        kept = json.loads(path.read_text())
        if kept.get("digest") == digest:
            return kept["targets"]
        raise SystemExit(f"{path} holds the targets of other requests or another responding LLM; "
                         "a run's requests are fixed by its settings (delete the file only if they changed on purpose)")
    targets: dict[str, list[list[int]]] = {name: [[] for _ in reqs] for name, reqs in requests.items()}
    respond, t0 = responder(), time.time()
    for start in range(0, len(asks), batch_size):
        chunk = asks[start : start + batch_size]
        for (name, i, _), ids in zip(chunk, respond([req for _, _, req in chunk], max_new_tokens)):
            targets[name][i] = ids
        done = start + len(chunk)
        if done == len(asks) or done % (8 * batch_size) == 0:
            print(f"request targets: {done}/{len(asks)} generated ({time.time() - t0:.0f} s)", flush=True)
    atomic_write_text(path, json.dumps({"digest": digest, "respond_llm": key, "targets": targets}))
    return targets


@torch.no_grad()
def greedy_ids(core: Any, adapter: Any, rows: list[list[int]], audio_states: list[Tensor], max_new_tokens: int,
               keep_eos: bool = False, **generate: Any) -> list[list[int]]:
    """Greedy continuations of prompt id rows (left-padded batch, generate on inputs_embeds): the new ids up to
    the first end-of-turn (included when ``keep_eos``)."""
    ids, mask = left_pad(rows, adapter.pad_id)
    embeds = embed_with_audio(core, ids, audio_states)
    out = core.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                        do_sample=False, eos_token_id=adapter.eos_ids, pad_token_id=adapter.pad_id, **generate)
    return until_eos(out.tolist(), adapter.eos_ids, keep_eos)


# --------------------------------------------------------------------------------------------- data


def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def voice_for(voices: list[Any], seed: int, step: int, slot: int) -> Any:
    """The voice of batch slot ``slot`` at ``step``: a pure function of (seed, step, slot): no state."""
    return voices[int(_unit(f"voice:{seed}:{step}:{slot}") * len(voices))]


def train_texts(tasks: list[str], parts: list[str], items_per_task: int, seed: int) -> dict[str, list[str]]:
    """Spoken texts of the train-split items of each task in ``parts`` (questions only: no answer is read)."""

    out: dict[str, list[str]] = {}
    for name in tasks:
        task = load_task(name, split="train")
        items = [it for part in parts for it in items_of_part(task, part)]
        if items_per_task and items_per_task < len(items):
            items = random.Random(f"{seed}:items:{name}").sample(items, items_per_task)
        out[name] = [task.render_spoken(it) for it in items]
    return out


def eval_items(tasks: list[str], limit: int, seed: int) -> list[tuple[Any, Any]]:
    """(task, item) of the validation items: repeat-WER listens to them, the task check asks them."""

    out = []
    for name in tasks:
        task = load_task(name, split="validation", limit=limit, seed=seed)
        out += [(task, it) for it in task.items]
    return out


class Clips:
    """(text, voice) -> audio (the cached TTS render) -> encoder states (the disk cache)."""

    def __init__(self, cache: EncoderCache) -> None:
        self.cache = cache

    def audio(self, text: str, voice: Any) -> np.ndarray:
        return render_array(text, voice)

    def states(self, pairs: list[tuple[str, Any]]) -> list[Tensor]:
        return self.cache.get_many([self.audio(t, v) for t, v in pairs])


# --------------------------------------------------------------------------------------------- checkpoints


def lr_at(step: int, args: argparse.Namespace) -> float:
    return args.lr * min(1.0, step / max(1, args.warmup))


def save(out: Path, step: int, core: Any, optimizer: Any, sampler: Any, cfg: dict[str, Any]) -> None:
    """``step-NNNNNN/trainable.safetensors`` first, then ``state.pt`` naming it, each atomically: a kill at
    any moment leaves the previous complete checkpoint as the one a rerun resumes from."""

    final, tmp = out / f"step-{step:06d}", out / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(core), str(tmp / "trainable.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    state = {"step": step, "checkpoint": final.name, "optimizer": optimizer.state_dict(),
             "torch_rng": torch.get_rng_state(), "data": sampler.state(), "config": cfg}
    torch.save(state, out / "state.pt.tmp")
    os.replace(out / "state.pt.tmp", out / "state.pt")


def load_trainable(core: Any, path: Path, subset: bool = False) -> None:
    """Copy ``path``'s tensors into the trainable parameters: all of them, or (``subset``) those it holds."""
    weights = load_file(str(path))
    params = {n: p for n, p in core.named_parameters() if p.requires_grad}
    extra, missing = set(weights) - set(params), set(params) - set(weights)
    if extra or (missing and not subset) or not weights:
        raise SystemExit(f"{path} holds {sorted(extra | missing)[:5]} that do not fit the model's trainable "
                         "parameters")
    if any(weights[n].shape != params[n].shape for n in weights):
        raise SystemExit(f"{path}: tensor shapes do not fit the model's trainable parameters")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)


def resume(out: Path, core: Any, optimizer: Any, sampler: Any, cfg: dict[str, Any]) -> int:
    path = out / "state.pt"
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)
    was = {k: state["config"].get(k, LEGACY_RUN_KEYS.get(k)) for k in RUN_KEYS}
    changed = {k: (was[k], cfg[k]) for k in RUN_KEYS if was[k] != cfg[k]}
    if changed:
        raise SystemExit(f"{out} holds a run with other settings {changed} (was, now): use a new --out")
    load_trainable(core, out / state["checkpoint"] / "trainable.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    sampler.load(state["data"])
    return int(state["step"])


def export_student(adapter: Any, out_dir: Path, meta: dict[str, Any]) -> Path:
    """The aligned student as a Qwen2-Audio model folder (released key layout, processor, generation config),
    written atomically. An encoder LoRA is merged into the encoder weights first."""
    from peft.tuners.lora import LoraLayer  # late: peft is slow to import


    core = adapter.core
    lora_modules = [(n, m) for n, m in core.named_modules() if isinstance(m, LoraLayer)]
    if lora_modules:  # W + (alpha / r) B A into a fresh model (merge() + unmerge() would not restore W)

        with torch.no_grad():
            merged = {k: v.clone() for k, v in core.state_dict().items() if "lora_" not in k}
            for name, module in lora_modules:
                merged[f"{name}.base_layer.weight"] += module.get_delta_weight("default")
        merged = {k.replace(".base_layer.", "."): v for k, v in merged.items()}
        fresh = type(core)(core.config)
        fresh.load_state_dict(merged)
        adapter = copy.copy(adapter)
        adapter.model = adapter.core = fresh.eval()
    with atomic_dir(out_dir) as tmp:
        export_pretrained(adapter, tmp)
        (tmp / "xopd_world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------------------------- eval


RESPOND_TOKENS = 40  # the respond objective's own-response budget (a cut response ends without end-of-turn)
TASK_CHECK_TOKENS = 32  # the mix's answers are a word or a number; a restated question shows within 32 tokens


def ask_tasks(core: Any, adapter: Any, prompts: Prompts, items: list[tuple[Any, Any]], states: list[Tensor],
              batch_size: int, max_new_tokens: int) -> list[tuple[str, bool, bool, str]]:
    """The task check: each question's clip (``states``, in order) asked as ``xopd-eval gap`` asks it, the
    task's instruction beside it, greedy, scored by :func:`evalsuite.run.judge`; per item (task, correct,
    restates the question, response)."""
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        responses = greedy(core, adapter, [prompts[task.instruction or ""] for task, _ in chunk],
                           states[start : start + batch_size], max_new_tokens)
        for (task, it), resp in zip(chunk, responses, strict=True):
            ext, ok = judge(task, it, resp)
            rows.append((task.name, ok, ext.method == "restates-question", resp))
    return rows


def validate(core: Any, adapter: Any, prompts: Prompts, clips: Clips, val: list[tuple[Any, Any]],
             voices: list[Any], batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    """Per voice: repeat-WER of greedy decodes under the transcription instruction against the spoken text
    (``evalsuite.textnorm.corpus_wer``, overall and per task) and the teacher-forced loss on the target
    tokens; and the task check (:func:`ask_tasks`): accuracy, and the share that restates the question."""

    result: dict[str, Any] = {"wer": {}, "wer_by_task": {}, "loss": {}, "examples": {}, "task_acc": {},
                              "restates": {}, "task_acc_by_task": {}, "task_examples": {}}
    prompt = prompts[REPEAT_PROMPT]
    texts = [task.render_spoken(it) for task, it in val]
    for voice in voices:
        voice_states = clips.states([(text, voice) for text in texts])  # read once for both checks
        rows = ask_tasks(core, adapter, prompts, val, voice_states, batch_size,
                         min(max_new_tokens, TASK_CHECK_TOKENS))
        refs, hyps, nll, ntok = [], [], 0.0, 0
        for start in range(0, len(val), batch_size):
            states = voice_states[start : start + batch_size]
            spoken = texts[start : start + batch_size]
            targets = [target_ids(adapter, text) for text in spoken]
            with torch.no_grad():
                ids, mask, labels = collate([(prompt.ids(int(s.shape[0])), t) for s, t in zip(states, targets)],
                                            adapter.pad_id)
                nll += float(repeat_loss(core, ids, mask, labels, states, reduction="sum"))
                ntok += int((labels != -100).sum())
            hyps += greedy(core, adapter, prompt, states, min(max_new_tokens, max(len(t) for t in targets) + 16))
            refs += spoken
        tasks = [task.name for task, _ in val]
        result["task_acc"][voice.name] = sum(r[1] for r in rows) / max(1, len(rows))
        result["restates"][voice.name] = sum(r[2] for r in rows) / max(1, len(rows))
        result["task_acc_by_task"][voice.name] = {
            t: sum(r[1] for r in rows if r[0] == t) / sum(r[0] == t for r in rows) for t in dict.fromkeys(tasks)}
        result["task_examples"][voice.name] = [r[3] for r in rows[:: max(1, len(rows) // 4)]][:4]
        result["wer"][voice.name] = corpus_wer(refs, hyps)
        result["wer_by_task"][voice.name] = {
            t: corpus_wer([r for r, n in zip(refs, tasks) if n == t], [h for h, n in zip(hyps, tasks) if n == t])
            for t in dict.fromkeys(tasks)
        }
        result["loss"][voice.name] = nll / max(1, ntok)
        result["examples"][voice.name] = [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]]
    return result


def log_eval(out: Path, step: int, result: dict[str, Any], elapsed: float) -> None:
    with open(out / "eval.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **result, "elapsed_s": round(elapsed, 1)}) + "\n")
    parts = " | ".join(f"{v}: WER {result['wer'][v]:.3f} loss {result['loss'][v]:.3f} task acc "
                       f"{result['task_acc'][v]:.3f} restates {result['restates'][v]:.3f}" for v in result["wer"])
    print(f"eval step {step}: {parts}", flush=True)


# --------------------------------------------------------------------------------------------- main


class SlotTargets:
    """A batch slot's (instruction, target ids): a request's kept reply (``own``), except for the
    ``respond_content`` share of request slots, which take a content objective on the request's own words like
    every mix slot does. Drawn by a hash of (seed, step, slot), as the voice and the objective are."""

    def __init__(self, adapter: Any, objectives: list[Any], requests: dict[str, list[tuple[str, str]]],
                 own: dict[str, list[list[int]]], respond_content: float = 0.0, seed: int = 0) -> None:
        self.adapter, self.objectives, self.requests, self.own = adapter, objectives, requests, own
        self.respond_content, self.seed = respond_content, seed

    def __call__(self, name: str, i: int, text: str, other: str, step: int,
                 slot: int) -> tuple[str, list[int]]:
        key = f"{self.seed}:{step}:{slot}"
        if name in self.requests and _unit(f"respond-content:{key}") >= self.respond_content:
            return self.requests[name][i][1], self.own[name][i]
        objective = objective_for(self.objectives, self.seed, step, slot)
        instruction, words = objective.make(text, other, key)
        return instruction, target_ids(self.adapter, words)


def _plan(sampler: Any, step: int, batch_size: int, voices: list[Any], seed: int,
          respond_voices: list[Any] | None = None) -> list[tuple[str, int, Any]]:
    """(task, item, voice) per batch slot; a behaviour request is said by one of ``respond_voices``."""
    return [(name, i, voice_for(respond_voices if name.startswith("respond/") and respond_voices else voices,
                                seed, step, slot))
            for slot, (name, i) in enumerate(sampler.next(batch_size))]


def prefill(clips: Clips, sampler: Any, first_step: int, args: argparse.Namespace, voices: list[Any],
            texts: dict[str, list[str]], val: list[tuple[Any, Any]], eval_voices: list[Any],
            respond_voices: list[Any] | None = None) -> None:
    """Render + encode every clip that steps ``first_step..max_steps`` and validation will read (a copy of
    the sampler is walked, so the real one does not move). Resumable: cached clips are skipped."""

    walk = copy.deepcopy(sampler)
    walk.load(sampler.state())
    pairs: dict[tuple[str, str], Any] = {}
    for task, it in val:
        text = task.render_spoken(it)
        for v in eval_voices:
            pairs.setdefault((text, v.name), v)
    for step in range(first_step, args.max_steps + 1):
        for name, i, v in _plan(walk, step, args.batch_size, voices, args.seed, respond_voices):
            pairs.setdefault((texts[name][i], v.name), v)
    print(f"prefill: {len(pairs)} distinct clips (validation + steps {first_step}..{args.max_steps})",
          flush=True)
    got = clips.cache.fill((clips.audio(t, v) for (t, _), v in pairs.items()), total=len(pairs),
                           progress=not args.no_progress, desc="render + encode")
    print(f"prefill: {got['encoded']} encoded, {got['skipped']} already cached", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train(parse_args(argv), argv)
    return 0


def train(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """The whole run (see the module docstring); returns ``{"adapter", "losses": {step: loss}, "step",
    "cache"}`` (the :class:`EncoderCache`, with its hit and miss counts)."""
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    voices = parse_variants(args.voices)
    objectives = parse_objectives(args.objectives)
    respond_from = [] if args.respond_from.lower() in ("", "none") else [
        n.strip() for n in args.respond_from.split(",") if n.strip()]
    respond_voices = parse_variants(args.respond_voices)
    eval_voices = parse_variants(args.eval_voices)
    leaked = [v.name for v in [*voices, *respond_voices] if v.name in HELD_OUT_VOICES]
    if leaked:
        raise SystemExit(f"--voices {','.join(leaked)}: held out for validation, never trained on")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--parts {args.parts!r}: a comma-separated subset of {', '.join(PARTS)}")
    tasks = [n.strip() for n in args.tasks.split(",") if n.strip()]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if argv is not None:
        with open(out / "command.txt", "a") as f:
            f.write(shlex.join(["python", "-m", "xopd.world.align", *argv]) + "\n")
    cfg = {k: getattr(args, k) for k in RUN_KEYS}
    t_start = time.time()

    adapter = build_student(args.base, args.llm, args.llm_adapter)
    core = adapter.core
    names = setup_trainable(core, args.encoder_lora, args.encoder_lora_alpha, args.seed)
    params = [p for n, p in core.named_parameters() if p.requires_grad]
    llm = f"{args.llm} + {args.llm_adapter}" if args.llm_adapter else "(the base's)"
    what = "projector + encoder LoRA" if args.encoder_lora else "projector"
    print(f"student: {args.base}, LLM {llm}; trainable {sum(p.numel() for p in params):,} parameters in "
          f"{len(names)} tensors ({what})", flush=True)
    cache = EncoderCache(core.model.audio_tower, adapter.feature_extractor, root=args.cache_dir,
                         dtype=args.cache_dtype)
    clips = Clips(cache)
    prompts = Prompts(adapter)
    texts = train_texts(tasks, parts, args.items_per_task, args.seed)
    requests = (respond_requests(respond_from, args.respond_per_dataset, args.seed, args.respond_formats)
                if respond_from else {})
    texts.update({name: [spoken for spoken, _ in reqs] for name, reqs in requests.items()})
    val = eval_items(tasks, args.eval_limit, args.seed)
    sizes = ", ".join(f"{n}={len(v)}" for n, v in texts.items())
    print(f"data (train split, parts {'+'.join(parts)}): {sizes}; voices {','.join(v.name for v in voices)}; "
          f"objectives {args.objectives}; "
          f"validation {len(val)} clips x {','.join(v.name for v in eval_voices)}; encoder cache {cache.dir}",
          flush=True)

    if args.init_trainable:
        load_trainable(core, Path(args.init_trainable), subset=True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    def responder() -> Any:  # loaded only when the request targets are not generated yet
        if args.respond_llm == "student":
            return lambda asks, n: own_responses(core, adapter, asks, n)
        return TextResponder(args.respond_llm, adapter.tokenizer)

    # no weights without requests: rng.choice, as runs from before the requests existed drew
    weights = {n: args.respond_weight if n in requests else 1.0 for n in texts} if requests else None
    sampler = Sampler({n: len(v) for n, v in texts.items()}, args.seed, weights)
    step = resume(out, core, optimizer, sampler, cfg)
    if step:
        print(f"resuming after step {step}", flush=True)
    own = (request_targets(responder, requests, RESPOND_TOKENS, out / "request_targets.json", args.respond_llm)
           if requests and not args.prefill_only else {})
    if args.prefill_only:
        prefill(clips, sampler, step + 1, args, voices, texts, val, eval_voices, respond_voices)
        return {"adapter": adapter, "losses": {}, "step": step, "cache": cache}

    def run_eval(at: int) -> None:
        result = validate(core, adapter, prompts, clips, val, eval_voices, args.eval_batch_size,
                          args.eval_max_new_tokens)
        log_eval(out, at, result, time.time() - t_start)

    if not step and args.audio_norm:  # start at the held scale (an --init-trainable's direction kept)
        was = hold_audio_norm(core, clips.states([(t.render_spoken(it), eval_voices[0]) for t, it in val]),
                              args.audio_norm)
        print(f"--audio-norm {args.audio_norm}: the projector's frames were {was:.2f}x the text embeddings' "
              "norm; rescaled", flush=True)
    if not step and args.eval_every > 0:
        run_eval(0)

    def encoder_states(pairs: list[tuple[str, Any]]) -> list[Tensor]:
        if not args.encoder_lora:
            return clips.states(pairs)
        feats, mask = audio_features(adapter.feature_extractor, [clips.audio(t, v) for t, v in pairs])
        return encode_features(core.model.audio_tower, feats, mask)

    slot_target = SlotTargets(adapter, objectives, requests, own, args.respond_content, args.seed)

    # a speed knob, not a run setting: a run may switch it between resumes
    autocast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if args.autocast == "bf16"
                else contextlib.nullcontext())
    deadline = t_start + args.max_minutes * 60 if args.max_minutes else math.inf
    t0, steps_here, window_loss, window_n, t_data, t_train, saved = time.time(), 0, 0.0, 0, 0.0, 0.0, step
    losses: dict[int, float] = {}
    while step < args.max_steps:
        step += 1
        t_a = time.time()
        plan = _plan(sampler, step, args.batch_size, voices, args.seed, respond_voices)
        pairs = [(texts[name][i], v) for name, i, v in plan]
        states = encoder_states(pairs)
        rows = []
        for slot, ((name, i, _), (text, _), s) in enumerate(zip(plan, pairs, states)):
            other = pairs[(slot + 1) % len(pairs)][0]  # a distractor: the next clip's words
            instruction, target = slot_target(name, i, text, other, step, slot)
            rows.append((prompts[instruction].ids(int(s.shape[0])), target))
        ids, mask, labels = collate(rows, adapter.pad_id)
        t_b = time.time()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, args)
        with autocast:
            loss = repeat_loss(core, ids, mask, labels, states)
            if args.ctc_weight:
                spoken = [list(adapter.tokenizer(t, add_special_tokens=False)["input_ids"]) for t, _ in pairs]
                loss = loss + args.ctc_weight * ctc_loss(core, states, spoken)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.audio_norm:
            norm_was = hold_audio_norm(core, states, args.audio_norm)
        t_data, t_train = t_data + (t_b - t_a), t_train + (time.time() - t_b)
        steps_here += 1
        losses[step] = loss.item()
        window_loss, window_n = window_loss + losses[step], window_n + 1
        if step % args.log_every == 0 or step == args.max_steps:
            per_step = (time.time() - t0) / steps_here
            print(f"step {step:5d} | loss {window_loss / window_n:.4f} | lr {lr_at(step, args):.2e} | "
                  f"{per_step:.2f} s/step (train {t_train / steps_here:.2f}, data {t_data / steps_here:.2f})"
                  f" | cache {cache.hits} hit {cache.misses} miss"
                  + (f" | audio norm {norm_was:.2f}x" if args.audio_norm else "")
                  + f" | eta {(args.max_steps - step) * per_step / 60:.1f} min",
                  flush=True)
            window_loss, window_n = 0.0, 0
        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.max_steps):
            run_eval(step)
        if step % args.save_every == 0 or step == args.max_steps:
            save(out, step, core, optimizer, sampler, cfg)
            saved = step
        if time.time() > deadline:
            print(f"--max-minutes {args.max_minutes} reached after step {step}", flush=True)
            break
    if saved != step:
        save(out, step, core, optimizer, sampler, cfg)
    if step >= args.max_steps and not args.no_export:
        meta = {"base": args.base, "llm": args.llm, "llm_adapter": args.llm_adapter, "aligned_steps": step,
                "objectives": args.objectives, "respond_from": respond_from, "voices": [v.name for v in voices]}
        path = export_student(adapter, out / "student", meta)
        print(f"exported the aligned student to {path}", flush=True)
    last = out / f"step-{step:06d}"
    print(f"stopped at step {step}; checkpoint {last}; rerun the same command to continue", flush=True)
    return {"adapter": adapter, "losses": losses, "step": step, "cache": cache}


if __name__ == "__main__":
    raise SystemExit(main())
