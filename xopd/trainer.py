"""The X-OPD training loop (arXiv 2603.24596) and its baselines, on the same prompts and budget.

:func:`train` is the loop, top to bottom. Each step draws a batch of paired prompts (text T, speech S) and,
for ``loss.kind: xopd`` (the default), samples ``n`` rollouts from the current student on S (cross-modal) and
``n`` on T (in-modal); the teacher reads its own chat-formatted T followed by the same completion ids and
scores every sampled token; the detached advantage ``A_t = log pi_T - log pi_S`` drives the
importance-weighted policy gradient of each modality (:func:`xopd.losses.xopd_policy_loss`), combined as
``lam * L_im + (1 - lam) * L_cm`` (:func:`xopd.losses.xopd_loss`). Micro-batches of
``optim.micro_batch_prompts`` prompts are backpropagated one after the other with the *global* rollout (or
token) count as denominator, so the accumulated gradient is the full batch's (TRL #4719). Then gradient
clipping, AdamW and the LR schedule. A non-finite loss or gradient norm skips the update (reported on the
metrics line and in ``metrics.jsonl``) and training goes on.

Baselines (``loss.kind``), all weighting their text and speech terms with the same ``loss.lam`` and reducing
with the same ``loss.normalize`` as X-OPD: ``sft`` -- cross-entropy on the reference answers, after the speech
and the text prompt alike; ``offline_kd`` -- the same on a *fixed* set of answers the teacher sampled once
from the text prompt (sequence-level KD; generated on first use and cached on disk, :mod:`xopd.kd_cache`);
``gkd`` -- generalized JSD(beta) (``beta: 0`` = forward KL, the paper's GKD baseline) over the full
vocabulary, computed chunked from hidden states, on the student's own rollouts for a seeded
``loss.gkd_student_fraction`` of the prompts and on their reference answers for the others.

Outputs under ``output_dir``: ``metrics.jsonl`` (one line per step), ``rollouts.jsonl`` (schema in
:mod:`xopd.rolloutlog`), ``eval.jsonl`` (held-out teacher-student reverse KL per modality), ``checkpoints/
step-NNNNNN/`` (written atomically: ``model.safetensors`` with the trained weights, ``trainer_state.pt`` with
optimizer, scheduler, RNG states of python/numpy/torch, data position and step, ``config.yaml``,
``state.json``), ``final/`` (a model directory that ``from_pretrained`` and ``xopd-eval`` load) and
``summary.json``. A run restarted on the same ``output_dir`` resumes from its latest checkpoint exactly: same
losses, same samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from xopd import losses, sharding
from xopd.config import ConfigError, RunConfig, ignored_recipe_keys, incompatible_changes, to_dict, to_yaml
from xopd.data import (
    Draw,
    PairStream,
    PromptPair,
    load_eval_pairs,
    load_train_pairs,
    speech_audio,
    student_prompts,
)
from xopd.distributed import Dist, launched_device
from xopd.distributed import init as init_distributed
from xopd.evalhook import GapEvalHook
from xopd.kd_cache import TeacherAnswers, key_doc, teacher_answers
from xopd.models import (
    ModelAdapter,
    Prompt,
    check_pair,
    export_pretrained,
    head_scores,
    load_student,
    load_teacher,
    load_trainable_state,
    resolve_model_name,
)
from xopd.paths import atomic_dir, atomic_write_text
from xopd.rollout import RolloutEngine, Rollouts, SamplingParams, make_engine, pad_rollouts, sample_numbers
from xopd.rolloutlog import StepLog, copy_audio, rollout_record

TEXT, SPEECH = "text", "speech"


class ResumeError(ValueError):
    """The output directory or checkpoint cannot be resumed as configured; the message says why."""


EvalHook = Callable[[int, ModelAdapter], dict[str, Any]]


def train(cfg: RunConfig, *, eval_hooks: Sequence[EvalHook] = ()) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the summary also written to summary.json."""
    # models, vocabulary check, data, optimizer, schedule, logs; restores the latest checkpoint
    run = setup(cfg)
    bar = progress_bar(run)
    if run.step == 0 and cfg.eval.at_start:
        evaluate(run, 0, eval_hooks)
    for step in range(run.step + 1, cfg.schedule.steps + 1):
        started = time.perf_counter()
        # a batch of paired prompts (T, S)
        draws = run.stream.next_batch(cfg.schedule.batch_prompts)
        # n rollouts on S and n on T from the current student (baselines: their targets), for this
        # process's share of the batch (all of it in one process)
        batch = make_batch(run, draws, step)
        # teacher log-probs -> advantages -> modality losses -> lam -> backward -> clip -> AdamW -> schedule
        result = update(run, batch, step, log_tokens=logs_rollouts(cfg, step))
        # metrics line, metrics.jsonl, rollout log
        report(run, step, batch, result, time.perf_counter() - started, bar)
        last = step == cfg.schedule.steps
        if (cfg.eval.every and step % cfg.eval.every == 0) or (last and cfg.eval.at_end):
            evaluate(run, step, eval_hooks)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last:
            save_checkpoint(run, step)
        run.step = step
    run.dist.barrier()
    bar.close()
    try:
        return finish(run)
    finally:
        run.engine.close()


# ------------------------------------------------------------------------------------------------------------
# setup and resume
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    cfg: RunConfig
    out: Path
    student: ModelAdapter
    teacher: ModelAdapter
    vocab_size: int  # the shared output vocabulary [0, V)
    engine: RolloutEngine  # samples from the student
    teacher_engine: RolloutEngine | None  # offline_kd: samples from the teacher (its fixed answer set)
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
    kd_answers: TeacherAnswers | None = None  # offline_kd: the teacher's fixed answers to every train prompt

    @property
    def modalities(self) -> list[str]:
        return active_modalities(self.cfg)


def active_modalities(cfg: RunConfig) -> list[str]:
    """Modalities with a non-zero weight: text (lam), speech (1 - lam); a zero-weight one is not sampled."""
    return [m for m, w in ((TEXT, cfg.loss.lam), (SPEECH, 1.0 - cfg.loss.lam)) if w > 0]


