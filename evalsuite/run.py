"""Run one model over tasks in text and speech modes: the per-sample records every report is built from.

Each item is asked twice with the same answer-format instruction: once typed (text mode) and once spoken (speech
mode, one run per TTS variant, or the dataset's own recording). Generations go through the cache first, so a
killed run resumes where it stopped and a rerun recomputes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalsuite.cache import generate_cached
from evalsuite.extract import Extraction, extract_answer, is_correct, restates_question
from evalsuite.speech import AudioError, load_audio, render
from evalsuite.tasks.task import spoken_text
from evalsuite.types import GenParams, Item, Request
from xopd.prompting import messages_for

TEXT = "text"
SPEECH = "speech"


@dataclass
class Sample:
    """One answered (or failed) request: a row of the per-sample JSONL."""

    id: str
    task: str
    mode: str  # "text" | "speech"
    variant: str  # TTS variant for speech ("recorded" for a dataset's own audio); "" for text
    prompt: str  # the text shown, or the text that was spoken
    answer: str
    response: str | None = None
    extracted: str | None = None
    method: str | None = None
    correct: bool = False
    error: str | None = None
    chance: float | None = None  # accuracy of guessing uniformly: yesno 0.5, choice 1/len(choices), else 0
    benchmark: str | None = None  # the task file's ``benchmark:`` group (None: the task is its own benchmark)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PreparedRequest:
    sample: Sample
    request: Request | None  # None when the input itself failed (bad audio, empty prompt)
    item: Item = field(repr=False, default=None)  # type: ignore[assignment]


def chance_level(answer_type: str, choices: Sequence[str]) -> float:
    """Expected accuracy of a uniform guess among the options (0 for free-form number and text answers)."""
    if answer_type == "yesno":
        return 0.5
    if answer_type == "choice" and choices:
        return 1.0 / len(choices)
    return 0.0


def prepare(task, items: Sequence[Item], modes: Sequence[str], variants: Sequence,
            system_prompt: str | None = None) -> list[PreparedRequest]:
    """Build every request; input problems become failed samples with a reason, never exceptions.

    The messages are :func:`xopd.prompting.messages_for`'s, the trainer's prompt format: ``system_prompt`` (a
    run's ``data.system_prompt``) as a system turn, then the typed message, or the audio with the instruction
    beside it.
    """
    out: list[PreparedRequest] = []
    instruction = task.spec.instruction or ""
    benchmark = getattr(task.spec, "benchmark", None)
    for item in items:
        chance = chance_level(task.spec.answer_type, item.choices or tuple(task.spec.choices or ()))
        if TEXT in modes:
            text = task.render_text(item)
            s = Sample(item.id, task.name, TEXT, "", text, item.answer, chance=chance, benchmark=benchmark)
            if not item.question.strip():
                s.error = "empty prompt"
                out.append(PreparedRequest(s, None, item))
            else:
                msgs = messages_for(text, modality=TEXT, instruction=instruction, system_prompt=system_prompt)
                out.append(PreparedRequest(s, Request(f"{item.id}|text", msgs), item))
        if SPEECH not in modes:
            continue
        spoken = task.render_spoken(item)
        sources = [("recorded", None)] if item.audio else [(v.name, v) for v in variants]
        for vname, variant in sources:
            s = Sample(item.id, task.name, SPEECH, vname, spoken, item.answer, chance=chance, benchmark=benchmark)
            try:
                if item.audio:
                    audio = load_audio(Path(item.audio))
                elif not item.question.strip() or not spoken.strip():
                    raise AudioError(item.id, "empty prompt: nothing to speak")
                else:
                    audio = load_audio(render(spoken, variant))
            except (AudioError, OSError, RuntimeError, ValueError) as exc:
                s.error = f"audio: {exc}"
                out.append(PreparedRequest(s, None, item))
                continue
            msgs = messages_for(spoken, modality=SPEECH, audio=audio, instruction=instruction,
                                system_prompt=system_prompt)
            out.append(PreparedRequest(s, Request(f"{item.id}|speech|{vname}", msgs), item))
    return out


def _stems(task, item: Item) -> tuple[str, str]:
    """The question as typed and as spoken, without a multiple-choice task's options: quoting the option one
    picks ("B) the sun heats the sea") repeats option words, not the question."""
    if task.spec.answer_type != "choice":
        return task.render_text(item), task.render_spoken(item)
    return task.spec.prompt.format(question=item.question, choices=""), spoken_text(task.spec, item.question, ())


def judge(task, item: Item, text: str) -> tuple[Extraction, bool]:
    """The answer extracted from a response and whether it is right: the task's own verdict where it has one
    (reasoning-gym's scorer), else the generic comparison with the gold answer. A response that only restates
    the question extracts nothing ("restates-question")."""
    if restates_question(text, _stems(task, item)):
        return Extraction(None, "restates-question"), False
    ext = extract_answer(text, task.spec.answer_type, item.choices or tuple(task.spec.choices or ()))
    if ext.value is None:
        return ext, False
    verdict = task.score(item, ext.value)
    return ext, bool(verdict) if verdict is not None else is_correct(ext, item.answer, task.spec.answer_type)


def score(task, prepared: PreparedRequest, text: str | None, error: str | None) -> Sample:
    s = prepared.sample
    s.response, s.error = text, error or s.error
    if s.error or text is None:
        return s
    ext, s.correct = judge(task, prepared.item, text)
    s.extracted, s.method = ext.value, ext.method
    return s


def evaluate(backend, tasks: Sequence, *, modes: Sequence[str] = (TEXT, SPEECH), variants: Sequence = (),
             params: GenParams = GenParams(), cache=None, progress: Callable[[int], None] | None = None,
             chunk_size: int = 32, system_prompt: str | None = None) -> list[Sample]:
    """Answer every item of every task in every mode; return the samples in a stable order.

    ``system_prompt``: a system turn before every request (the trainer's ``data.system_prompt``; None: none).

    Generation goes through the cache in chunks, so a killed run loses at most one chunk and a rerun resumes.
    ``progress`` receives increments of finished requests (input failures count at once).
    """
    prepared = [(t, p) for t in tasks for p in prepare(t, t.items, modes, variants, system_prompt)]
    live = [i for i, (_, p) in enumerate(prepared) if p.request is not None]
    if progress and len(live) < len(prepared):
        progress(len(prepared) - len(live))
    outs = generate_cached(backend, [prepared[i][1].request for i in live], params, cache, chunk_size=chunk_size,
                           progress=progress)
    results: dict[int, tuple[str | None, str | None]] = {i: (r.text, r.error) for i, r in zip(live, outs, strict=True)}
    return [score(t, p, *results.get(i, (None, None))) for i, (t, p) in enumerate(prepared)]
