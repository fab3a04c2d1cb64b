"""On-demand divergence scoring: any student's rollouts on evalsuite items, scored by any teacher, no
training.

:func:`score_pairs` is what the trainer does each step minus the update, with the trainer's own pieces: the
student samples ``n`` completions per prompt (:class:`xopd.rollout.HFRolloutEngine`; ids outside the shared
vocabulary and the student's audio/image placeholders banned) after the spoken question (speech: the
evalsuite's TTS cache through :func:`xopd.data.speech_audio`) and after the typed one (text); the teacher
reads its own chat-formatted text prompt followed by the same completion ids and scores each token with its
top-k alternatives (:meth:`xopd.models.ModelAdapter.score`); the student's log-probs of its own tokens come
from :meth:`~xopd.models.ModelAdapter.completion_logprobs` (``xopd.losses.token_logprobs`` over the shared
vocabulary), and the advantage is :func:`xopd.losses.xopd_advantage`. Records are rollout-log lines
(:func:`xopd.rolloutlog.rollout_record`, ``step`` 0, ``kind`` ``score``), so the explorer and
:mod:`analysis.aggregate` read them like a training log; spoken prompts are copied into the output
directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xopd import losses
from xopd.data import PromptPair, student_prompts
from xopd.models import ModelAdapter, check_pair
from xopd.rollout import HFRolloutEngine, SamplingParams, sample_numbers
from xopd.rolloutlog import copy_audio, rollout_record

TEXT, SPEECH = "text", "speech"
KIND = "score"


@torch.no_grad()
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
    engine = HFRolloutEngine(
        student, vocab_size=vocab, batch_size=batch_size, banned_ids=student.multimodal_token_ids()
    )
    params = SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature)
    t_prompts = [teacher.text_prompt(p.text, system) for p in pairs]
    records: list[dict[str, Any]] = []
    copies: dict[str, str] = {}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in modalities:
            s_prompts, paths = student_prompts(student, pairs, m, [variant] * len(pairs), system)
            log(f"{m}: sampling {n} x {len(pairs)} rollouts from {student.name}")
            rolls = engine.generate(s_prompts, params)
            finished = rolls.finished(student.eos_ids).tolist()
            index = rolls.prompt_index.tolist()
            sample_no = sample_numbers(index)
            log(f"{m}: scoring with {teacher.name}")
            for start in range(0, len(rolls), batch_size):
                rows = list(range(start, min(start + batch_size, len(rolls))))
                sub = rolls.select(rows)
                idx = sub.prompt_index.tolist()
                t = teacher.score([t_prompts[i] for i in idx], sub.ids, sub.mask, vocab_size=vocab, topk=topk)
                s_lp = student.completion_logprobs(
                    [s_prompts[i] for i in idx], sub.ids, sub.mask, vocab_size=vocab
                ).to(t.logprobs.device)
                adv = losses.xopd_advantage(t.logprobs, s_lp, sub.mask.to(t.logprobs.device))
                for j, r in enumerate(rows):
                    length = int(sub.mask[j].sum())
                    pair = pairs[index[r]]
                    records.append(
                        rollout_record(
                            step=0,
                            kind=KIND,
                            prompt_id=pair.id,
                            modality=m,
                            sample=sample_no[r],
                            prompt_text=pair.text,
                            spoken_text=pair.spoken if m == SPEECH else None,
                            audio_path=copy_audio(out_dir, paths[index[r]], copies),
                            variant=variant if m == SPEECH else None,
                            token_ids=sub.ids[j, :length].tolist(),
                            student_lp=s_lp[j, :length].tolist(),
                            teacher_lp=t.logprobs[j, :length].tolist(),
                            advantage=adv[j, :length].tolist(),
                            sampler_lp=sub.sampler_logprobs[j, :length].tolist(),
                            finished=finished[r],
                            tokenizer=student.tokenizer,
                            topk_ids=t.topk_ids[j, :length].tolist() if topk else None,
                            topk_lp=t.topk_logprobs[j, :length].tolist() if topk else None,
                        )
                    )
    return records
