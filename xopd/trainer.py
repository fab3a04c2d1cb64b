"""The X-OPD training loop (arXiv 2603.24596) and its baselines, on the same prompts and budget.

:func:`train` is the loop, top to bottom; :func:`update` is one step. ``loss.kind`` names an
:class:`xopd.objectives.Objective`, looked up once: which sequences each prompt trains on (the student's own
samples, reference answers, the teacher's cached answers: :mod:`xopd.batches`) and its loss on a micro-batch.
For ``xopd`` (the default) each step samples ``n`` rollouts from the current student on the speech prompt S
(cross-modal) and ``n`` on the text prompt T (in-modal); the teacher reads its own chat-formatted T followed
by the same completion ids and scores every token; the detached advantage drives the importance-weighted
policy gradient. Every kind combines its modalities as ``lam * L_text + (1 - lam) * L_speech``. Micro-batches
of ``optim.micro_batch_prompts`` prompts are backpropagated one after the other with the *global* rollout (or
token) count as denominator, so the accumulated gradient is the full batch's (TRL #4719); then gradient
clipping, AdamW and the LR schedule. A non-finite loss or gradient norm skips the update (said on the metrics
line and in ``metrics.jsonl``). Under ``accelerate launch`` every process takes its share of each batch and
the gradients are summed (DDP, or FSDP with the decoder layers sharded).

Outputs under ``output_dir``: ``metrics.jsonl`` and ``rollouts.jsonl`` (:mod:`xopd.metrics`), ``eval.jsonl``
(held-out reverse KL, :mod:`xopd.scoring`, and the eval hooks), ``checkpoints/step-NNNNNN/`` and ``final/``
(:mod:`xopd.checkpoint`), ``summary.json``. A run restarted on the same ``output_dir`` resumes from its latest
checkpoint exactly. ``callbacks`` (:class:`Callback`) observe the loop without changing it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xopd import checkpoint, losses, sharding
from xopd.batches import TEACHER, Batch, check_reference_answers, fixed_teacher_answers, make_batch
from xopd.checkpoint import ResumeError  # noqa: F401  (the CLI's expected error xopd.trainer:ResumeError)
from xopd.config import ConfigError, RunConfig, ignored_recipe_keys, to_yaml
from xopd.data import PairStream, load_eval_pairs, load_train_pairs
from xopd.distributed import Dist, launched_device
from xopd.distributed import init as init_distributed
from xopd.evalhook import GapEvalHook
from xopd.engines import make_engine
from xopd.metrics import StepResult, Tally, TokenStats, logs_rollouts, progress_bar, report, say
from xopd.models import check_pair, load_student, load_teacher, resolve_model_name
from xopd.objectives import OBJECTIVES, micro_batch_loss
from xopd.paths import atomic_write_text
from xopd.rolloutlog import StepLog
from xopd.scoring import heldout_reverse_kl
from xopd.state import SPEECH, TEXT, EvalHook, Run, active_modalities  # noqa: F401  (xopd.trainer:Run, ...)
from xopd.zoo import resolve as resolve_zoo


class Callback:
    """Observes the loop in every process; override the hooks you need (each does nothing by default)."""

    def on_setup(self, run: Run) -> None:
        """After setup (models loaded, checkpoint restored), before the first step."""

    def on_update_end(self, run: Run, step: int, batch: Batch, result: StepResult) -> None:
        """After the step's update, before its metrics are reduced and written."""

    def on_step_end(self, run: Run, step: int, batch: Batch, result: StepResult, metrics: dict) -> None:
        """After the step's report, before its evaluation and checkpoint (if any)."""

    def on_eval(self, run: Run, step: int, record: dict[str, Any]) -> None:
        """After an evaluation, with its ``eval.jsonl`` record (main process)."""