def setup(cfg: RunConfig) -> Run:
    out = Path(cfg.output_dir)
    dist = init_distributed()
    if dist.world_size > cfg.schedule.batch_prompts:
        raise ConfigError(
            f"schedule.batch_prompts={cfg.schedule.batch_prompts} is smaller than the {dist.world_size} "
            "processes sharing it; every process needs at least one prompt per step"
        )
    strategy = parallel_strategy(cfg, dist)
    if strategy == "fsdp" and cfg.schedule.batch_prompts % dist.world_size:
        # a sharded forward is a collective: every process must run as many micro-batches as the others
        raise ConfigError(
            f"distributed.strategy=fsdp: schedule.batch_prompts={cfg.schedule.batch_prompts} must be a "
            f"multiple of the {dist.world_size} processes"
        )
    # The device this process runs on, kept out of cfg: the saved config is the one the user wrote, so a
    # checkpoint of `models.device: auto` resumes under any number of processes (every rank compares the
    # same values, so none refuses alone while the others wait in a collective).
    device = cfg.models.device
    if dist.active and device == "auto":
        device = launched_device() or "auto"  # accelerate's cuda:<local rank> (or cpu)
    models_cfg = dataclasses.replace(cfg.models, device=device)
    resume_from = find_resume(cfg, out)
    # Build zoo models and fixtures missing on this machine *before* seeding: a build draws from torch's RNG
    # (from_config initialisation) or reseeds it (the fixtures), so on a cold cache the first run would
    # otherwise sample differently from every later run with the same seed.
    build_models(cfg)
    seed_everything(cfg.seed)  # before loading: LoRA's initialisation draws from torch's RNG
    with sharding.every_process_loads():
        student, teacher = load_student(models_cfg), load_teacher(models_cfg)
    if SPEECH in active_modalities(cfg) and not student.is_speech:
        raise ConfigError(
            f"student {cfg.models.student!r} is a text LLM; set loss.lam=1 to train on text only"
        )
    vocab = check_pair(student, teacher)
    teacher.eos_ids = student.eos_ids  # one stopping rule for both samplers: every EOS id of either model
    banned = student.multimodal_token_ids()  # never sampled, by the student or (offline_kd) the teacher
    r = cfg.rollout
    engine = make_engine(
        r.engine,
        student,
        vocab_size=vocab,
        batch_size=r.batch_size,
        banned_ids=banned,
        seed=cfg.seed,
        tensor_parallel_size=r.vllm_tensor_parallel_size,
        gpu_memory_utilization=r.vllm_gpu_memory_utilization,
        max_model_len=r.vllm_max_model_len,
    )
    teacher_engine = (
        make_engine("hf", teacher, vocab_size=vocab, batch_size=cfg.rollout.batch_size, banned_ids=banned)
        if cfg.loss.kind == "offline_kd"
        else None
    )
    stream = PairStream(
        load_train_pairs(cfg.data, cfg.seed),
        seed=cfg.seed,
        shuffle=cfg.data.shuffle,
        variants=cfg.data.variants,
    )
    eval_pairs = load_eval_pairs(cfg) if (cfg.eval.every or cfg.eval.at_start or cfg.eval.at_end) else []
    sharded = teacher_sharded = sharding.Sharded()
    if strategy == "fsdp":
        after_forward = cfg.distributed.reshard_after_forward
        if after_forward is None:
            after_forward = sharding.launcher_reshard_after_forward()
        sharded = sharding.shard(student, reshard_after_forward=after_forward is not False)
        if cfg.distributed.shard_teacher:
            teacher_sharded = sharding.shard(teacher)
    optimizer = torch.optim.AdamW(
        sharding.optimizer_groups(student),  # layers | the rest: a fused step takes one tensor kind
        fused=True,  # one kernel over all parameters (CPU and CUDA); the per-tensor loop is ~1.5x slower
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # only the main process writes; the others' logs point at the same files and are never appended to
    logs = {name: StepLog(out / f"{name}.jsonl") for name in ("metrics", "rollouts", "eval")}
    run = Run(
        cfg,
        out,
        student,
        teacher,
        vocab,
        engine,
        teacher_engine,
        stream,
        eval_pairs,
        optimizer,
        scheduler,
        logs,
        dist=dist,
        seed_per_prompt=cfg.rollout.seed_per_prompt
        if cfg.rollout.seed_per_prompt is not None
        else dist.active,
        sharded=sharded,
        teacher_sharded=teacher_sharded,
        device=device,
        banned_ids=list(banned),
    )
    if cfg.eval.gap_tasks:
        run.builtin_hooks.append(GapEvalHook(cfg, out))
    if resume_from is not None:
        restore_checkpoint(run, resume_from)
    elif dist.is_main:
        for log in logs.values():
            log.truncate_to(0, 0)  # a run that died before its first checkpoint starts over cleanly
    if dist.is_main:
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    dist.barrier()  # nobody starts before the logs are cut back
    say(
        f"xopd-train: {cfg.loss.kind} | student {cfg.models.student} | teacher {cfg.models.teacher} | "
        f"shared vocab {vocab} | {len(stream.pairs)} train pairs, {len(eval_pairs)} held-out | "
        f"{'resumed at step ' + str(run.step) if resume_from else 'fresh start'} | output {out}"
        + (f" | {dist.world_size} processes, {strategy}" if dist.active else "")
        + (f" ({sharded_share(run)})" if sharded else ""),
        run,
    )
    unread = ignored_recipe_keys(cfg)
    if unread:
        say(
            f"xopd-train: note: the recipe's {', '.join(unread)} do nothing in this {cfg.loss.kind} run (an "
            "override changed the loss the recipe chose)",
            run,
        )
    if needs_reference_answers(cfg):
        missing = [p.id for p in stream.pairs if p.answer is None or not str(p.answer).strip()]
        if missing:
            only_own = "; loss.gkd_student_fraction=1 trains on student samples only"
            raise ConfigError(
                f"loss.kind={cfg.loss.kind} trains on reference answers, and {len(missing)} training prompts "
                f"have none (first: {missing[0]!r})" + (only_own if cfg.loss.kind == "gkd" else "")
            )
    if cfg.loss.kind == "offline_kd":
        run.kd_answers = fixed_teacher_answers(run)
    return run


def needs_reference_answers(cfg: RunConfig) -> bool:
    """sft trains on the reference answers; gkd on them for the prompts it does not sample (fraction < 1)."""
    return cfg.loss.kind == "sft" or (cfg.loss.kind == "gkd" and cfg.loss.gkd_student_fraction < 1)


def kd_sampling(cfg: RunConfig) -> SamplingParams:
    """offline_kd's decoding: ``loss.kd_samples_per_prompt`` answers (default ``rollout.n``) per prompt at the
    rollout temperature, top_p and max_new_tokens."""
    r, n = cfg.rollout, cfg.loss.kd_samples_per_prompt
    n = n if n is not None else r.n
    return SamplingParams(n=n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)


def fixed_teacher_answers(run: Run) -> TeacherAnswers:
    """offline_kd's fixed set: the teacher's answers to every training prompt, read from the cache
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
        say=lambda line: say(line, run),
        prompts_per_round=max(1, cfg.rollout.batch_size // params.n),
        gathered=run.teacher_sharded.gathered,
        progress=cfg.logging.progress,
    )


def build_models(cfg: RunConfig) -> None:
    """Build the student's and teacher's zoo models or fixtures if this machine has not yet (first use),
    leaving the global RNGs as they were. Anything else (hub ids, paths) is loaded later as usual."""
    from xopd.zoo import resolve as resolve_zoo

    with rng_untouched():
        for name in dict.fromkeys((cfg.models.student, cfg.models.teacher)):
            if name.startswith("fixture:"):
                resolve_model_name(name)
            else:
                resolve_zoo(name)  # a zoo name builds (under a file lock); anything else comes back unchanged


@contextlib.contextmanager
def rng_untouched() -> Any:
    """Run the block, then put python's, numpy's and torch's (CPU and CUDA) global RNGs back as they were."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def parallel_strategy(cfg: RunConfig, dist: Dist) -> str:
    """``single`` (one process), ``ddp`` or ``fsdp`` (``auto``: fsdp under accelerate launch --use_fsdp)."""
    if not dist.active:
        return "single"
    strategy = cfg.distributed.strategy
    if strategy == "auto":
        strategy = "fsdp" if sharding.fsdp_requested() else "ddp"
    return strategy


def sharded_share(run: Run) -> str:
    params = [p for _, p in run.student.trainable_parameters()]
    mine, total = sharding.local_numel(params), sum(p.numel() for p in params)
    line = f"this process holds {mine:,} of the {total:,} trained weights, {100 * mine / total:.1f}%"
    if run.teacher_sharded:
        params = list(run.teacher.core.parameters())
        mine, total = sharding.local_numel(params), sum(p.numel() for p in params)
        line += f"; of the teacher's {total:,}, {100 * mine / total:.1f}%"
    return line


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_lambda(cfg: RunConfig) -> Callable[[int], float]:
    """LR multiplier after ``u`` scheduler steps: linear warmup, then constant / linear / cosine decay."""
    s = cfg.schedule

    def f(u: int) -> float:
        if u < s.warmup_steps:
            return (u + 1) / s.warmup_steps
        progress = min(1.0, (u - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
        if s.scheduler == "linear":
            return 1.0 - (1.0 - s.min_lr_ratio) * progress
        if s.scheduler == "cosine":
            return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return f


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (atomic_dir only ever shows finished ones), oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if re.fullmatch(r"step-\d+", d.name) and (d / "state.json").is_file()]
    return sorted(found, key=lambda d: int(d.name.split("-")[1]))


def find_resume(cfg: RunConfig, out: Path) -> Path | None:
    mode = cfg.checkpoint.resume
    existing = checkpoint_dirs(out)
    if mode == "auto":
        return existing[-1] if existing else None
    if mode == "never":
        if existing:
            raise ResumeError(
                f"{out} already holds checkpoints ({existing[-1].name}); with checkpoint.resume=never pick a "
                "new output_dir, or resume with checkpoint.resume=auto"
            )
        return None
    path = Path(mode)
    if not (path / "state.json").is_file():
        raise ResumeError(f"checkpoint.resume={mode!r}: not a checkpoint directory (no state.json)")
    return path


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain numbers only, so trainer_state.pt loads with weights_only=True."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Run, step: int) -> Path:
    """Write ``checkpoints/step-NNNNNN`` atomically (main process), then drop all but the last ``keep_last``.
    Every process holds the same weights and optimizer state (same gradients, same steps), or under FSDP its
    shard of them, gathered here whole: a checkpoint has one format for any number of processes."""
    from safetensors.torch import save_file

    target = run.out / "checkpoints" / f"step-{step:06d}"
    main = run.dist.is_main
    weights = sharding.full_trainable_state(run.student, keep=main)  # collectives under FSDP
    optimizer_state = sharding.full_optimizer_state(run.optimizer, keep=main)
    if not main:
        run.dist.barrier()
        return target
    with atomic_dir(target) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(
            {
                "step": step,
                "optimizer": optimizer_state,
                "scheduler": run.scheduler.state_dict(),
                "rng": rng_state(),
                "data": run.stream.state_dict(),
                "log_sizes": {name: log.size() for name, log in run.logs.items()},
                "skipped": list(run.skipped),
            },
            tmp / "trainer_state.pt",
        )
        (tmp / "config.yaml").write_text(to_yaml(run.cfg))
        state = {
            "step": step,
            "data": run.stream.state_dict(),
            "metrics": run.last_metrics,
            "eval": run.last_eval,
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=float) + "\n")
        _readable(tmp)
    for old in checkpoint_dirs(run.out)[: -run.cfg.checkpoint.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    run.dist.barrier()
    return target


def _readable(folder: Path) -> None:
    """safetensors writes 0600 files; checkpoints and exports should be readable like any other file."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def restore_checkpoint(run: Run, path: Path) -> None:
    """Load weights, optimizer, scheduler, RNG states, data position; cut the logs back to the checkpoint."""
    from safetensors.torch import load_file

    saved_cfg = yaml.safe_load((path / "config.yaml").read_text())
    models = saved_cfg.get("models") if isinstance(saved_cfg, dict) else None
    if (
        isinstance(models, dict)
        and run.cfg.models.device == "auto"
        and re.fullmatch(r"cpu|cuda(:\d+)?", str(models.get("device")))
    ):
        # checkpoints written before the resolved device was kept out of the saved config hold the device
        # `auto` resolved to in the process that wrote them (cpu, cuda:0): the same user setting
        models["device"] = "auto"
    changed = incompatible_changes(saved_cfg, run.cfg)
    if changed:
        raise ResumeError(
            f"cannot resume from {path}: the config differs in {', '.join(changed)} (only schedule.steps, "
            "checkpoint.*, logging.*, eval.* and rollout.batch_size may change); use a new output_dir"
        )
    load_trainable_state(run.student, load_file(str(path / "model.safetensors")))
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    try:
        sharding.load_optimizer_state(run.optimizer, state["optimizer"])
    except ValueError as err:  # e.g. a checkpoint from before the two parameter groups
        raise ResumeError(f"cannot resume from {path}: its optimizer state does not fit ({err})") from err
    run.scheduler.load_state_dict(state["scheduler"])
    run.stream.load_state_dict(state["data"])
    set_rng_state(state["rng"])
    run.step = int(state["step"])
    run.skipped = list(state.get("skipped", []))
    if run.dist.is_main:
        for name, log in run.logs.items():
            log.truncate_to(run.step, state["log_sizes"].get(name))


# ------------------------------------------------------------------------------------------------------------
# one step: the batch, the update
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ModalityBatch:
    """What one modality trains on this step: per-draw prompts and the sequences (rows -> draw index)."""

    modality: str
    student_prompts: list[Prompt]
    teacher_prompts: list[Prompt]
    seqs: Rollouts
    audio_paths: list[str | None]
    sampled_by_student: bool  # True: seqs.sampler_logprobs are the student sampler's (the importance ratio's)
    # gkd's mix: per row, whether the student sampled it (False: a reference answer); None: all rows alike
    student_rows: list[bool] | None = None

    def row_sampled(self, r: int) -> bool:
        """Whether row ``r`` is the student's own sample (its sampler log-probs are real)."""
        return self.sampled_by_student if self.student_rows is None else self.student_rows[r]


@dataclass
class Batch:
    draws: list[Draw]
    parts: dict[str, ModalityBatch]
    sampled_tokens: int  # tokens the student sampled this step (offline_kd's fixed answers: none)


def sampling(cfg: RunConfig) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(n=r.n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p)


def reference_rollouts(run: Run, draws: Sequence[Draw], *, copies: int = 1) -> Rollouts:
    """The fixed targets of sft (and of gkd's off-policy prompts): each draw's reference answer as completion
    ids (answer text + the student's end-of-turn id), ``copies`` identical rows per draw, prompt-major
    (gkd: a gold prompt stands in for its n samples, so every prompt weighs the same in the step's mean)."""
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


def prompt_seed(seed: int, step: int, index: int, role: str) -> int:
    """The seed of the ``index``-th prompt of ``step``'s global batch for ``role`` (a modality's sampling, or
    "gkd": its on-policy draw): the same in whichever process the prompt lands."""
    digest = hashlib.sha256(f"{seed}|{step}|{index}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def teacher_prompt(run: Run, pair: PromptPair) -> Prompt:
    """What the teacher reads for ``pair``: its own chat template around the text version. One function for
    the step's scoring and for offline_kd's cached answers, which are found by these prompt ids."""
    return run.teacher.text_prompt(pair.text, run.cfg.data.system_prompt)


def gkd_on_policy(cfg: RunConfig, step: int, index: int) -> bool:
    """gkd: whether the ``index``-th prompt of ``step``'s global batch trains on the student's own samples
    (probability ``loss.gkd_student_fraction``) or on its reference answer; seeded by (seed, step, index), so
    every process decides the same and a resumed run decides again as before."""
    u = random.Random(prompt_seed(cfg.seed, step, index, "gkd")).random()  # in [0, 1)
    return u < cfg.loss.gkd_student_fraction


def make_batch(run: Run, draws: list[Draw], step: int) -> Batch:
    """This process's share of the step's global batch ``draws`` and the sequences each modality trains on:
    the student's samples (xopd; gkd's on-policy prompts), the reference answers (sft; gkd's other prompts) or
    the teacher's fixed answers (offline_kd, from the cache)."""
    cfg = run.cfg
    kind = cfg.loss.kind
    mine = run.dist.shard_range(len(draws))
    draws = [draws[i] for i in mine]

    def seeds(role: str, keep: Sequence[int] | None = None) -> list[int] | None:
        chosen = list(mine) if keep is None else [mine[k] for k in keep]
        return [prompt_seed(cfg.seed, step, i, role) for i in chosen] if run.seed_per_prompt else None

    teacher_prompts = [teacher_prompt(run, d.pair) for d in draws]
    shared: Rollouts | None = None
    sampled = 0
    if kind == "sft":
        shared = reference_rollouts(run, draws)
    elif kind == "offline_kd":
        shared = run.kd_answers.rollouts(teacher_prompts)  # the fixed set: nothing sampled while training
    # gkd: per prompt, the student's own samples or its reference answer (n copies: it weighs the same)
    on_policy = [gkd_on_policy(cfg, step, i) for i in mine] if kind == "gkd" else [True] * len(draws)
    own = [k for k, on in enumerate(on_policy) if on]
    gold = [k for k, on in enumerate(on_policy) if not on]
    parts = {}
    # FSDP: whole layers while sampling (each process samples a different number of tokens)
    with run.sharded.gathered() if shared is None else contextlib.nullcontext():
        for m in run.modalities:
            pairs, variants = [d.pair for d in draws], [d.variant for d in draws]
            prompts, paths = student_prompts(run.student, pairs, m, variants, cfg.data.system_prompt)
            student_rows = None
            if shared is not None:
                seqs = shared
            elif not gold:
                seqs = run.engine.generate(prompts, sampling(cfg), seeds(m))
                sampled += int(seqs.mask.sum())
            else:
                seqs, student_rows = mixed_rollouts(run, draws, prompts, own, gold, seeds(m, own))
                sampled += int(seqs.mask[torch.tensor(student_rows, dtype=torch.bool)].sum())
            parts[m] = ModalityBatch(
                m, prompts, teacher_prompts, seqs, paths, sampled_by_student=shared is None and not gold,
                student_rows=student_rows,
            )  # fmt: skip
    return Batch(draws, parts, sampled)


def mixed_rollouts(
    run: Run, draws: Sequence[Draw], prompts: Sequence[Prompt], own: Sequence[int], gold: Sequence[int],
    seeds: list[int] | None,
) -> tuple[Rollouts, list[bool]]:
    """gkd's mix for one modality: the student's n samples for the prompts ``own``, n copies of the reference
    answer for the prompts ``gold``; rows prompt-major over all of ``draws``, and which rows were sampled."""
    n = run.cfg.rollout.n
    parts, flags = [], []
    if own:
        r = run.engine.generate([prompts[k] for k in own], sampling(run.cfg), seeds)
        parts.append(Rollouts(torch.tensor(own)[r.prompt_index], r.ids, r.mask, r.sampler_logprobs))
        flags += [True] * len(r)
    ref = reference_rollouts(run, [draws[k] for k in gold], copies=n)
    parts.append(Rollouts(torch.tensor(gold)[ref.prompt_index], ref.ids, ref.mask, ref.sampler_logprobs))
    flags += [False] * len(ref)
    merged = pad_rollouts(parts)
    order = torch.argsort(merged.prompt_index, stable=True)  # prompt-major, each prompt's rows in order
    seqs = Rollouts(
        merged.prompt_index[order], merged.ids[order], merged.mask[order], merged.sampler_logprobs[order]
    )
    return seqs, [flags[i] for i in order.tolist()]


@dataclass
class TokenStats:
    """Per-row, per-token values of one micro-batch of one modality, for metrics and the rollout log."""

    rows: list[int]
    mask: Tensor
    student_lp: Tensor
    teacher_lp: Tensor
    advantage: Tensor
    topk_ids: Tensor
    topk_lp: Tensor
    teacher_entropy: Tensor
    student_entropy: Tensor | None  # only on steps whose rollouts are logged (an extra pass over the head)
    # the importance ratio on this micro-batch's tokens: sum, min, max, clipped count (X-OPD on own samples)
    ratio: dict[str, float] | None = None


@dataclass
class StepResult:
    loss: float
    modality_loss: dict[str, float]
    grad_norm: float
    lr: float
    skipped: bool
    stats: dict[str, list[TokenStats]]


def logs_rollouts(cfg: RunConfig, step: int) -> bool:
    return cfg.logging.rollout_log and step % cfg.logging.rollout_log_every == 0


def update(run: Run, batch: Batch, step: int, *, log_tokens: bool = False) -> StepResult:
    """Micro-batches of prompts: both modalities' losses, combined with lam, backpropagated; one update."""
    cfg = run.cfg
    params = [p for _, p in run.student.trainable_parameters()]
    run.optimizer.zero_grad(set_to_none=True)
    # the denominators are the global batch's counts, so the processes' summed gradients are the batch's
    counts = run.dist.sum(
        [x for m in run.modalities for x in (len(batch.parts[m].seqs), int(batch.parts[m].seqs.mask.sum()))]
    )
    totals = {
        m: {"sequences": int(counts[2 * k]), "tokens": int(counts[2 * k + 1])}
        for k, m in enumerate(run.modalities)
    }
    stats: dict[str, list[TokenStats]] = {m: [] for m in run.modalities}
    loss_sum, mod_sum = 0.0, {m: 0.0 for m in run.modalities}
    size = cfg.optim.micro_batch_prompts
    for start in range(0, len(batch.draws), size):
        group = set(range(start, min(start + size, len(batch.draws))))
        mod_losses: dict[str, Tensor] = {}
        for m in run.modalities:
            part = batch.parts[m]
            rows = [r for r, i in enumerate(part.seqs.prompt_index.tolist()) if i in group]
            mod_losses[m], st = modality_loss(run, part, rows, totals[m], log_tokens=log_tokens)
            stats[m].append(st)
            mod_sum[m] += float(mod_losses[m].detach())
        loss = losses.xopd_loss(mod_losses.get(TEXT), mod_losses.get(SPEECH), lam=cfg.loss.lam)
        if step in cfg.debug.nan_loss_steps:
            # debug.nan_loss_steps: exercise the skip path with a real NaN gradient
            loss = loss * float("nan")
        loss.backward()
        loss_sum += float(loss.detach())
    # sum over processes: the global batch's gradient everywhere (FSDP's reduce-scatter already summed the
    # sharded layers')
    run.dist.reduce_gradients([p for p in params if not sharding.is_sharded(p)])
    loss_sum, *mod_values = run.dist.sum([loss_sum, *(mod_sum[m] for m in run.modalities)])
    mod_sum = dict(zip(run.modalities, mod_values, strict=True))
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
    grad_norm = sharding.clip_grad_norm(params, max_norm)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used (before the schedule moves on)
    skipped = not (math.isfinite(loss_sum) and math.isfinite(grad_norm))
    if not skipped:
        run.optimizer.step()
        with run.sharded.gathered() if run.engine.pushes_weights else contextlib.nullcontext():
            run.engine.sync_weights()
    run.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # after a skipped first step torch warns that the scheduler ran first
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()  # the schedule follows the step count, skipped steps included
    return StepResult(loss_sum, mod_sum, grad_norm, lr, skipped, stats)


def modality_loss(
    run: Run, part: ModalityBatch, rows: list[int], totals: dict[str, int], *, log_tokens: bool = False
) -> tuple[Tensor, TokenStats]:
    """One modality's loss on this micro-batch (normalised by the step's global counts) + its token stats."""
    cfg, lc = run.cfg, run.cfg.loss
    sub = part.seqs.select(rows)
    index = sub.prompt_index.tolist()
    s_prompts = [part.student_prompts[i] for i in index]
    t_prompts = [part.teacher_prompts[i] for i in index]
    ids, mask = sub.ids, sub.mask
    with torch.no_grad():
        t_hidden = run.teacher.completion_hidden(t_prompts, ids, mask)
    dev = t_hidden.device
    ids_d, mask_d = ids.to(dev), mask.to(dev)
    t = head_scores(
        t_hidden,
        *run.teacher.head,
        ids_d,
        mask_d,
        vocab_size=run.vocab_size,
        topk=cfg.logging.topk,
        chunk_size=cfg.models.chunk_size,
    )
    s_hidden = run.student.completion_hidden(s_prompts, ids, mask)
    s_w, s_b = run.student.head

    def student_lp(hidden: Tensor) -> Tensor:  # log pi_S of the sampled ids, chunked over the vocabulary
        return losses.token_logprobs(
            hidden, s_w, ids_d, mask_d, bias=s_b, vocab_size=run.vocab_size, chunk_size=cfg.models.chunk_size
        )

    norm = (
        {"num_sequences": totals["sequences"]}
        if lc.normalize == "sequence"
        else {"num_tokens": totals["tokens"]}
    )
    ratio_stats: dict[str, float] | None = None  # X-OPD on the student's own samples only
    if lc.kind == "gkd":
        t_w, t_b = run.teacher.head
        div = losses.chunked_divergence(
            lc.divergence,
            s_hidden,
            s_w,
            t_hidden,
            t_w,
            mask_d,
            vocab_size=run.vocab_size,
            chunk_size=cfg.models.chunk_size,
            student_bias=s_b,
            teacher_bias=t_b,
            beta=lc.beta,
            k=lc.topk,
        )
        loss = losses.masked_mean(div, mask_d, normalize=lc.normalize, **norm)
        with torch.no_grad():
            s_lp = student_lp(s_hidden.detach())  # for the log and metrics only
        adv = losses.xopd_advantage(t.logprobs, s_lp, mask_d)
    else:
        s_lp = student_lp(s_hidden)
        if lc.kind == "xopd":
            if lc.reward == "power":
                adv = losses.power_opd_reward(t.logprobs, s_lp, mask_d, alpha=lc.power_alpha)
            else:
                adv = losses.xopd_advantage(t.logprobs, s_lp, mask_d)
            old, ratio_lp = None, s_lp
            if part.sampled_by_student:
                # the ratio compares one distribution on both sides: the sampler's (temperature, top-p,
                # banned ids), which is what sub.sampler_logprobs holds; the advantage above stays raw (T = 1)
                old = sub.sampler_logprobs.to(dev)
                r = cfg.rollout
                ratio_lp = losses.sampler_token_logprobs(
                    s_hidden, s_w, ids_d, mask_d, bias=s_b, vocab_size=run.vocab_size,
                    temperature=r.temperature, top_p=r.top_p, banned_ids=run.banned_ids,
                    banned_first=run.engine.bans_before_warping, chunk_size=cfg.models.chunk_size,
                )  # fmt: skip
            loss, pst = losses.xopd_policy_loss(
                ratio_lp, old, adv, mask_d, clip_eps=lc.clip_eps, normalize=lc.normalize, **norm
            )
            n_tok = float(pst["tokens"])
            ratio_stats = {"sum": float(pst["ratio_mean"]) * n_tok, "min": float(pst["ratio_min"]),
                           "max": float(pst["ratio_max"]), "clipped": float(pst["clip_frac"]) * n_tok,
                           "tokens": n_tok} if n_tok else None  # fmt: skip
        else:  # sft / offline_kd: cross-entropy on the fixed target ids, losses.sft_loss on these log-probs
            loss = -losses.masked_mean(s_lp, mask_d, normalize=lc.normalize, **norm)
            adv = losses.xopd_advantage(t.logprobs, s_lp, mask_d)
    s_ent = None
    if log_tokens:
        with torch.no_grad():
            s_ent = head_scores(
                s_hidden.detach(),
                s_w,
                s_b,
                ids_d,
                mask_d,
                vocab_size=run.vocab_size,
                topk=0,
                chunk_size=cfg.models.chunk_size,
            ).entropy.cpu()
    st = TokenStats(
        rows,
        mask.cpu(),
        s_lp.detach().cpu(),
        t.logprobs.cpu(),
        adv.detach().cpu(),
        t.topk_ids.cpu(),
        t.topk_logprobs.cpu(),
        t.entropy.cpu(),
        s_ent,
        ratio_stats,
    )
    return loss, st


# ------------------------------------------------------------------------------------------------------------
# reporting: metrics line, metrics.jsonl, rollout log
# ------------------------------------------------------------------------------------------------------------


def say(message: str, run: Run | None = None) -> None:
    """A line on stderr above the progress bar (from the main process only)."""
    from tqdm.auto import tqdm

    if run is None or run.dist.is_main:
        tqdm.write(message, file=sys.stderr)


def progress_bar(run: Run) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=run.cfg.schedule.steps,
        initial=run.step,
        desc="xopd-train",
        unit="step",
        disable=not (run.cfg.logging.progress and run.dist.is_main),
        file=sys.stderr,
        dynamic_ncols=True,
    )


def modality_sums(stats: list[TokenStats]) -> tuple[float, int]:
    """(sum of ``student_lp - teacher_lp`` over tokens, token count) of one modality's micro-batches."""
    num = sum(float(((s.student_lp - s.teacher_lp) * s.mask).sum()) for s in stats)
    return num, sum(int(s.mask.sum()) for s in stats)


def ratio_metrics(run: Run, result: StepResult) -> dict[str, float]:
    """The importance ratio pi_theta / pi_sampler per modality (mean, min, max over tokens) and the share of
    tokens whose clipped branch was active: ~1 and ~0 on-policy; the first thing to read when a run misbehaves."""
    out: dict[str, float] = {}
    for m in run.modalities:
        parts = [s.ratio for s in result.stats[m] if s.ratio is not None]
        local = [sum(p["sum"] for p in parts), sum(p["clipped"] for p in parts), sum(p["tokens"] for p in parts)]
        total, clipped, tokens = run.dist.sum(local)
        ends = [(p["min"], p["max"]) for p in parts]
        ends = [e for rank in run.dist.gather(ends) for e in rank]
        if tokens:
            out[f"ratio_mean_{m}"] = total / tokens
            out[f"ratio_min_{m}"] = min(e[0] for e in ends)
            out[f"ratio_max_{m}"] = max(e[1] for e in ends)
            out[f"clip_frac_{m}"] = clipped / tokens
    return out


def report(run: Run, step: int, batch: Batch, result: StepResult, seconds: float, bar: Any) -> None:
    cfg = run.cfg
    # per-modality sums (over this process's rows), then summed over processes
    local: list[float] = [batch.sampled_tokens]
    for m in run.modalities:
        seqs = batch.parts[m].seqs
        local += [
            *modality_sums(result.stats[m]),
            float(seqs.lengths.sum()),
            len(seqs),
            float(seqs.finished(run.student.eos_ids).sum()),
        ]
    total = run.dist.sum(local)
    sampled, per_mod = total[0], total[1:]
    metrics: dict[str, Any] = {
        "step": step,
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "lr": result.lr,
        "skipped": result.skipped,
        "seconds": round(seconds, 3),
        # completion tokens trained on (both modalities) per second of the whole step, sampling included
        "tokens_per_s": sum(per_mod[5 * k + 2] for k in range(len(run.modalities))) / max(seconds, 1e-9),
        "sampled_tokens": int(sampled),
    }
    for k, m in enumerate(run.modalities):
        kl_num, kl_den, len_sum, rows, finished = per_mod[5 * k : 5 * k + 5]
        metrics[f"kl_{m}"] = kl_num / kl_den if kl_den else float("nan")
        metrics[f"loss_{m}"] = result.modality_loss[m]
        metrics[f"len_{m}"] = len_sum / max(rows, 1)
        metrics[f"eos_rate_{m}"] = finished / max(rows, 1)
    metrics.update(ratio_metrics(run, result))
    if result.skipped:
        run.skipped.append(step)
    run.last_metrics = metrics
    records = None
    if logs_rollouts(cfg, step):
        records = [r for part in run.dist.gather(rollout_records(run, step, batch, result)) for r in part]
        if cfg.logging.max_rollouts_per_step is not None:
            records = records[: cfg.logging.max_rollouts_per_step]
    if not run.dist.is_main:
        return
    run.logs["metrics"].append([metrics])
    if records is not None:
        run.logs["rollouts"].append(records)
    kl = " | ".join(f"kl_{m} {metrics[f'kl_{m}']:.4f}" for m in run.modalities)
    line = (
        f"step {step}/{cfg.schedule.steps} | loss {result.loss:.4f} | {kl}"
        f" | tok/s {metrics['tokens_per_s']:.1f}"
        f" | lr {metrics['lr']:.2e} | gnorm {result.grad_norm:.3g}"
    )
    if result.skipped:
        line += " | SKIPPED: non-finite loss or gradient, no update"
    say(line)
    bar.update(1)


def rollout_records(run: Run, step: int, batch: Batch, result: StepResult) -> list[dict[str, Any]]:
    records = []
    cap = run.cfg.logging.max_rollouts_per_step
    for m in run.modalities:
        part = batch.parts[m]
        index = part.seqs.prompt_index.tolist()
        sample_no = sample_numbers(index)
        finished = part.seqs.finished(run.student.eos_ids).tolist()
        for st in result.stats[m]:
            for j, r in enumerate(st.rows):
                if cap is not None and len(records) >= cap:
                    return records
                t = int(part.seqs.mask[r].sum())
                d = batch.draws[index[r]]
                records.append(
                    rollout_record(
                        step=step,
                        kind=run.cfg.loss.kind,
                        prompt_id=d.pair.id,
                        modality=m,
                        sample=sample_no[r],
                        prompt_text=d.pair.text,
                        spoken_text=d.pair.spoken if m == SPEECH else None,
                        audio_path=copy_audio(run.out, part.audio_paths[index[r]], run.audio_copies),
                        variant=d.variant if m == SPEECH else None,
                        token_ids=part.seqs.ids[r, :t].tolist(),
                        student_lp=st.student_lp[j, :t].tolist(),
                        teacher_lp=st.teacher_lp[j, :t].tolist(),
                        advantage=st.advantage[j, :t].tolist(),
                        sampler_lp=part.seqs.sampler_logprobs[r, :t].tolist()
                        if part.row_sampled(r)
                        else None,
                        finished=finished[r],
                        tokenizer=run.student.tokenizer,
                        topk_ids=st.topk_ids[j, :t].tolist(),
                        topk_lp=st.topk_lp[j, :t].tolist(),
                        teacher_entropy=st.teacher_entropy[j, :t].tolist(),
                        student_entropy=None
                        if st.student_entropy is None
                        else st.student_entropy[j, :t].tolist(),
                    )
                )
    return records


# ------------------------------------------------------------------------------------------------------------
# evaluation: held-out teacher-student reverse KL
# ------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def heldout_reverse_kl(
    student: ModelAdapter,
    teacher: ModelAdapter,
    pairs: Sequence[PromptPair],
    *,
    vocab_size: int,
    modalities: Sequence[str] = (TEXT, SPEECH),
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 1234,
    batch_size: int = 16,
    system: str | None = None,
    variant: str = "clean",
) -> dict[str, float]:
    """Mean teacher-student reverse KL on held-out pairs, per modality, on the student's own samples.

    ``kl_<m>``: exact full-vocabulary KL(pi_S || pi_T) per position (chunked), averaged over all sampled
    tokens; ``kl_sampled_<m>``: the sampled-token estimate (mean of ``lp_S - lp_T``); ``len_<m>``;
    ``kl_mean``: the mean of ``kl_<m>`` over modalities. Samples come from a forked RNG seeded with ``seed``:
    every call draws the same way for the same weights, and the caller's RNG stream is left as it was.
    """
    engine = make_engine(
        "hf", student, vocab_size=vocab_size, batch_size=batch_size, banned_ids=student.multimodal_token_ids()
    )
    params = SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=temperature)
    out: dict[str, float] = {}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for m in modalities:
            t_prompts = [teacher.text_prompt(p.text, system) for p in pairs]
            if m == TEXT:
                s_prompts = [student.text_prompt(p.text, system) for p in pairs]
            else:
                s_prompts = [
                    student.speech_prompt(speech_audio(p, variant)[0], p.instruction, system) for p in pairs
                ]
            rolls = engine.generate(s_prompts, params)
            kl_sum = lp_sum = 0.0
            for start in range(0, len(rolls), batch_size):
                sub = rolls.select(range(start, min(start + batch_size, len(rolls))))
                idx = sub.prompt_index.tolist()
                s_h = student.completion_hidden([s_prompts[i] for i in idx], sub.ids, sub.mask)
                t_h = teacher.completion_hidden([t_prompts[i] for i in idx], sub.ids, sub.mask)
                mask = sub.mask.to(s_h.device)
                (s_w, s_b), (t_w, t_b) = student.head, teacher.head
                kl = losses.reverse_kl_full(
                    s_h,
                    s_w,
                    t_h.to(s_h.device),
                    t_w,
                    mask,
                    vocab_size=vocab_size,
                    student_bias=s_b,
                    teacher_bias=t_b,
                    chunk_size=student.chunk_size,
                )
                ids = sub.ids.to(s_h.device)
                s_lp = losses.token_logprobs(s_h, s_w, ids, mask, bias=s_b, vocab_size=vocab_size)
                t_lp = losses.token_logprobs(
                    t_h.to(s_h.device), t_w, ids, mask, bias=t_b, vocab_size=vocab_size
                )
                kl_sum += float(kl.sum())
                lp_sum += float((s_lp - t_lp).sum())
            tokens = max(1, int(rolls.mask.sum()))
            out[f"kl_{m}"] = kl_sum / tokens
            out[f"kl_sampled_{m}"] = lp_sum / tokens
            out[f"len_{m}"] = float(rolls.lengths.float().mean())
    out["kl_mean"] = sum(out[f"kl_{m}"] for m in modalities) / len(modalities)
    return out


