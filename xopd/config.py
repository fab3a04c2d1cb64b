"""The trainer's run configuration: dataclasses, loaded from YAML plus ``key=value`` dotted overrides.

``load_config("recipe.yaml", ["optim.lr=1e-5", "loss.kind=sft"])`` reads the recipe, applies the overrides in
order and validates the result. Values are typed by the dataclass fields: ``"1e-5"`` becomes a float (PyYAML
reads ``1e-5`` without a dot as a string), ``"true"`` a bool, ``"null"`` None, ``"a,b"`` a list. Any key that
no dataclass declares is an error naming the dotted key and the keys that exist at that level, so a typo never
silently trains with a default.

Some keys are read by only some loss kinds (``KIND_KEYS``: ``loss.beta`` by ``gkd``, ``rollout.n`` by every
kind that samples, ...). A key the recipe or an override *writes* that the chosen kind would ignore is an
error naming the key and the kind; defaults never are. One exception keeps the baselines one override away
from an X-OPD recipe: when an override switches a selector (``loss.kind=sft``, ``loss.divergence=...``) away
from the recipe's, the recipe's own keys that the new choice ignores are not errors but listed in
:func:`ignored_recipe_keys` (the trainer prints them). Keys written in the overrides are always checked.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key or the file."""


@dataclass
class ModelsConfig:
    student: str = "xopd-speech-smollm2"  # zoo name, HF id or local path of the speech LLM
    teacher: str = "smollm2-135m-instruct"  # any causal LM sharing the student's output vocabulary
    dtype: str = "float32"  # student weights: float32 | bfloat16 | float16
    teacher_dtype: str | None = None  # default: the student's dtype
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:1 ...
    trust_remote_code: bool = False
    finetune: Literal["full", "lora"] = "full"  # what of the LLM is trained
    freeze_audio: bool = True  # audio encoder + projector (and any vision tower) stay frozen
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    gradient_checkpointing: bool = False
    chunk_size: int = 512  # completion tokens per chunk when logits are built from hidden states


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=list)  # evalsuite task names (their train split)
    jsonl: str | None = None  # instead of tasks: JSONL of {text, audio | spoken, answer?, id?, instruction?}
    limit: int | None = None  # items per task (None: all of the train split)
    variants: list[str] = field(default_factory=lambda: ["clean"])  # TTS variants (evalsuite.speech)
    system_prompt: str | None = None  # a system turn for student and teacher alike
    shuffle: bool = True  # a fresh seeded permutation every epoch


@dataclass
class RolloutConfig:
    # hf: transformers generate on the trained module; vllm: a colocated vLLM engine the student's weights
    # are pushed into after every update (xopd.rollout_vllm)
    engine: Literal["hf", "vllm"] = "hf"
    n: int = 4  # rollouts per prompt and modality (the paper's 4; sft trains on the references, none sampled)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 16  # sequences per generate() call (hf; vLLM schedules all requests itself)
    # Each prompt's n rollouts drawn from their own RNG seeded by (seed, step, prompt id, modality): samples
    # then do not depend on batch composition or on how many processes share the batch. null: on when
    # training runs in several processes (accelerate launch), off otherwise.
    seed_per_prompt: bool | None = None
    vllm_tensor_parallel_size: int = 1
    # share of GPU memory the colocated engine may take (GPU only: on CPU, VLLM_CPU_KVCACHE_SPACE sizes it)
    vllm_gpu_memory_utilization: float = 0.3
    vllm_max_model_len: int | None = None  # default: the model's; lower it to save KV-cache memory