def train(
    cfg: RunConfig, *, eval_hooks: Sequence[EvalHook] = (), callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """Run (or resume) the training described by ``cfg``; returns the summary also written to summary.json."""
    # setup: models, vocabulary check, objective, data, optimizer, schedule, logs; the latest checkpoint
    run = setup(cfg)
    for cb in callbacks:
        cb.on_setup(run)
    bar = progress_bar(run)
    if run.step == 0 and cfg.eval.at_start:
        evaluate(run, 0, eval_hooks, callbacks)
    for step in range(run.step + 1, cfg.schedule.steps + 1):
        started = time.perf_counter()
        # data: the step's global batch of paired prompts (T, S)
        draws = run.stream.next_batch(cfg.schedule.batch_prompts)
        # batch: this process's share, and per modality the sequences the objective trains on (xopd: n
        # rollouts of the current student on S and on T)
        batch = make_batch(run, draws, step)
        # update: teacher scores -> objective per modality -> lam -> backward -> clip -> AdamW -> schedule
        result = update(run, batch, step, log_tokens=logs_rollouts(cfg, step))
        for cb in callbacks:
            cb.on_update_end(run, step, batch, result)
        # report: named metrics reduced over processes -> metrics line, metrics.jsonl, rollout log
        metrics = report(run, step, batch, result, time.perf_counter() - started, bar)
        for cb in callbacks:
            cb.on_step_end(run, step, batch, result, metrics)
        # evaluation and checkpoint, on their schedules (and after the last step)
        last = step == cfg.schedule.steps
        if (cfg.eval.every and step % cfg.eval.every == 0) or (last and cfg.eval.at_end):
            evaluate(run, step, eval_hooks, callbacks)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or last:
            checkpoint.save_checkpoint(run, step)
        run.step = step
    run.dist.barrier()
    bar.close()
    # the end: final export, summary.json
    try:
        return finish(run)
    finally:
        run.engine.close()


# ------------------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------------------


def setup(cfg: RunConfig) -> Run:
    out, dist, objective = Path(cfg.output_dir), init_distributed(), OBJECTIVES[cfg.loss.kind]
    strategy, device = placement(cfg, dist)
    resume_from = checkpoint.find_resume(cfg, out)
    # Build zoo models and fixtures missing on this machine *before* seeding: a build draws from torch's RNG
    # (from_config initialisation) or reseeds it (the fixtures), so on a cold cache the first run would
    # otherwise sample differently from every later run with the same seed.
    build_models(cfg)
    checkpoint.seed_everything(cfg.seed)  # before loading: LoRA's initialisation draws from torch's RNG
    models_cfg = dataclasses.replace(cfg.models, device=device)
    with sharding.every_process_loads():
        student, teacher = load_student(models_cfg), load_teacher(models_cfg)
    if SPEECH in active_modalities(cfg) and not student.is_speech:
        raise ConfigError(f"student {cfg.models.student!r} is a text LLM; set loss.lam=1 to train on text")
    vocab = check_pair(student, teacher)
    teacher.eos_ids = student.eos_ids  # one stopping rule for both samplers: every EOS id of either model
    banned = student.multimodal_token_ids()  # never sampled, by the student or the teacher
    r = cfg.rollout
    engine = make_engine(
        r.engine, student, vocab_size=vocab, batch_size=r.batch_size, banned_ids=banned, seed=cfg.seed,
        tensor_parallel_size=r.vllm_tensor_parallel_size, max_model_len=r.vllm_max_model_len,
        gpu_memory_utilization=r.vllm_gpu_memory_utilization,
    )  # fmt: skip
    teacher_engine = None  # the TEACHER source samples the teacher once
    if TEACHER in objective.sources(cfg):
        teacher_engine = make_engine("hf", teacher, vocab_size=vocab, batch_size=r.batch_size,
                                     banned_ids=banned)  # fmt: skip
    pairs = load_train_pairs(cfg.data, cfg.seed)
    stream = PairStream(pairs, seed=cfg.seed, shuffle=cfg.data.shuffle, variants=cfg.data.variants)
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
        lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    # only the main process writes; the others' logs point at the same files and are never appended to
    logs = {name: StepLog(out / f"{name}.jsonl") for name in ("metrics", "rollouts", "eval")}
    per_prompt = cfg.rollout.seed_per_prompt if cfg.rollout.seed_per_prompt is not None else dist.active
    run = Run(
        cfg, out, objective, student, teacher, vocab, engine, teacher_engine, stream, eval_pairs, optimizer,
        scheduler, logs, dist=dist, seed_per_prompt=per_prompt, sharded=sharded,
        teacher_sharded=teacher_sharded, device=device, banned_ids=list(banned),
    )  # fmt: skip
    if cfg.eval.gap_tasks:
        run.builtin_hooks.append(GapEvalHook(cfg, out))
    if resume_from is not None:
        checkpoint.restore_checkpoint(run, resume_from)
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
        say(f"xopd-train: note: the recipe's {', '.join(unread)} do nothing in this {cfg.loss.kind} run (an "
            "override changed the loss the recipe chose)", run)  # fmt: skip
    check_reference_answers(run)
    if TEACHER in objective.sources(cfg):
        run.kd_answers = fixed_teacher_answers(run, say=lambda line: say(line, run))
    return run


def placement(cfg: RunConfig, dist: Dist) -> tuple[str, str]:
    """The parallel strategy (``single``, ``ddp``, ``fsdp``; ``auto``: fsdp under ``accelerate launch
    --use_fsdp``) and this process's device, kept out of cfg: the saved config is the one the user wrote, so
    a checkpoint of ``models.device: auto`` resumes under any number of processes."""
    if dist.world_size > cfg.schedule.batch_prompts:
        raise ConfigError(
            f"schedule.batch_prompts={cfg.schedule.batch_prompts} is smaller than the {dist.world_size} "
            "processes sharing it; every process needs at least one prompt per step"
        )
    strategy = cfg.distributed.strategy if dist.active else "single"
    if strategy == "auto":
        strategy = "fsdp" if sharding.fsdp_requested() else "ddp"
    if strategy == "fsdp" and cfg.schedule.batch_prompts % dist.world_size:
        # a sharded forward is a collective: every process must run as many micro-batches as the others
        raise ConfigError(
            f"distributed.strategy=fsdp: schedule.batch_prompts={cfg.schedule.batch_prompts} must be a "
            f"multiple of the {dist.world_size} processes"
        )
    device = cfg.models.device
    if dist.active and device == "auto":
        device = launched_device() or "auto"  # accelerate's cuda:<local rank> (or cpu)
    return strategy, device


def build_models(cfg: RunConfig) -> None:
    """Build the student's and teacher's zoo models or fixtures if this machine has not yet (first use),
    leaving the global RNGs as they were. Anything else (hub ids, paths) is loaded later as usual."""
    with checkpoint.rng_untouched():
        for name in dict.fromkeys((cfg.models.student, cfg.models.teacher)):
            if name.startswith("fixture:"):
                resolve_model_name(name)
            else:
                resolve_zoo(name)  # a zoo name builds (under a file lock); anything else comes back unchanged


def sharded_share(run: Run) -> str:
    params = [p for _, p in run.student.trainable_parameters()]
    mine, total = sharding.local_numel(params), sum(p.numel() for p in params)
    line = f"this process holds {mine:,} of the {total:,} trained weights, {100 * mine / total:.1f}%"
    if run.teacher_sharded:
        params = list(run.teacher.core.parameters())
        mine, total = sharding.local_numel(params), sum(p.numel() for p in params)
        line += f"; of the teacher's {total:,}, {100 * mine / total:.1f}%"
    return line


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


# ------------------------------------------------------------------------------------------------------------
# one step: the update
# ------------------------------------------------------------------------------------------------------------


def update(run: Run, batch: Batch, step: int, *, log_tokens: bool = False) -> StepResult:
    """Micro-batches of prompts: each modality's objective loss, combined with lam, backpropagated; one
    update."""
    cfg, modalities = run.cfg, run.modalities
    params = [p for _, p in run.student.trainable_parameters()]
    run.optimizer.zero_grad(set_to_none=True)
    # the denominators are the global batch's counts, so the processes' summed gradients are the batch's
    counts = Tally()
    for m in modalities:
        counts.add(f"sequences_{m}", len(batch.parts[m].seqs))
        counts.add(f"tokens_{m}", int(batch.parts[m].seqs.mask.sum()))
    c = counts.reduce(run.dist)
    totals = {m: {"sequences": int(c[f"sequences_{m}"]), "tokens": int(c[f"tokens_{m}"])} for m in modalities}
    stats: dict[str, list[TokenStats]] = {m: [] for m in modalities}
    loss_sums, metrics = Tally(), Tally()
    size = cfg.optim.micro_batch_prompts
    for start in range(0, len(batch.draws), size):
        group = set(range(start, min(start + size, len(batch.draws))))
        mod_losses = {}
        for m in modalities:
            part = batch.parts[m]
            rows = [r for r, i in enumerate(part.seqs.prompt_index.tolist()) if i in group]
            mod_losses[m], st, own = micro_batch_loss(run, part, rows, totals[m], log_tokens=log_tokens)
            stats[m].append(st)
            metrics.merge(own, suffix=f"_{m}")  # the objective's own metrics
            loss_sums.add(f"loss_{m}", float(mod_losses[m].detach()))
        loss = losses.xopd_loss(mod_losses.get(TEXT), mod_losses.get(SPEECH), lam=cfg.loss.lam)
        if step in cfg.debug.nan_loss_steps:  # debug.nan_loss_steps: the skip path with a real NaN gradient
            loss = loss * float("nan")
        loss.backward()
        loss_sums.add("loss", float(loss.detach()))
    # sum over processes: the global batch's gradient everywhere (FSDP's reduce-scatter already summed the
    # sharded layers')
    run.dist.reduce_gradients([p for p in params if not sharding.is_sharded(p)])
    sums = loss_sums.reduce(run.dist)
    max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
    grad_norm = sharding.clip_grad_norm(params, max_norm)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used (before the schedule moves on)
    skipped = not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm))
    if not skipped:
        run.optimizer.step()
        with run.sharded.gathered() if run.engine.pushes_weights else contextlib.nullcontext():
            run.engine.sync_weights()
    run.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # after a skipped first step torch warns that the scheduler ran first
        warnings.simplefilter("ignore", UserWarning)
        run.scheduler.step()  # the schedule follows the step count, skipped steps included
    mod_loss = {m: sums[f"loss_{m}"] for m in modalities}
    return StepResult(sums["loss"], mod_loss, grad_norm, lr, skipped, stats, metrics)


