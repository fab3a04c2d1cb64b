"""Batch building: the sequences each modality trains on in one step, for this process's share of the prompts.

Which sequences is the objective's choice (:attr:`xopd.objectives.Objective.source`), prompt by prompt of the
step's global batch, so nothing here knows the loss kinds:

* ``STUDENT`` -- ``rollout.n`` samples of the current student after that modality's prompt (seeded per prompt
  with ``rollout.seed_per_prompt``, so a prompt samples the same in whichever process it lands);
* ``GOLD`` -- the reference answer (answer text + the student's end-of-turn id), ``Objective.gold_copies``
  identical rows (n when gold rows stand in for samples, so every prompt weighs the same);
* ``TEACHER`` -- the teacher's fixed answers, sampled once from the text prompt and cached on disk
  (:mod:`xopd.kd_cache`; generated on first use by :func:`fixed_teacher_answers`).

Rows are prompt-major. The teacher always reads its own chat template around the text version
(:func:`teacher_prompt`), followed by the same completion ids.
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import partial
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xopd.config import ConfigError, RunConfig
from xopd.data import Draw, PromptPair, student_prompts
from xopd.kd_cache import TeacherAnswers, key_doc, teacher_answers
from xopd.models import Prompt
from xopd.rollout import Rollouts, SamplingParams, pad_rollouts
from xopd.state import Run

STUDENT, GOLD, TEACHER = "student", "gold", "teacher"  # where a prompt's training sequences come from


@dataclass
class ModalityBatch:
    """What one modality trains on this step: per-draw prompts and the sequences (rows -> draw index)."""

    modality: str
    student_prompts: list[Prompt]
    teacher_prompts: list[Prompt]
    seqs: Rollouts
    audio_paths: list[str | None]
    sampled_by_student: bool  # True: seqs.sampler_logprobs are the student sampler's (the importance ratio's)
    # a mix of sources: per row, whether the student sampled it; None: all rows alike (sampled_by_student)
    student_rows: list[bool] | None = None

    def row_sampled(self, r: int) -> bool:
        """Whether row ``r`` is the student's own sample (its sampler log-probs are real)."""
        return self.sampled_by_student if self.student_rows is None else self.student_rows[r]


@dataclass
class Batch:
    draws: list[Draw]
    parts: dict[str, ModalityBatch]
    sampled_tokens: int  # tokens the student sampled this step (fixed targets: none)


def sampling(cfg: RunConfig) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=r.n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)