def evaluate(run: Run, step: int, hooks: Sequence[EvalHook] = ()) -> dict[str, Any]:
    """The eval hook (main process): held-out reverse KL (both modalities), the xopd-eval gap on
    ``eval.gap_tasks`` (reports under ``evals/step-NNNNNN/``), then extra hooks."""
    hooks = [*run.builtin_hooks, *hooks]
    if not run.eval_pairs and not hooks:
        return {}
    with run.sharded.gathered():  # FSDP: the student's layers whole in every process
        # a sharded teacher's forwards are collectives: then every process computes the held-out KL (the
        # same samples, the same numbers) and the main one keeps it
        everyone = bool(run.teacher_sharded)
        # nothing an evaluation does (a cold TTS cache rendering the gap tasks' audio, a custom hook) may
        # move training's RNG: a run trains the same with or without its evaluations
        with rng_untouched():
            record = _evaluate(run, step, hooks, heldout=run.dist.is_main or everyone)
    return record if run.dist.is_main else {}


def _evaluate(run: Run, step: int, hooks: Sequence[EvalHook], *, heldout: bool) -> dict[str, Any]:
    cfg = run.cfg
    record: dict[str, Any] = {"step": step}
    if run.eval_pairs and heldout:
        modalities = [TEXT, SPEECH] if run.student.is_speech else [TEXT]
        record.update(
            heldout_reverse_kl(
                run.student,
                run.teacher,
                run.eval_pairs,
                vocab_size=run.vocab_size,
                modalities=modalities,
                n=cfg.eval.n,
                max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                temperature=cfg.eval.temperature,
                seed=cfg.eval.seed,
                batch_size=cfg.rollout.batch_size,
                system=cfg.data.system_prompt,
                variant=cfg.data.variants[0],
            )
        )
    if not run.dist.is_main:
        return record
    for hook in hooks:
        record.update(hook(step, run.student))
    run.last_eval = record
    run.logs["eval"].append([record])
    shown = " | ".join(
        f"{k} {v:.4f}" for k, v in record.items() if k.startswith(("kl_", "gap_")) and isinstance(v, float)
    )
    say(f"eval step {step} | {shown}")
    return record