@dataclass
class LossConfig:
    kind: Literal["xopd", "sft", "offline_kd", "gkd"] = "xopd"
    lam: float = 0.5  # weight of the in-modal (text) term; 1 - lam goes to the cross-modal (speech) term
    clip_eps: float | None = None  # PPO-style ratio clipping (several updates per batch, or a vLLM sampler)
    # every kind: the token mean within each sequence, then the mean over sequences (the paper's)
    normalize: Literal["sequence", "token"] = "sequence"
    reward: Literal["logratio", "power"] = "logratio"  # xopd: A = lp_T - lp_S, or PowerOPD's bounded reward
    power_alpha: float = 5.0
    divergence: Literal["jsd", "forward_kl", "reverse_kl", "topk_reverse_kl"] = "jsd"  # gkd
    beta: float = 0.0  # gkd: generalized JSD(beta); 0 = forward KL(T || S), the paper's GKD baseline
    topk: int = 20  # gkd with topk_reverse_kl
    # gkd: the share of prompts whose sequences are the student's own samples (on-policy); the others train
    # on the fixed data, their reference (gold) answer. GKD's lambda; 0.5 is ms-swift's default (the paper's)
    gkd_student_fraction: float = 0.5
    # offline_kd: teacher answers per prompt in the fixed set (null: rollout.n), sampled once at the rollout
    # temperature / top_p / max_new_tokens and cached (xopd.kd_cache) for every later run
    kd_samples_per_prompt: int | None = None
    kd_cache_dir: str | None = None  # offline_kd: root of the answer cache (null: $XOPD_HOME/kd-cache)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    micro_batch_prompts: int = 1  # prompts per forward/backward; batch_prompts / this = accumulation steps


@dataclass
class ScheduleConfig:
    steps: int = 100
    batch_prompts: int = 8  # paired prompts per optimizer step
    warmup_steps: int = 0
    scheduler: Literal["constant", "linear", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # linear / cosine decay ends at lr * min_lr_ratio


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations (0: none in between)
    at_start: bool = True
    at_end: bool = True
    tasks: list[str] | None = None  # held-out tasks (default: data.tasks)
    split: str = "validation"  # held-out prompts for the KL; the test split is for final reports only
    jsonl: str | None = None  # held-out pairs as a JSONL (default when data.jsonl is used: none)
    num_prompts: int = 16  # held-out pairs per task
    n: int = 1  # student rollouts per held-out prompt and modality
    max_new_tokens: int | None = None  # default: rollout.max_new_tokens
    temperature: float = 1.0
    # eval samples from its own RNG: every evaluation draws the same way, training's RNG is untouched
    seed: int = 1234
    # xopd-eval's gap (text vs speech accuracy, greedy) on these tasks' test splits, with the live student at
    # every evaluation: evals/step-NNNNNN/{report.json,samples.jsonl,gap.png}; none when unset
    gap_tasks: list[str] | None = None
    gap_limit: int = 20  # items per task
    gap_variants: list[str] = field(default_factory=lambda: ["clean"])  # TTS variants of the speech mode
    gap_max_new_tokens: int = 64
    gap_batch_size: int = 8


@dataclass
class CheckpointConfig:
    every: int = 50  # steps between checkpoints (0: only the last step)
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in output_dir) | never | a checkpoint directory
    export_final: bool = True  # output_dir/final: a model directory from_pretrained / xopd-eval load


@dataclass
class LoggingConfig:
    rollout_log: bool = True
    rollout_log_every: int = 1  # steps between logged steps
    max_rollouts_per_step: int | None = None  # None: every rollout of a logged step
    topk: int = 5  # teacher alternatives per token in the rollout log (0: none)
    progress: bool = True  # tqdm bar


@dataclass
class DistributedConfig:
    # under accelerate launch / torchrun. ddp: every process holds the whole model, gradients summed.
    # fsdp: the student's decoder layers sharded across processes (xopd/sharding.py).
    # auto: fsdp under `accelerate launch --use_fsdp`, else ddp
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    # fsdp: free the gathered layer weights after each forward (re-gather in backward); None: the launcher's
    # --fsdp_reshard_after_forward, else true
    reshard_after_forward: bool | None = None
    # fsdp: the teacher's layers sharded too (it only runs forwards: 1/N of its weights per process)
    shard_teacher: bool = True


@dataclass
class DebugConfig:
    # Poison the loss with NaN at these steps: it flows through backward into the gradients, so the
    # skip-and-report path is exercised exactly as a real overflow would exercise it.
    nan_loss_steps: list[int] = field(default_factory=list)


@dataclass
class RunConfig:
    output_dir: str = "artifacts/xopd-train"
    seed: int = 0
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


