"""On-demand divergence scoring: any student's rollouts on evalsuite items, scored by any teacher, no
training.

:func:`score_pairs` is what the trainer does each step minus the update, with the trainer's own pieces:
:func:`xopd.scoring.sample_and_score` -- the function behind the trainer's held-out KL -- samples ``n``
completions per prompt from the student (ids outside the shared vocabulary and the student's audio/image
placeholders banned) after the spoken question (speech: the evalsuite's TTS cache) and after the typed one
(text); the teacher reads its own chat-formatted text prompt followed by the same completion ids and scores
each token with its top-k alternatives; the student's log-probs of its own tokens are
``xopd.losses.token_logprobs`` over the shared vocabulary, and the advantage is
:func:`xopd.losses.xopd_advantage`. Records are rollout-log lines
(:func:`xopd.rolloutlog.rollout_record`, ``step`` 0, ``kind`` ``score``), so the explorer and
:mod:`analysis.aggregate` read them like a training log; spoken prompts are copied into the output
directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xopd.data import PromptPair
from xopd.models import ModelAdapter, check_pair
from xopd.rollout import sample_numbers
from xopd.rolloutlog import copy_audio, rollout_record
from xopd.scoring import SPEECH, TEXT, sample_and_score

KIND = "score"


def score_pairs(
    student: ModelAdapter,
    teacher: ModelAdapter,
    pairs: Sequence[PromptPair],
    out_dir: str | Path,
    *,
    modalities: Sequence[str] = (TEXT, SPEECH),
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    variant: str = "clean",
    seed: int = 0,
    topk: int = 5,
    batch_size: int = 8,
    system: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[dict[str, Any]]:
    """Rollout-log records of ``n`` student samples per pair and modality, scored by ``teacher``.

    Speech WAVs are copied under ``out_dir/audio/`` (records point there); nothing else is written.
    Sampling draws from a forked torch RNG seeded with ``seed``: the same call samples the same tokens.
    """
    for m in modalities:
        if m not in (TEXT, SPEECH):
            raise ValueError(f"unknown modality {m!r} (expected text or speech)")
    if SPEECH in modalities and not student.is_speech:
        raise ValueError(f"student {student.name!r} is a text LLM; score it with modalities=text only")
    if not pairs:
        raise ValueError("no prompts to score")
    vocab = check_pair(student, teacher)
    teacher.eos_ids = student.eos_ids  # one stopping rule, as in the trainer
    scored = sample_and_score(
        student, teacher, pairs, vocab_size=vocab, modalities=modalities, n=n, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, batch_size=batch_size, system=system, variant=variant, topk=topk,
        log=log,
    )  # fmt: skip
    records: list[dict[str, Any]] = []
    copies: dict[str, str] = {}
    for s in scored:
        rolls, m = s.rollouts, s.modality
        finished = rolls.finished(student.eos_ids).tolist()
        index = rolls.prompt_index.tolist()
        sample_no = sample_numbers(index)
        for r, i in enumerate(index):
            length = int(rolls.mask[r].sum())
            pair = pairs[i]
            records.append(
                rollout_record(
                    step=0,
                    kind=KIND,
                    prompt_id=pair.id,
                    modality=m,
                    sample=sample_no[r],
                    prompt_text=pair.text,
                    spoken_text=pair.spoken if m == SPEECH else None,
                    audio_path=copy_audio(out_dir, s.audio_paths[i], copies),
                    variant=variant if m == SPEECH else None,
                    token_ids=rolls.ids[r, :length].tolist(),
                    student_lp=s.student_lp[r, :length].tolist(),
                    teacher_lp=s.teacher_lp[r, :length].tolist(),
                    advantage=s.advantage[r, :length].tolist(),
                    sampler_lp=rolls.sampler_logprobs[r, :length].tolist(),
                    finished=finished[r],
                    tokenizer=student.tokenizer,
                    topk_ids=s.topk_ids[r, :length].tolist() if topk else None,
                    topk_lp=s.topk_lp[r, :length].tolist() if topk else None,
                )
            )
    return records
