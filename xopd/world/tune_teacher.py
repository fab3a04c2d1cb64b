"""Tune the demo world's text teacher: LoRA on the "tune" part of the default task mix, resumable, on CPU.

    python -m xopd.world.tune_teacher --out artifacts/world/teacher --threads 1 --max-minutes 100

SmolLM2-135M-Instruct answers the default mix near chance; a teacher has to be competent before a student can
learn to reason from it. Each example is the evaluation's own prompt (the hf backend renders it, system prompt
and all) followed by the gold answer and the end-of-turn token; the loss is on the answer tokens only.

Outputs under ``--out``: ``step-NNNNNN/`` (the LoRA adapter, safetensors), ``state.pt`` (optimizer, step, RNG
and data position: rerunning the same command continues exactly where it stopped), ``eval.jsonl`` (greedy
accuracy on a fixed subset of the validation split), ``command.txt`` (every command line that ran).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizer thread pool beside --threads

import torch
from safetensors.torch import load_file

from evalsuite.backends.hf import HFBackend
from evalsuite.run import TEXT, evaluate
from evalsuite.tasks import load_task
from evalsuite.types import GenParams
from xopd.loading import load_text_lm
from xopd.world.cli import add_run_args, parser
from xopd.world.parts import items_of_part

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Changing any of these changes the run: a resume with different values is refused.
RUN_KEYS = ("model", "tasks", "part", "seed", "lr", "warmup", "batch_size", "lora_r", "lora_alpha",
            "weight_decay", "grad_clip", "task_weights", "schedule", "init_adapter")
# Keys added after runs already existed: a state.pt without them ran with these values.
RUN_KEY_DEFAULTS = {"task_weights": "", "schedule": "constant", "init_adapter": ""}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("xopd.world.tune_teacher", __doc__)
    p.add_argument("--out", required=True, help="run folder (checkpoints, state.pt, eval.jsonl)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="zoo name, local path or fixture:<key>")
    p.add_argument("--tasks", default="sums,counting,syllogism,family", help="comma-separated task names")
    p.add_argument("--part", default="tune", help="part of the train split to learn from (xopd.world.parts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps, then --schedule")
    p.add_argument("--schedule", default="constant", choices=("constant", "linear"),
                   help="after warmup: constant lr, or linear decay to 0 at --max-steps")
    p.add_argument("--task-weights", default="",
                   help="relative draw weight per task, e.g. sums=3,counting=3 (unnamed tasks: 1; default uniform)")
    p.add_argument("--init-adapter", default="",
                   help="start from this LoRA adapter folder (a step-NNNNNN/ of an earlier run) with a fresh "
                        "optimizer: a second stage of the same tuning run, kept in its own --out")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max global grad norm (0: off)")
    add_run_args(p, max_steps=2000, save_every=100, eval_every=100, eval_limit=64,
                 eval_limit_help="validation items per task", eval_batch_size=16, eval_max_new_tokens=8)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- data


def encode(backend: Any, task: Any, item: Any, eos: int) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the evaluation's prompt, rendered by the hf backend itself, and the gold
    answer + end-of-turn. Ids are concatenated, never re-tokenized from decoded text."""
    prompt = backend.render([{"role": "user", "content": task.render_text(item)}]).ids
    answer = backend.tokenizer(item.answer, add_special_tokens=False)["input_ids"] + [eos]
    return list(prompt), list(answer)