# Keys that may differ between a checkpoint and the run resuming it: they change neither the trajectory nor
# the meaning of the saved state (a longer schedule, other logging, another eval cadence).
# checkpoints hold the full state in one format, so the process count and strategy may change on resume
RESUMABLE_CHANGES = (
    "schedule.steps",
    "checkpoint.",
    "logging.",
    "eval.",
    "output_dir",
    "rollout.batch_size",
    "distributed.",
    "loss.kd_cache_dir",  # where the fixed answers live, not what they are (the folder name is their key)
)

# Keys that only some choices read: key -> {selector: the selector values under which the key is read}. All
# conditions must hold. Writing such a key while one fails is a ConfigError (see the module docstring).
KIND_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "loss.reward": {"loss.kind": ("xopd",)},
    "loss.clip_eps": {"loss.kind": ("xopd",)},
    "loss.power_alpha": {"loss.kind": ("xopd",), "loss.reward": ("power",)},
    "loss.divergence": {"loss.kind": ("gkd",)},
    "loss.beta": {"loss.kind": ("gkd",), "loss.divergence": ("jsd",)},
    "loss.topk": {"loss.kind": ("gkd",), "loss.divergence": ("topk_reverse_kl",)},
    "loss.gkd_student_fraction": {"loss.kind": ("gkd",)},
    "loss.kd_samples_per_prompt": {"loss.kind": ("offline_kd",)},
    "loss.kd_cache_dir": {"loss.kind": ("offline_kd",)},
    # sft trains on the reference answers: nothing is sampled (offline_kd: n teacher answers per prompt in its
    # fixed set unless loss.kd_samples_per_prompt says otherwise)
    "rollout.n": {"loss.kind": ("xopd", "offline_kd", "gkd")},
}