# ------------------------------------------------------------------------------------------------------------
# the end
# ------------------------------------------------------------------------------------------------------------


def finish(run: Run) -> dict[str, Any]:
    cfg = run.cfg
    final = None
    student = run.student
    if cfg.checkpoint.export_final and run.sharded:
        # FSDP: the trained weights gathered whole into a fresh unsharded copy (LoRA merges on it)
        state = sharding.full_trainable_state(run.student, keep=run.dist.is_main)
        if run.dist.is_main:
            with sharding.every_process_loads():
                student = load_student(dataclasses.replace(cfg.models, device="cpu"))
            load_trainable_state(student, state)
    if not run.dist.is_main:
        run.dist.barrier()
        return {"steps": run.step, "rank": run.dist.rank}
    if cfg.checkpoint.export_final:
        with atomic_dir(run.out / "final") as tmp:
            export_pretrained(student, tmp)
            (tmp / "xopd_train.json").write_text(
                json.dumps({"step": run.step, "config": to_dict(cfg)}, indent=2)
            )
            _readable(tmp)
        final = str(run.out / "final")
    summary = {
        "steps": run.step,
        "skipped_steps": run.skipped,
        "last_metrics": run.last_metrics,
        "last_eval": run.last_eval,
        "final_model": final,
        "checkpoints": [str(d) for d in checkpoint_dirs(run.out)],
        "logs": {name: str(log.path) for name, log in run.logs.items()},
    }
    atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    run.dist.barrier()
    say(f"xopd-train: done at step {run.step}; skipped steps {run.skipped or 'none'}; outputs in {run.out}")
    return summary
