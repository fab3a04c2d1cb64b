"""Paired prompts (the same question typed and spoken) and the deterministic order the trainer draws them in.

Sources:

* evalsuite tasks (``data.tasks``), train split: the text version is ``task.render_text(item)``, the spoken
  version says ``task.render_spoken(item)`` and carries ``task.instruction`` as text beside the audio -- the
  very prompts ``xopd-eval`` asks. reasoning-gym generators come in the same way, as evalsuite tasks
  (``syllogism``, ``gsm_symbolic``, or a task file of your own in ``$XOPD_TASKS_PATH``).
* a JSONL file (``data.jsonl``), one object per line::

      {"id": "q1", "text": "What is 2 plus 3?\\nAnswer with the number only.",
       "audio": "wavs/q1.wav" | "spoken": "What is two plus three?",
       "instruction": "Answer with the number only.", "answer": "5"}

  ``text`` is required; ``audio`` (relative to the JSONL's folder) is a 16 kHz mono recording, else
  ``spoken`` (default: ``text``) is synthesised; ``id`` defaults to ``<file stem>/<line number>``.

Speech is rendered by the evalsuite's TTS cache (``evalsuite.speech.render``): one code path for training and
evaluation audio. :class:`PairStream` walks the pairs in a seeded permutation per epoch; its position is
saved in checkpoints and restored exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evalsuite.speech import load_audio, parse_variants, render
from evalsuite.tasks import UnknownTaskError, load_task
from xopd.prompting import messages_for


class DataError(ValueError):
    """A prompt source that cannot be used; the message names the file, line or task."""


@dataclass(frozen=True)
class PromptPair:
    id: str
    text: str  # user message of the text version (answer-format instruction included)
    spoken: str | None  # words the speech version says (None when ``audio`` is a recording)
    audio: str | None  # path of a recording; None: synthesise ``spoken``
    instruction: str  # text beside the audio in the speech version ("" for none)
    answer: str | None  # reference answer (the SFT baseline's target)
    source: str  # task name or JSONL path


@dataclass(frozen=True)
class Draw:
    """One pair drawn for a step, with the TTS variant its speech version uses."""

    pair: PromptPair
    variant: str
    epoch: int


def task_pairs(
    name: str, *, split: str = "train", limit: int | None = None, seed: int = 0
) -> list[PromptPair]:
    """The items of an evalsuite task's ``split`` as prompt pairs."""
    try:
        task = load_task(name, split=split, limit=limit, seed=seed)
    except UnknownTaskError as exc:
        raise DataError(str(exc)) from None
    if not task.items:
        raise DataError(f"task {name!r} has no items in its {split!r} split")
    return [
        PromptPair(
            id=item.id,
            text=task.render_text(item),
            spoken=None if item.audio else task.render_spoken(item),
            audio=item.audio,
            instruction=task.instruction or "",
            answer=item.answer,
            source=name,
        )
        for item in task.items
    ]