# ------------------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------------------


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the annotated type ``tp``, or a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise ConfigError(f"config key {key!r} must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key {key!r}: bad value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"config key {key!r} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "yes",
            "on",
            "1",
            "false",
            "no",
            "off",
            "0",
        ):
            return value.strip().lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key {key!r}: unsupported type {tp!r}")  # a bug in this module, not in a recipe


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}"
        )
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            where = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
            raise ConfigError(
                f"unknown config key {prefix + str(key)!r}; known keys at {where}: {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _convert(value, tp, prefix + key)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Put ``value`` at ``a.b.c`` in a nested dict, checking each part against the dataclasses."""
    parts = dotted.split(".")
    cls: Any = RunConfig
    node = tree
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"unknown config key {dotted!r}: {where} has no {part!r} (known: {', '.join(names)})"
            )
        tp = _hints(cls)[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise ConfigError(
                    f"config key {dotted!r} is a section; set one of its keys ({dotted}.<key>=...)"
                )
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(
                f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section ({dotted!r})"
            )
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"config section {'.'.join(parts[: i + 1])!r} must be a mapping, got {child!r}")
        node, cls = child, tp


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=1e-5"`` -> ``("optim.lr", "1e-5")``, YAML-parsed (lists, nulls); typed later."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=1e-5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A validated RunConfig from a nested dict (a parsed recipe) and dotted overrides applied in order."""
    tree = copy.deepcopy(dict(data or {}))  # overrides must not write into the caller's dict
    recipe_keys = set(_given_keys(tree))
    recipe = {sel: _recipe_value(tree, sel) for sel in {s for when in KIND_KEYS.values() for s in when}}
    override_keys: list[str] = []
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
        override_keys.append(key)
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    ignored = check_kind_keys(cfg, recipe, recipe_keys, set(override_keys))
    cfg._ignored_recipe_keys = ignored  # type: ignore[attr-defined]  # not a field: never saved or compared
    return cfg


def _given_keys(tree: dict[str, Any]) -> list[str]:
    """Dotted keys a recipe tree writes: its leaves (a section left empty or null writes none)."""
    out: list[str] = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += [f"{k}.{sub}" for sub in v]  # sections are one level deep
        elif not (v is None and dataclasses.is_dataclass(_hints(RunConfig).get(k))):
            out.append(str(k))
    return out


def _recipe_value(tree: dict[str, Any], dotted: str) -> Any:
    """What the recipe chose for the selector ``dotted`` (``loss.kind``): its value, else the default."""
    section, name = dotted.split(".")
    given = tree.get(section)
    if isinstance(given, dict) and name in given:
        return given[name]
    return getattr(_hints(RunConfig)[section](), name)


def _value(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _unread_because(cfg: RunConfig, key: str) -> str | None:
    """The selector whose value makes ``cfg`` ignore ``key`` (``"loss.kind"``), or None when it is read."""
    for selector, values in KIND_KEYS[key].items():
        if _value(cfg, selector) not in values:
            return selector
    return None


def _reads(key: str) -> str:
    return ", ".join(f"{sel}={'|'.join(vals)}" for sel, vals in KIND_KEYS[key].items())


def check_kind_keys(
    cfg: RunConfig, recipe: dict[str, Any], recipe_keys: set[str], override_keys: set[str]
) -> list[str]:
    """ConfigError for a written key that ``cfg``'s loss kind (or divergence, reward) ignores; returns the
    recipe's keys left unread because an override switched that selector away from the recipe's choice
    (``recipe``: selector -> the recipe's value)."""
    errors: list[str] = []
    ignored: list[str] = []
    for key in KIND_KEYS:
        if key not in recipe_keys and key not in override_keys:
            continue  # a default: never an error
        selector = _unread_because(cfg, key)
        if selector is None:
            continue
        switched = selector in override_keys and _value(cfg, selector) != recipe[selector]
        if key not in override_keys and switched:
            ignored.append(key)  # written for the recipe's own choice, which an override changed
            continue
        where = f"loss.kind={cfg.loss.kind}"
        if selector != "loss.kind":
            where += f", {selector}={_value(cfg, selector)}"
        errors.append(f"{key} does nothing with {where} (it is read only with {_reads(key)})")
    if errors:
        head = "config key " if len(errors) == 1 else "config keys that do nothing here: "
        raise ConfigError(head + "; ".join(errors) + ("; remove it" if len(errors) == 1 else "; remove them"))
    return ignored


def ignored_recipe_keys(cfg: RunConfig) -> list[str]:
    """Keys the recipe wrote that ``cfg`` does not read because an override switched ``loss.kind`` (or
    ``loss.divergence`` / ``loss.reward``) away from the recipe's choice, e.g. ``rollout.n`` of an X-OPD
    recipe run with ``loss.kind=sft``; [] for a config not made by :func:`config_from_dict`."""
    return list(getattr(cfg, "_ignored_recipe_keys", []))


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {str(p)!r} must be a mapping of sections, got {type(data).__name__}")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def incompatible_changes(saved: dict[str, Any], current: RunConfig) -> list[str]:
    """Dotted keys that differ between a checkpoint's config and ``current``, beyond the harmless ones."""
    a, b = flatten(saved), flatten(to_dict(current))
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if a.get(k) != b.get(k)
        and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES)
        # a key newer than the checkpoint that this run's loss does not read (loss.gkd_student_fraction of
        # an X-OPD run) changes nothing; one it reads is a difference (an older gkd sampled every prompt)
        and not (k not in a and k in KIND_KEYS and _unread_because(current, k) is not None)
    ]