def prompt_seed(seed: int, step: int, index: int, role: str) -> int:
    """The seed of the ``index``-th prompt of ``step``'s global batch for ``role`` (a modality's sampling, or
    "gkd": its on-policy draw): the same in whichever process the prompt lands."""
    digest = hashlib.sha256(f"{seed}|{step}|{index}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def teacher_prompt(run: Run, pair: PromptPair) -> Prompt:
    """What the teacher reads for ``pair``: its own chat template around the text version. One function for
    the step's scoring and for the cached teacher answers, which are found by these prompt ids."""
    return run.teacher.text_prompt(pair.text, run.cfg.data.system_prompt)


def make_batch(run: Run, draws: list[Draw], step: int) -> Batch:
    """This process's share of the step's global batch ``draws`` and, per modality, the sequences the
    objective trains on (its ``source`` for each prompt: student samples, gold answers, teacher answers)."""
    cfg, objective = run.cfg, run.objective
    mine = run.dist.shard_range(len(draws))
    draws = [draws[i] for i in mine]
    sources = [objective.source(cfg, step, i) for i in mine]
    teacher_prompts = [teacher_prompt(run, d.pair) for d in draws]
    parts, sampled = {}, 0
    # FSDP: whole layers while sampling (each process samples a different number of tokens); every process
    # decides alike, from the config alone
    samples = STUDENT in objective.sources(cfg)
    with run.sharded.gathered() if samples else contextlib.nullcontext():
        for m in run.modalities:
            pairs, variants = [d.pair for d in draws], [d.variant for d in draws]
            prompts, paths = student_prompts(run.student, pairs, m, variants, cfg.data.system_prompt)
            rows_of = partial(_source_rows, run, step, m, list(mine), draws, prompts, teacher_prompts)
            seqs, from_student = merge_sources(sources, rows_of)
            sampled += int(seqs.mask[torch.tensor(from_student, dtype=torch.bool)].sum())
            parts[m] = ModalityBatch(
                m, prompts, teacher_prompts, seqs, paths, sampled_by_student=set(sources) == {STUDENT},
                student_rows=from_student if len(set(sources)) > 1 else None,  # a mix: row by row
            )  # fmt: skip
    return Batch(draws, parts, sampled)


def _source_rows(
    run: Run, step: int, modality: str, index: list[int], draws: list[Draw], prompts: list[Prompt],
    teacher_prompts: list[Prompt], source: str, ks: list[int],
) -> Rollouts:
    """The rows of source ``source`` for the prompts at positions ``ks`` (``index``: their global indices)."""
    cfg = run.cfg
    if source == STUDENT:
        seeds = [prompt_seed(cfg.seed, step, index[k], modality) for k in ks] if run.seed_per_prompt else None
        return run.engine.generate([prompts[k] for k in ks], sampling(cfg), seeds)
    if source == GOLD:
        return reference_rollouts(run, [draws[k] for k in ks], copies=run.objective.gold_copies(cfg))
    return run.kd_answers.rollouts([teacher_prompts[k] for k in ks])


def merge_sources(
    sources: Sequence[str], rows_of: Callable[[str, list[int]], Rollouts]
) -> tuple[Rollouts, list[bool]]:
    """Each source's rows for its prompts (``rows_of(source, prompt positions)``), merged prompt-major over
    all of ``sources``; and, per row, whether the student sampled it. One source: its rows as they come."""
    order = list(dict.fromkeys(sources))
    if len(order) == 1:
        seqs = rows_of(order[0], list(range(len(sources))))
        return seqs, [order[0] == STUDENT] * len(seqs)
    parts, flags = [], []
    for source in (s for s in (STUDENT, GOLD, TEACHER) if s in order):  # the student's rows first
        ks = [k for k, s in enumerate(sources) if s == source]
        r = rows_of(source, ks)
        parts.append(Rollouts(torch.tensor(ks)[r.prompt_index], r.ids, r.mask, r.sampler_logprobs))
        flags += [source == STUDENT] * len(r)
    merged = pad_rollouts(parts)
    order_ = torch.argsort(merged.prompt_index, stable=True)  # prompt-major, each prompt's rows in order
    seqs = Rollouts(
        merged.prompt_index[order_], merged.ids[order_], merged.mask[order_], merged.sampler_logprobs[order_]
    )
    return seqs, [flags[i] for i in order_.tolist()]


def reference_rollouts(run: Run, draws: Sequence[Draw], *, copies: int = 1) -> Rollouts:
    """Each draw's reference answer as completion ids (answer text + the student's end-of-turn id), ``copies``
    identical rows per draw, prompt-major."""
    rows, index = [], []
    for k, d in enumerate(draws):
        if d.pair.answer is None or not str(d.pair.answer).strip():
            raise ConfigError(
                f"loss.kind={run.cfg.loss.kind} needs reference answers; prompt {d.pair.id!r} has none"
            )
        ids = run.student.tokenizer(str(d.pair.answer), add_special_tokens=False)["input_ids"]
        rows += [[int(i) for i in ids] + [run.student.eos_ids[0]]] * copies
        index += [k] * copies
    t = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (t - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in rows], dtype=torch.bool)
    if int(ids.max()) >= run.vocab_size:
        raise ValueError(
            f"a reference answer tokenizes to ids outside the shared vocabulary [0, {run.vocab_size})"
        )
    return Rollouts(torch.tensor(index, dtype=torch.long), ids, mask, torch.zeros(ids.shape))


def check_reference_answers(run: Run) -> None:
    """An objective that trains on gold answers needs one for every training prompt: say so at setup."""
    if GOLD not in run.objective.sources(run.cfg):
        return
    missing = [p.id for p in run.stream.pairs if p.answer is None or not str(p.answer).strip()]
    if missing:
        kind = run.cfg.loss.kind
        raise ConfigError(
            f"loss.kind={kind} trains on reference answers, and {len(missing)} training prompts have none "
            f"(first: {missing[0]!r})" + (f"; {run.objective.gold_hint}" if run.objective.gold_hint else "")
        )


def kd_sampling(cfg: RunConfig) -> SamplingParams:
    """The teacher's fixed answers: ``loss.kd_samples_per_prompt`` (default ``rollout.n``) per prompt at the
    rollout temperature, top_p and max_new_tokens."""
    r, n = cfg.rollout, cfg.loss.kd_samples_per_prompt
    n = n if n is not None else r.n
    return SamplingParams(n=n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)


def fixed_teacher_answers(run: Run, say: Callable[[str], Any]) -> TeacherAnswers:
    """The ``TEACHER`` source: the teacher's answers to every training prompt, read from the cache
    (:mod:`xopd.kd_cache`), the missing ones generated first (every process its share, the teacher gathered
    under FSDP). Each prompt's answers come from their own seeded RNG: training's RNG is left untouched."""
    cfg = run.cfg
    params = kd_sampling(cfg)
    doc = key_doc(
        run.teacher.source_path or cfg.models.teacher,
        cfg.models.teacher_dtype or cfg.models.dtype,
        params,
        vocab_size=run.vocab_size,
        banned_ids=run.banned_ids,
        eos_ids=run.teacher.eos_ids,
    )
    return teacher_answers(
        [(p.id, teacher_prompt(run, p)) for p in run.stream.pairs],
        engine=run.teacher_engine,
        params=params,
        doc=doc,
        root=cfg.loss.kd_cache_dir,
        dist=run.dist,
        say=say,
        prompts_per_round=max(1, cfg.rollout.batch_size // params.n),
        gathered=run.teacher_sharded.gathered,
        progress=cfg.logging.progress,
    )