def jsonl_pairs(path: str | Path) -> list[PromptPair]:
    """Prompt pairs from a JSONL file (see the module docstring); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    pairs: list[PromptPair] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row: Any = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object")
        unknown = set(row) - {"id", "text", "audio", "spoken", "instruction", "answer"}
        if unknown:
            raise DataError(
                f"{where}: unknown field(s) {sorted(unknown)} "
                "(known: id, text, audio, spoken, instruction, answer)"
            )
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        audio = row.get("audio")
        if audio is not None:
            audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
            if not audio_path.is_file():
                raise DataError(f"{where}: audio file {str(audio_path)!r} does not exist")
            audio = str(audio_path)
        spoken = None if audio is not None else (row.get("spoken") or text)
        answer = row.get("answer")
        pairs.append(
            PromptPair(
                id=str(row.get("id") or f"{path.stem}/{n}"),
                text=text,
                spoken=spoken,
                audio=audio,
                instruction=str(row.get("instruction") or ""),
                answer=None if answer is None else str(answer),
                source=str(path),
            )
        )
    if not pairs:
        raise DataError(f"data file {str(path)!r} holds no prompts")
    return _check_unique(pairs, str(path))


def _check_unique(pairs: list[PromptPair], where: str) -> list[PromptPair]:
    seen: set[str] = set()
    for p in pairs:
        if p.id in seen:
            raise DataError(f"{where}: duplicate prompt id {p.id!r}")
        seen.add(p.id)
    return pairs


def load_train_pairs(data_cfg: Any, seed: int) -> list[PromptPair]:
    """Training pairs from ``cfg.data`` (a :class:`xopd.config.DataConfig`)."""
    if data_cfg.jsonl is not None:
        return jsonl_pairs(data_cfg.jsonl)
    pairs = [
        p for name in data_cfg.tasks for p in task_pairs(name, split="train", limit=data_cfg.limit, seed=seed)
    ]
    return _check_unique(pairs, f"tasks {data_cfg.tasks}")


def load_eval_pairs(cfg: Any) -> list[PromptPair]:
    """Held-out pairs for the eval hook (``cfg`` is the whole RunConfig); [] when there are none."""
    if cfg.eval.jsonl is not None:
        return jsonl_pairs(cfg.eval.jsonl)[: cfg.eval.num_prompts]
    tasks = cfg.eval.tasks if cfg.eval.tasks is not None else cfg.data.tasks
    if not tasks:
        return []
    pairs = [
        p
        for name in tasks
        for p in task_pairs(name, split=cfg.eval.split, limit=cfg.eval.num_prompts, seed=cfg.seed)
    ]
    return _check_unique(pairs, f"eval tasks {tasks}")


def speech_audio(pair: PromptPair, variant: str) -> tuple[np.ndarray, str]:
    """The speech version's samples (16 kHz mono float32) and the WAV they come from (rendered and cached by
    evalsuite's TTS when the pair has no recording).

    Cold cache or warm, the same samples and the same RNG afterwards: the samples are always read back from
    the WAV (a fresh render is not used from memory), and a render on a cache miss runs with the global RNGs
    (python, numpy, torch) saved and restored, so a TTS engine can never consume the training's random
    stream on the first run only."""
    if pair.audio is not None:
        path = Path(pair.audio)
    else:
        if not pair.spoken or not pair.spoken.strip():
            raise DataError(f"prompt {pair.id!r}: nothing to speak")
        (v,) = parse_variants([variant])
        with _global_rng_kept():
            path = render(pair.spoken, v)
    return load_audio(path), str(path)


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore python's, numpy's and torch's (CPU) global RNG states after the block (TTS runs on the CPU)."""
    import torch  # late: this module is torch-free at import (xopd-eval divergence reads prompts with it)

    py, npy, pt = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(pt)


def student_prompts(
    adapter: Any, pairs: Sequence[PromptPair], modality: str, variants: Sequence[str], system: str | None
) -> tuple[list[Any], list[str | None]]:
    """The student's prompts for ``modality`` ("text" or "speech": pair ``i`` spoken in ``variants[i]``) and
    the WAV behind each speech prompt (None for text)."""
    if modality == "text":
        return [adapter.prompt(pair_messages(p, "text", system)) for p in pairs], [None] * len(pairs)
    prompts, paths = [], []
    for p, variant in zip(pairs, variants, strict=True):
        audio, path = speech_audio(p, variant)
        prompts.append(adapter.prompt(pair_messages(p, "speech", system, audio)))
        paths.append(path)
    return prompts, paths


def pair_messages(
    pair: PromptPair, modality: str, system: str | None = None, audio: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The chat messages of ``pair`` in ``modality``: :func:`xopd.prompting.messages_for`, the one prompt
    format of training and evaluation (``evalsuite.run.prepare`` builds xopd-eval's requests with it)."""
    if modality == "text" and (not pair.text or not pair.text.strip()):
        raise DataError(f"prompt {pair.id!r}: empty text")
    return messages_for(
        pair.text if modality == "text" else pair.spoken,
        modality=modality,
        audio=audio,
        instruction=pair.instruction,
        system_prompt=system,
    )


class PairStream:
    """Deterministic, resumable order: epoch ``e`` walks a permutation seeded by ``(seed, e)``; batches run
    across epoch ends. With several TTS variants each draw picks one from ``(seed, epoch, id)``."""

    def __init__(
        self, pairs: list[PromptPair], *, seed: int, shuffle: bool = True, variants: list[str] = ("clean",)
    ):
        if not pairs:
            raise DataError("no training prompts")
        self.pairs = pairs
        self.seed = seed
        self.shuffle = shuffle
        self.variants = list(variants)
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.pairs)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)  # its own generator: global RNGs untouched
        return order

    def _variant(self, pair: PromptPair) -> str:
        if len(self.variants) == 1:
            return self.variants[0]
        h = hashlib.sha256(f"{self.seed}:{self.epoch}:{pair.id}".encode()).digest()
        return self.variants[int.from_bytes(h[:8], "little") % len(self.variants)]

    def next_batch(self, k: int) -> list[Draw]:
        out: list[Draw] = []
        while len(out) < k:
            if self.position >= len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            pair = self.pairs[self._order[self.position]]
            out.append(Draw(pair, self._variant(pair), self.epoch))
            self.position += 1
        return out

    def fingerprint(self) -> str:
        """Hash of the pair ids in source order: a resumed run must see the same data."""
        return hashlib.sha256("\n".join(p.id for p in self.pairs).encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise DataError(
                "the training prompts differ from those of the checkpoint (other tasks, limit, seed or "
                "file); resume with the same data config or start a new output_dir"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