def validate(cfg: RunConfig) -> None:
    """Range checks that the types alone cannot express; ConfigError names the key."""
    checks: list[tuple[bool, str]] = [
        (0.0 <= cfg.loss.lam <= 1.0, f"loss.lam must be in [0, 1], got {cfg.loss.lam}"),
        (
            cfg.loss.clip_eps is None or cfg.loss.clip_eps > 0,
            f"loss.clip_eps must be > 0 or null, got {cfg.loss.clip_eps}",
        ),
        (0.0 <= cfg.loss.beta <= 1.0, f"loss.beta must be in [0, 1], got {cfg.loss.beta}"),
        (cfg.loss.power_alpha > 0, f"loss.power_alpha must be > 0, got {cfg.loss.power_alpha}"),
        (cfg.loss.topk >= 1, f"loss.topk must be >= 1, got {cfg.loss.topk}"),
        (
            0.0 <= cfg.loss.gkd_student_fraction <= 1.0,
            f"loss.gkd_student_fraction must be in [0, 1], got {cfg.loss.gkd_student_fraction}",
        ),
        (
            cfg.loss.kd_samples_per_prompt is None or cfg.loss.kd_samples_per_prompt >= 1,
            f"loss.kd_samples_per_prompt must be >= 1 or null, got {cfg.loss.kd_samples_per_prompt}",
        ),
        (cfg.rollout.n >= 1, f"rollout.n must be >= 1, got {cfg.rollout.n}"),
        (
            cfg.rollout.max_new_tokens >= 1,
            f"rollout.max_new_tokens must be >= 1, got {cfg.rollout.max_new_tokens}",
        ),
        (
            cfg.rollout.temperature > 0,
            f"rollout.temperature must be > 0 (sampling), got {cfg.rollout.temperature}",
        ),
        (0.0 < cfg.rollout.top_p <= 1.0, f"rollout.top_p must be in (0, 1], got {cfg.rollout.top_p}"),
        (cfg.rollout.batch_size >= 1, f"rollout.batch_size must be >= 1, got {cfg.rollout.batch_size}"),
        (cfg.optim.lr >= 0, f"optim.lr must be >= 0, got {cfg.optim.lr}"),
        (len(cfg.optim.betas) == 2, f"optim.betas must hold two numbers, got {cfg.optim.betas}"),
        (
            cfg.optim.max_grad_norm is None or cfg.optim.max_grad_norm > 0,
            f"optim.max_grad_norm must be > 0 or null, got {cfg.optim.max_grad_norm}",
        ),
        (
            cfg.optim.micro_batch_prompts >= 1,
            f"optim.micro_batch_prompts must be >= 1, got {cfg.optim.micro_batch_prompts}",
        ),
        (cfg.schedule.steps >= 1, f"schedule.steps must be >= 1, got {cfg.schedule.steps}"),
        (
            cfg.schedule.batch_prompts >= 1,
            f"schedule.batch_prompts must be >= 1, got {cfg.schedule.batch_prompts}",
        ),
        (
            cfg.schedule.warmup_steps >= 0,
            f"schedule.warmup_steps must be >= 0, got {cfg.schedule.warmup_steps}",
        ),
        (
            0.0 <= cfg.schedule.min_lr_ratio <= 1.0,
            f"schedule.min_lr_ratio must be in [0, 1], got {cfg.schedule.min_lr_ratio}",
        ),
        (cfg.eval.every >= 0, f"eval.every must be >= 0, got {cfg.eval.every}"),
        (cfg.eval.num_prompts >= 1, f"eval.num_prompts must be >= 1, got {cfg.eval.num_prompts}"),
        (cfg.eval.n >= 1, f"eval.n must be >= 1, got {cfg.eval.n}"),
        (cfg.eval.temperature > 0, f"eval.temperature must be > 0, got {cfg.eval.temperature}"),
        (cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}"),
        (cfg.checkpoint.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {cfg.checkpoint.keep_last}"),
        (
            cfg.logging.rollout_log_every >= 1,
            f"logging.rollout_log_every must be >= 1, got {cfg.logging.rollout_log_every}",
        ),
        (cfg.logging.topk >= 0, f"logging.topk must be >= 0, got {cfg.logging.topk}"),
        (cfg.models.chunk_size >= 1, f"models.chunk_size must be >= 1, got {cfg.models.chunk_size}"),
        (cfg.models.lora_r >= 1, f"models.lora_r must be >= 1, got {cfg.models.lora_r}"),
        (
            bool(cfg.data.tasks) or cfg.data.jsonl is not None,
            "data: give data.tasks (evalsuite task names) or data.jsonl",
        ),
        (bool(cfg.data.variants), "data.variants must name at least one TTS variant (e.g. clean)"),
        (bool(cfg.output_dir), "output_dir must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if cfg.data.jsonl is not None and cfg.data.tasks:
        raise ConfigError(
            "data.tasks and data.jsonl are both set; give one source (set the other to null / [])"
        )
