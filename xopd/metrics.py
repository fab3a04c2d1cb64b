"""Named step metrics and the step's report: the metrics line, ``metrics.jsonl`` and the rollout log.

Metrics are named, never packed by position: a :class:`Tally` maps each name to a value and how it is reduced
over micro-batches and processes (``sum``, ``min``, ``max``). :meth:`Tally.reduce` sums every ``sum`` name in
one all-reduce, in sorted-name order (every process holds the same names, so the vectors line up), and
gathers the few ``min``/``max`` names in one more call. :func:`report` turns the reduced sums into the
``metrics.jsonl`` row (per modality: KL estimate, loss, mean length, EOS rate; plus the objective's own keys).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from xopd.batches import Batch
from xopd.distributed import Dist
from xopd.rollout import sample_numbers
from xopd.rolloutlog import copy_audio, rollout_record
from xopd.state import Run

SPEECH = "speech"
_OPS = {"sum": lambda a, b: a + b, "min": min, "max": max}


class Tally:
    """Named values, each with its reduction over micro-batches and processes: sum (default), min or max."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.ops: dict[str, str] = {}

    def add(self, name: str, value: float, op: str = "sum") -> None:
        if name in self.values:
            if self.ops[name] != op:
                raise ValueError(f"metric {name!r} is reduced by {self.ops[name]}, not {op}")
            self.values[name] = _OPS[op](self.values[name], value)
        else:
            self.values[name], self.ops[name] = (0 + value if op == "sum" else value), op

    def merge(self, other: Tally, suffix: str = "") -> None:
        """Add every value of ``other`` (its names + ``suffix``) with its own reduction."""
        for name, value in other.values.items():
            self.add(name + suffix, value, other.ops[name])

    def reduce(self, dist: Dist) -> dict[str, float]:
        """Every name reduced over the processes: one all-reduce of the sums (sorted names), one gather of the
        minima and maxima (when there are any; every process holds the same names)."""
        sums = sorted(k for k, op in self.ops.items() if op == "sum")
        out = dict(zip(sums, dist.sum([self.values[k] for k in sums]), strict=True))
        ends = sorted(k for k, op in self.ops.items() if op != "sum")
        if ends:
            ranks = dist.gather({k: self.values[k] for k in ends})
            for k in ends:
                out[k] = _OPS[self.ops[k]](*(r[k] for r in ranks)) if len(ranks) > 1 else ranks[0][k]
        return out


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


@dataclass
class StepResult:
    """What one update (:func:`xopd.trainer.update`) returns for the report: losses, gradient norm, rate."""

    loss: float
    modality_loss: dict[str, float]
    grad_norm: float
    lr: float
    skipped: bool
    stats: dict[str, list[TokenStats]]  # per modality, per micro-batch
    metrics: Tally  # the objective's own metrics, per modality (this process's, not yet reduced)


def say(message: str, run: Run | None = None) -> None:
    """A line on stderr above the progress bar (from the main process only)."""
    if run is None or run.dist.is_main:
        tqdm.write(message, file=sys.stderr)


def progress_bar(run: Run) -> Any:
    return tqdm(
        total=run.cfg.schedule.steps,
        initial=run.step,
        desc="xopd-train",
        unit="step",
        disable=not (run.cfg.logging.progress and run.dist.is_main),
        file=sys.stderr,
        dynamic_ncols=True,
    )


def logs_rollouts(cfg: Any, step: int) -> bool:
    return cfg.logging.rollout_log and step % cfg.logging.rollout_log_every == 0


def step_metrics(run: Run, step: int, batch: Batch, result: StepResult, seconds: float) -> dict[str, Any]:
    """The ``metrics.jsonl`` row of ``step``: counts over this process's rows, reduced over all of them."""
    tally = Tally()
    tally.add("sampled_tokens", batch.sampled_tokens)
    for m in run.modalities:
        seqs, stats = batch.parts[m].seqs, result.stats[m]
        # sum of (student_lp - teacher_lp) over tokens, and their count: the sampled-token KL estimate
        tally.add(f"kl_num_{m}", sum(float(((s.student_lp - s.teacher_lp) * s.mask).sum()) for s in stats))
        tally.add(f"kl_den_{m}", sum(int(s.mask.sum()) for s in stats))
        tally.add(f"len_sum_{m}", float(seqs.lengths.sum()))
        tally.add(f"rows_{m}", len(seqs))
        tally.add(f"finished_{m}", float(seqs.finished(run.student.eos_ids).sum()))
    tally.merge(result.metrics)
    v = tally.reduce(run.dist)
    metrics: dict[str, Any] = {
        "step": step,
        "loss": result.loss,
        "grad_norm": result.grad_norm,
        "lr": result.lr,
        "skipped": result.skipped,
        "seconds": round(seconds, 3),
        # completion tokens trained on (both modalities) per second of the whole step, sampling included
        "tokens_per_s": sum(v[f"len_sum_{m}"] for m in run.modalities) / max(seconds, 1e-9),
        "sampled_tokens": int(v["sampled_tokens"]),
    }
    for m in run.modalities:
        den, rows = v[f"kl_den_{m}"], max(v[f"rows_{m}"], 1)
        metrics[f"kl_{m}"] = v[f"kl_num_{m}"] / den if den else float("nan")
        metrics[f"loss_{m}"] = result.modality_loss[m]
        metrics[f"len_{m}"] = v[f"len_sum_{m}"] / rows
        metrics[f"eos_rate_{m}"] = v[f"finished_{m}"] / rows
    for m in run.modalities:
        metrics.update(run.objective.summarize(v, m))
    return metrics


def report(run: Run, step: int, batch: Batch, result: StepResult, seconds: float, bar: Any) -> dict[str, Any]:
    """Reduce the step's metrics; the main process appends them (and the rollout log) and prints the line."""
    cfg = run.cfg
    metrics = step_metrics(run, step, batch, result, seconds)
    if result.skipped:
        run.skipped.append(step)
    run.last_metrics = metrics
    records = None
    if logs_rollouts(cfg, step):
        records = [r for part in run.dist.gather(rollout_records(run, step, batch, result)) for r in part]
        if cfg.logging.max_rollouts_per_step is not None:
            records = records[: cfg.logging.max_rollouts_per_step]
    if not run.dist.is_main:
        return metrics
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
    return metrics


def rollout_records(run: Run, step: int, batch: Batch, result: StepResult) -> list[dict[str, Any]]:
    """This process's rollout-log records of the step (:func:`xopd.rolloutlog.rollout_record`)."""
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