# ------------------------------------------------------------------------------------------------------------
# evaluation and the end
# ------------------------------------------------------------------------------------------------------------


def evaluate(
    run: Run, step: int, hooks: Sequence[EvalHook] = (), callbacks: Sequence[Callback] = ()
) -> dict[str, Any]:
    """The evaluation (main process): held-out reverse KL (both modalities), the xopd-eval gap on
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
        with checkpoint.rng_untouched():
            record = _evaluate(run, step, hooks, heldout=run.dist.is_main or everyone)
    if not run.dist.is_main:
        return {}
    for cb in callbacks:
        cb.on_eval(run, step, record)
    return record


def _evaluate(run: Run, step: int, hooks: Sequence[EvalHook], *, heldout: bool) -> dict[str, Any]:
    cfg = run.cfg
    record: dict[str, Any] = {"step": step}
    if run.eval_pairs and heldout:
        kl = heldout_reverse_kl(
            run.student, run.teacher, run.eval_pairs, vocab_size=run.vocab_size,
            modalities=[TEXT, SPEECH] if run.student.is_speech else [TEXT], n=cfg.eval.n,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            temperature=cfg.eval.temperature, seed=cfg.eval.seed, batch_size=cfg.rollout.batch_size,
            system=cfg.data.system_prompt, variant=cfg.data.variants[0],
        )  # fmt: skip
        record.update(kl)
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


def finish(run: Run) -> dict[str, Any]:
    """The final export (``checkpoint.export_final``) and ``summary.json``."""
    final = checkpoint.export_final(run)  # collectives under FSDP
    if not run.dist.is_main:
        run.dist.barrier()
        return {"steps": run.step, "rank": run.dist.rank}
    summary = {
        "steps": run.step,
        "skipped_steps": run.skipped,
        "last_metrics": run.last_metrics,
        "last_eval": run.last_eval,
        "final_model": final,
        "checkpoints": [str(d) for d in checkpoint.checkpoint_dirs(run.out)],
        "logs": {name: str(log.path) for name, log in run.logs.items()},
    }
    atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    run.dist.barrier()
    say(f"xopd-train: done at step {run.step}; skipped steps {run.skipped or 'none'}; outputs in {run.out}")
    return summary
