"""What a training run holds between steps (:class:`Run`), shared by the loop (:mod:`xopd.trainer`) and the
modules it calls -- batches, objectives, metrics, checkpoints -- which import it from here, below all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xopd import sharding
from xopd.config import RunConfig
from xopd.data import PairStream, PromptPair
from xopd.distributed import Dist
from xopd.kd_cache import TeacherAnswers
from xopd.models import ModelAdapter
from xopd.rollout import RolloutEngine
from xopd.rolloutlog import StepLog

TEXT, SPEECH = "text", "speech"
EvalHook = Callable[[int, ModelAdapter], dict[str, Any]]


@dataclass
class Run:
    """Everything a run holds between steps: config, objective, models, engines, data, optimizer, logs."""

    cfg: RunConfig
    out: Path
    # OBJECTIVES[cfg.loss.kind], an xopd.objectives.Objective; typed Any because xopd.objectives sits above
    # this module (its micro_batch_loss reads a Run), so importing it here would close a circle
    objective: Any
    student: ModelAdapter
    teacher: ModelAdapter
    vocab_size: int  # the shared output vocabulary [0, V)
    engine: RolloutEngine  # samples from the student
    teacher_engine: RolloutEngine | None  # the TEACHER source: samples the teacher's fixed answer set
    stream: PairStream
    eval_pairs: list[PromptPair]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    logs: dict[str, StepLog]
    step: int = 0
    skipped: list[int] = field(default_factory=list)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)
    audio_copies: dict[str, str] = field(default_factory=dict)  # TTS cache path -> copy under output_dir
    dist: Dist = field(default_factory=Dist)  # this process's rank among world_size (accelerate launch)
    builtin_hooks: list[EvalHook] = field(default_factory=list)  # from the config (eval.gap_tasks)
    seed_per_prompt: bool = False
    sharded: sharding.Sharded = field(default_factory=sharding.Sharded)  # FSDP units (none: not sharded)
    teacher_sharded: sharding.Sharded = field(default_factory=sharding.Sharded)
    banned_ids: list[int] = field(default_factory=list)  # never sampled (the student's audio placeholders)
    # where the models run: models.device resolved for this process (under accelerate launch ``auto`` is
    # this process's cuda:<local rank>, or cpu). Never written into cfg, which is saved as the user gave it
    device: str = "auto"
    kd_answers: TeacherAnswers | None = None  # the TEACHER source: its fixed answers to every train prompt

    @property
    def modalities(self) -> list[str]:
        return active_modalities(self.cfg)


def active_modalities(cfg: RunConfig) -> list[str]:
    """Modalities with a non-zero weight: text (lam), speech (1 - lam); a zero-weight one is not sampled."""
    return [m for m, w in ((TEXT, cfg.loss.lam), (SPEECH, 1.0 - cfg.loss.lam)) if w > 0]