class Sampler:
    """Balanced mixing: each example's task is drawn uniformly (or by ``weights``), then the next item of that task's shuffled
    order (a new shuffle every epoch of that task). Its whole state is plain lists and ints."""

    def __init__(self, sizes: dict[str, int], seed: int, weights: dict[str, float] | None = None) -> None:
        self.names, self.sizes, self.seed = sorted(sizes), sizes, seed
        self.weights = [weights.get(n, 1.0) for n in self.names] if weights else None
        self.rng = random.Random(seed)
        self.cursor = {n: 0 for n in self.names}
        self.epoch = {n: 0 for n in self.names}
        self._perms: dict[str, tuple[int, list[int]]] = {}  # name -> (epoch, order): a cache

    def _perm(self, name: str) -> list[int]:
        epoch = self.epoch[name]
        if self._perms.get(name, (None,))[0] != epoch:
            order = list(range(self.sizes[name]))
            # a pure function of (seed, task, epoch): nothing to store but the epoch
            random.Random(f"{self.seed}:{name}:{epoch}").shuffle(order)
            self._perms[name] = (epoch, order)
        return self._perms[name][1]

    def next(self, n: int) -> list[tuple[str, int]]:
        out = []
        for _ in range(n):
            # uniform draws keep rng.choice: a run started before weights existed resumes bit for bit
            name = self.rng.choices(self.names, self.weights)[0] if self.weights else self.rng.choice(self.names)
            out.append((name, self._perm(name)[self.cursor[name]]))
            self.cursor[name] += 1
            if self.cursor[name] == self.sizes[name]:
                self.cursor[name], self.epoch[name] = 0, self.epoch[name] + 1
        return out

    def state(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        rng = [version, list(internal), gauss]  # plain lists: loadable with weights_only=True
        return {"rng": rng, "cursor": dict(self.cursor), "epoch": dict(self.epoch)}

    def load(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.cursor, self.epoch = dict(state["cursor"]), dict(state["epoch"])


def collate(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded (ids, attention mask, labels); labels are -100 except on the answer tokens."""
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
    return ids, mask, labels


# --------------------------------------------------------------------------------------------- model


def answer_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch's answer tokens. The LM head runs on the answer positions only:
    the full (batch x length x 49k) logits would cost more than a LoRA step's worth of matmuls."""
    causal_lm = model.get_base_model()  # the LoRA layers live inside it
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup over ``--warmup`` steps, then constant or (``--schedule linear``) down to 0 at the last step."""
    if step < args.warmup:
        return args.lr * step / max(1, args.warmup)
    if args.schedule == "linear":
        return args.lr * max(0.0, (args.max_steps - step) / max(1, args.max_steps - args.warmup))
    return args.lr


def parse_weights(spec: str, names: list[str]) -> dict[str, float]:
    """``sums=3,counting=2`` -> {"sums": 3.0, "counting": 2.0}; a name outside ``names`` or a weight <= 0 is an error."""
    out: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else float("nan")
        except ValueError:
            weight = float("nan")
        if name not in names or not weight > 0:
            raise SystemExit(f"--task-weights: bad entry {part!r} (want task=weight > 0, tasks: {', '.join(names)})")
        out[name] = weight
    return out


# --------------------------------------------------------------------------------------------- eval


def validate(backend: Any, model: Any, tasks: list[Any], max_new_tokens: int) -> dict[str, Any]:
    """Greedy accuracy per task through the evaluation's own code path (prompts, left-padded batched
    generation, answer extraction, scoring), on the weights in memory."""

    backend.attach(model)
    model.eval()
    try:
        samples = evaluate(backend, tasks, modes=(TEXT,), params=GenParams(max_new_tokens=max_new_tokens))
    finally:
        model.train()
    acc, fail = {}, {}
    for t in tasks:
        mine = [s for s in samples if s.task == t.name]
        acc[t.name] = sum(s.correct for s in mine) / max(1, len(mine))
        fail[t.name] = sum(s.extracted is None for s in mine) / max(1, len(mine))
    return {"acc": acc, "extract_fail": fail, "macro": sum(acc.values()) / max(1, len(acc))}


# --------------------------------------------------------------------------------------------- checkpoints


def save(out: Path, step: int, model: Any, optimizer: Any, sampler: Sampler, cfg: dict[str, Any]) -> None:
    """Adapter to ``step-NNNNNN/`` first, then ``state.pt`` pointing at it; both appear atomically, so a kill
    at any moment leaves the previous complete checkpoint as the one a rerun resumes from."""
    final = out / f"step-{step:06d}"
    tmp = out / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    state = {
        "step": step,
        "checkpoint": final.name,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data": sampler.state(),
        "config": cfg,
    }
    torch.save(state, out / "state.pt.tmp")
    os.replace(out / "state.pt.tmp", out / "state.pt")


def resume(out: Path, model: Any, optimizer: Any, sampler: Sampler, cfg: dict[str, Any]) -> int:
    """The step to continue after (0 for a fresh run), with weights, optimizer, RNG and data restored."""
    from peft import set_peft_model_state_dict  # late: peft is slow to import

    path = out / "state.pt"
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=True)
    was = {k: state["config"].get(k, RUN_KEY_DEFAULTS.get(k)) for k in RUN_KEYS}
    changed = {k: (was[k], cfg[k]) for k in RUN_KEYS if was[k] != cfg[k]}
    if changed:
        raise SystemExit(f"{out} holds a run with other settings {changed} (was, now): use a new --out")
    weights = load_file(str(out / state["checkpoint"] / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise SystemExit(f"adapter in {state['checkpoint']} does not fit the model: {result.unexpected_keys}")
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    sampler.load(state["data"])
    return int(state["step"])


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (only possible once)
        pass
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "command.txt", "a") as f:  # one line per invocation: the first, then every resume
        f.write(shlex.join(["python", "-m", "xopd.world.tune_teacher", *argv]) + "\n")
    cfg = {k: getattr(args, k) for k in RUN_KEYS}
    t_start = time.time()

    from peft import LoraConfig, get_peft_model  # late: peft is slow to import


    # The hf backend renders training prompts and runs validation: one prompt format for both.
    backend = HFBackend(args.model, batch_size=args.eval_batch_size, dtype="float32", device="cpu")
    eos = backend.stop_ids[0]  # the chat end-of-turn (<|im_end|> for SmolLM2): generation_config's first EOS
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    weights = parse_weights(args.task_weights, names)  # before the slow part: a typo fails at once
    data: dict[str, list[tuple[list[int], list[int]]]] = {}
    for name in names:
        task = load_task(name, split="train")
        data[name] = [encode(backend, task, it, eos) for it in items_of_part(task, args.part)]
    val_tasks = [load_task(n, split="validation", limit=args.eval_limit, seed=args.seed) for n in names]
    sizes = ", ".join(f"{n}={len(v)}" for n, v in data.items())
    eos_text = backend.tokenizer.convert_ids_to_tokens(eos)
    print(f"data ({args.part} part of train): {sizes}; eos={eos_text!r}; validation {args.eval_limit}/task",
          flush=True)

    torch.manual_seed(args.seed)  # the LoRA A matrices' initialisation
    model, _ = load_text_lm(backend.spec.path, dtype=torch.float32, device="cpu")
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if args.init_adapter:  # stage two: the earlier stage's weights, then this run's own optimizer and data
        from peft import set_peft_model_state_dict  # late: peft is slow to import

        path = Path(args.init_adapter) / "adapter_model.safetensors"
        if not path.exists():
            raise SystemExit(f"--init-adapter: no adapter_model.safetensors in {args.init_adapter}")
        result = set_peft_model_state_dict(model, load_file(str(path)))
        if getattr(result, "unexpected_keys", None):
            raise SystemExit(f"--init-adapter {args.init_adapter} does not fit the model: {result.unexpected_keys}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"trainable parameters: {sum(p.numel() for p in params):,}", flush=True)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    sampler = Sampler({n: len(v) for n, v in data.items()}, args.seed, weights)
    pad = backend.pad_id

    step = resume(out, model, optimizer, sampler, cfg)
    if step:
        print(f"resuming after step {step}", flush=True)
    elif args.eval_every > 0:  # the untuned model's accuracy: the baseline every later line compares to
        log_eval(out, 0, validate(backend, model, val_tasks, args.eval_max_new_tokens), time.time() - t_start)

    deadline = t_start + args.max_minutes * 60 if args.max_minutes else math.inf
    t0, steps_here, tokens, window_loss, window_n, t_train = time.time(), 0, 0, 0.0, 0, 0.0
    saved = step
    while step < args.max_steps:
        step += 1
        t_step = time.time()
        rows = [data[name][i] for name, i in sampler.next(args.batch_size)]
        ids, mask, labels = collate(rows, pad)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, args)
        loss = answer_loss(model, ids, mask, labels)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # bookkeeping: tokens/s counts real (unpadded) prompt + answer tokens of training steps only
        t_train += time.time() - t_step
        tokens += int(mask.sum())
        steps_here += 1
        window_loss, window_n = window_loss + loss.item(), window_n + 1
        if step % args.log_every == 0 or step == args.max_steps:
            per_step = (time.time() - t0) / steps_here  # evals included: an honest ETA
            eta = (args.max_steps - step) * per_step
            print(f"step {step:5d} | loss {window_loss / window_n:.4f} | lr {lr_at(step, args):.2e} | "
                  f"{tokens / t_train:.0f} tok/s | {per_step:.2f} s/step | eta {eta / 60:.1f} min",
                  flush=True)
            window_loss, window_n = 0.0, 0

        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.max_steps):
            result = validate(backend, model, val_tasks, args.eval_max_new_tokens)
            log_eval(out, step, result, time.time() - t_start)
        if step % args.save_every == 0 or step == args.max_steps:
            save(out, step, model, optimizer, sampler, cfg)
            saved = step
        if time.time() > deadline:
            print(f"--max-minutes {args.max_minutes} reached after step {step}", flush=True)
            break
    if saved != step:
        save(out, step, model, optimizer, sampler, cfg)
    last = out / f"step-{step:06d}"
    print(f"stopped at step {step}; checkpoint {last}; rerun the same command to continue", flush=True)
    return 0


def log_eval(out: Path, step: int, result: dict[str, Any], elapsed: float) -> None:
    line = {"step": step, **result, "elapsed_s": round(elapsed, 1)}
    with open(out / "eval.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    accs = " ".join(f"{k}={v:.3f}" for k, v in result["acc"].items())
    print(f"eval step {step}: {accs} | macro {result['macro']:.3f} | "
          f"extract-fail {sum(result['extract_fail'].values()) / max(1, len(result['extract_fail'])):.3f}",
          flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
