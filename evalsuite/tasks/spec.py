"""Task files: the YAML schema of a benchmark task, parsed and validated into a frozen ``TaskSpec``.

A task file says where the items come from (``source``), how a question becomes a user message
(``prompt``, ``instruction``) and a spoken sentence (``spoken_prompt``), what kind of answer is gold
(``answer_type``, ``choices``) and how items divide into train, validation and test (``splits``). Every mistake is
reported as ``TaskSpecError`` naming the file and the field, because a task file is written by hand.

Example (``sports_understanding.yaml``)::

    name: sports_understanding
    description: Decide whether a sentence about a sports figure is plausible.
    source: {bigbench: sports_understanding}
    answer_type: yesno
    choices: ["yes", "no"]            # quoted: YAML reads a bare yes/no as a boolean; positive first
    label_map: {"plausible": "yes", "implausible": "no"}
    prompt: "Is the following sentence plausible? \"{question}\""
    spoken_prompt: "Is the following sentence plausible? {question}."
    instruction: Answer yes or no.
    splits: {test_fraction: 0.5}

Fields: ``source`` is one of ``bigbench: task[/subtask]`` (plus ``subtasks: [...]``), ``reasoning_gym:
{dataset, size, seed, **config}``, ``jsonl: path`` (relative to the task file) or ``hf: {path, name, split,
columns, filter, metadata, revision}``. ``prompt`` and ``spoken_prompt`` take ``{question}`` and
``{choices}`` ("A) ..." lines in text, "Option A: ..." in speech, "yes or no" for binary labels); without
``spoken_prompt`` the text prompt is read aloud. ``answer_type`` is number | choice | yesno | text;
``label_map`` maps source labels to choices; ``answer_pattern`` is a regex whose group 1 is the gold answer
inside the source's answer (GSM8K's "#### N"); ``strip`` lists regexes removed from questions;
``instruction`` is appended to the text prompt (and sent as text beside the audio in speech mode).
``benchmark`` (optional) names the benchmark a task file is one part of (``big_bench_audio`` is four files):
reports average the paper's Avg. Drop % over benchmarks, a task without one being its own.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ANSWER_TYPES = ("number", "choice", "yesno", "text")
METRICS = ("exact",)
TEMPLATE_FIELDS = frozenset({"question", "choices"})
COLUMN_KEYS = ("id", "question", "answer", "choices", "audio", "spoken")

_TOP_KEYS = {
    "name", "description", "source", "prompt", "spoken_prompt", "answer_type", "choices", "label_map",
    "metric", "instruction", "splits", "answer_pattern", "strip", "benchmark",
}  # fmt: skip


class TaskSpecError(ValueError):
    """A task file is malformed; the message names the file and the field."""


# --- sources -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BigBenchSource:
    """Examples of a BIG-bench task (``subtasks``: e.g. arithmetic's). Optional: read from a BIG-bench git
    checkout, a local ``bigbench-1.0.0.tar.gz`` sdist or the ``hails/bigbench`` Hugging Face dataset (see
    ``evalsuite/tasks/bigbench.py``)."""

    task: str
    subtasks: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"bigbench:{self.task}"


@dataclass(frozen=True)
class ReasoningGymSource:
    """A seeded reasoning-gym generator; ``config`` is passed to ``reasoning_gym.create_dataset``."""

    dataset: str
    size: int
    seed: int
    config: str = "{}"  # canonical JSON (sorted keys), so the spec stays hashable

    @property
    def config_dict(self) -> dict[str, Any]:
        return json.loads(self.config)

    @property
    def key(self) -> str:
        return f"reasoning_gym:{self.dataset}:size={self.size}:seed={self.seed}:{self.config}"


@dataclass(frozen=True)
class JsonlSource:
    """A JSON-lines file, one item per line; ``path`` is resolved against the task file's folder."""

    path: Path
    columns: tuple[tuple[str, str], ...] = ()  # (item field, column name) overrides

    @property
    def key(self) -> str:
        return f"jsonl:{self.path.name}"


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset loaded with ``datasets.load_dataset(path, name, split=...)``.

    ``split`` is one hub split (str), several concatenated (tuple), or the hub's own train/test division
    (``{"test": ..., "train": ...}``, stored as sorted pairs). ``metadata`` names an audiofolder's metadata
    file (Big Bench Audio's ``metadata.jsonl``): rows are read from it and the audio column holds file
    names relative to the dataset root, which sidesteps decoding audio inside ``datasets``.
    """

    path: str
    name: str | None = None
    split: str | tuple[str, ...] | tuple[tuple[str, str | tuple[str, ...]], ...] = "test"
    columns: tuple[tuple[str, str], ...] = ()
    filter: tuple[tuple[str, Any], ...] = ()  # keep rows whose column equals the value (or is in a list)
    metadata: str | None = None
    revision: str | None = None

    @property
    def key(self) -> str:
        return f"hf:{self.path}:{self.name or ''}"

    @property
    def hub_splits(self) -> dict[str, str | tuple[str, ...]] | None:
        """The hub's own ``{"test": ..., "train": ...}`` division, or None when ``splits`` decides."""
        if isinstance(self.split, tuple) and self.split and isinstance(self.split[0], tuple):
            return dict(self.split)  # type: ignore[arg-type]
        return None


Source = BigBenchSource | ReasoningGymSource | JsonlSource | HFSource


@dataclass(frozen=True)
class SplitSpec:
    """How items divide into train, validation and test, deterministically and without overlap.

    ``test_fraction`` (and optionally ``validation_fraction``): an item's split is decided by a hash of its
    *normalised question text* (case and spacing folded), so one question can never sit in two splits even
    when a generator produces it twice, and adding items never moves old ones. ``test_size``: the first N
    items in source order are test. Neither: everything is test. Train is what is left.
    """

    test_fraction: float | None = None
    test_size: int | None = None
    validation_fraction: float = 0.0

@dataclass(frozen=True)
class TaskSpec:
    name: str
    source: Source
    prompt: str
    answer_type: str
    description: str = ""
    spoken_prompt: str | None = None
    choices: tuple[str, ...] = ()
    label_map: tuple[tuple[str, str], ...] = ()  # source label -> choice text
    metric: str = "exact"
    instruction: str = ""
    splits: SplitSpec = field(default_factory=SplitSpec)
    answer_pattern: str | None = None  # regex whose group 1 is the gold answer inside the source's answer
    strip: tuple[str, ...] = ()  # regexes removed from source questions (e.g. a generator's own instruction)
    file: Path | None = None
    benchmark: str | None = None  # the benchmark this task file is part of (reports average over benchmarks)

    @property
    def needs_hub(self) -> bool:
        """True when loading needs the Hugging Face hub (a hub id, not a local folder)."""
        return isinstance(self.source, HFSource) and not Path(self.source.path).is_dir()


# --- parsing -------------------------------------------------------------------------------------------


def _err(file: Path | str, fld: str, problem: str) -> TaskSpecError:
    return TaskSpecError(f"{file}: field '{fld}': {problem}")


def _str(data: dict, key: str, file: Path, *, required: bool = False, default: str | None = None) -> Any:
    value = data.get(key, default)
    if value is None:
        if required:
            raise _err(file, key, "is required")
        return None
    if not isinstance(value, str):
        hint = " (quote it: YAML reads bare yes/no/true as a boolean)" if isinstance(value, bool) else ""
        raise _err(file, key, f"must be a string, got {type(value).__name__} {value!r}{hint}")
    return value


def _str_list(value: Any, file: Path, fld: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        raise _err(file, fld, f"must be a non-empty list of strings, got {value!r}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            hint = " (quote it: YAML reads bare yes/no/true as a boolean)" if isinstance(v, bool) else ""
            raise _err(file, f"{fld}[{i}]", f"must be a string, got {type(v).__name__} {v!r}{hint}")
    return tuple(value)


def _str_map(value: Any, file: Path, fld: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _err(file, fld, f"must be a mapping, got {value!r}")
    out = []
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _err(file, f"{fld}.{k}", f"keys and values must be strings (quote yes/no/True), got {v!r}")
        out.append((k, v))
    return tuple(out)


def _template(data: dict, key: str, file: Path, *, required: bool) -> str | None:
    text = _str(data, key, file, required=required)
    if text is None:
        return None
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:  # unbalanced braces
        raise _err(file, key, f"is not a valid template ({e}); write literal braces as {{{{ }}}}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise _err(file, key, f"unknown placeholder(s) {sorted(unknown)}; allowed: {{question}}, {{choices}}")
    if key == "prompt" and "question" not in names:
        raise _err(file, key, "must contain {question}")
    return text


def _parse_source(value: Any, file: Path) -> Source:
    if not isinstance(value, dict) or len(value) == 0:
        raise _err(file, "source", "must be a mapping with one of: bigbench, reasoning_gym, jsonl, hf")
    kinds = [k for k in ("bigbench", "reasoning_gym", "jsonl", "hf") if k in value]
    if len(kinds) != 1:
        raise _err(
            file, "source", f"needs exactly one of bigbench, reasoning_gym, jsonl, hf; got {sorted(value)}"
        )
    kind = kinds[0]
    body = value[kind]
    extra = set(value) - {kind, "subtasks", "columns"}
    if extra:
        raise _err(file, f"source.{sorted(extra)[0]}", "unknown key")

    if kind == "bigbench":
        if not isinstance(body, str) or not re.fullmatch(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?", body):
            raise _err(
                file,
                "source.bigbench",
                f"must be a task name like 'navigate' or 'arithmetic/1_digit_addition', got {body!r}",
            )
        task, _, sub = body.partition("/")
        subtasks = (sub,) if sub else ()
        if "subtasks" in value:
            if sub:
                raise _err(file, "source.subtasks", "give subtasks either after '/' or as a list, not both")
            subtasks = _str_list(value["subtasks"], file, "source.subtasks")
        return BigBenchSource(task=task, subtasks=subtasks)
    if "subtasks" in value:
        raise _err(file, "source.subtasks", "only BIG-bench sources have subtasks")

    if kind == "reasoning_gym":
        if not isinstance(body, dict):
            raise _err(file, "source.reasoning_gym", "must be a mapping {dataset, size, seed, ...config}")
        body = dict(body)
        ds = body.pop("dataset", None)
        if not isinstance(ds, str):
            raise _err(file, "source.reasoning_gym.dataset", f"is required and must be a string, got {ds!r}")
        size, seed = body.pop("size", None), body.pop("seed", None)
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise _err(file, "source.reasoning_gym.size", f"must be a positive integer, got {size!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise _err(
                file, "source.reasoning_gym.seed", f"must be an integer (generators are seeded), got {seed!r}"
            )
        try:
            config = json.dumps(body, sort_keys=True)
        except TypeError as e:
            raise _err(file, "source.reasoning_gym", f"config values must be plain YAML data: {e}") from None
        return ReasoningGymSource(dataset=ds, size=size, seed=seed, config=config)

    columns = _parse_columns(value.get("columns"), file, "source.columns")
    if kind == "jsonl":
        if not isinstance(body, str) or not body:
            raise _err(file, "source.jsonl", f"must be a file path, got {body!r}")
        path = Path(body).expanduser()
        return JsonlSource(path=path if path.is_absolute() else (file.parent / path), columns=columns)

    # hf
    if not isinstance(body, dict):
        raise _err(file, "source.hf", "must be a mapping {path, name, split, columns, ...}")
    if "columns" in value:
        raise _err(file, "source.columns", "put columns inside source.hf")
    allowed = {"path", "name", "split", "columns", "filter", "metadata", "revision"}
    for k in body:
        if k not in allowed:
            raise _err(file, f"source.hf.{k}", f"unknown key; allowed: {sorted(allowed)}")
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise _err(file, "source.hf.path", f"is required (a hub id or a local folder), got {path!r}")
    if path.startswith((".", "~")):  # a local folder written relative to the task file
        p = Path(path).expanduser()
        path = str(p if p.is_absolute() else (file.parent / p).resolve())
    for k in ("name", "metadata", "revision"):
        if body.get(k) is not None and not isinstance(body[k], str):
            raise _err(file, f"source.hf.{k}", f"must be a string, got {body[k]!r}")
    filt = body.get("filter") or {}
    if not isinstance(filt, dict):
        raise _err(file, "source.hf.filter", f"must be a mapping column: value, got {filt!r}")
    return HFSource(
        path=path,
        name=body.get("name"),
        split=_parse_hf_split(body.get("split", "test"), file),
        columns=_parse_columns(body.get("columns"), file, "source.hf.columns"),
        filter=tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in filt.items())),
        metadata=body.get("metadata"),
        revision=body.get("revision"),
    )


def _parse_hf_split(value: Any, file: Path) -> Any:
    fld = "source.hf.split"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _str_list(value, file, fld)
    if isinstance(value, dict):
        bad = set(value) - {"train", "test"}
        if bad or "test" not in value:
            raise _err(
                file, fld, f"a mapping must have keys 'test' (and optionally 'train'), got {sorted(value)}"
            )
        return tuple(
            sorted(
                (k, v if isinstance(v, str) else _str_list(v, file, f"{fld}.{k}")) for k, v in value.items()
            )
        )
    raise _err(
        file, fld, f"must be a split name, a list of them, or {{test: ..., train: ...}}, got {value!r}"
    )


def _parse_columns(value: Any, file: Path, fld: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs = _str_map(value, file, fld)
    for k, _ in pairs:
        if k not in COLUMN_KEYS:
            raise _err(file, f"{fld}.{k}", f"unknown item field; allowed: {list(COLUMN_KEYS)}")
    return pairs


def _parse_splits(value: Any, file: Path) -> SplitSpec:
    if value is None:
        return SplitSpec()
    allowed = {"test_fraction", "test_size", "validation_fraction"}
    if not isinstance(value, dict) or not set(value) <= allowed or ("test_fraction" in value) == ("test_size" in value):
        raise _err(
            file,
            "splits",
            f"must be {{test_fraction: F, validation_fraction: V}} (V optional) or {{test_size: N}}, got {value!r}",
        )
    if "test_size" in value:
        n = value["test_size"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise _err(file, "splits.test_size", f"must be a positive integer, got {n!r}")
        if "validation_fraction" in value:
            raise _err(file, "splits.validation_fraction", "needs test_fraction (hash-based splits), not test_size")
        return SplitSpec(test_size=n)
    fractions = {}
    for key in ("test_fraction", "validation_fraction"):
        f = value.get(key, 0.0 if key == "validation_fraction" else None)
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1 or (key == "test_fraction" and f == 0):
            raise _err(file, f"splits.{key}", f"must be a number in (0, 1], got {f!r}")
        fractions[key] = float(f)
    if fractions["test_fraction"] + fractions["validation_fraction"] > 1:
        raise _err(file, "splits", f"test_fraction + validation_fraction must be at most 1, got {value!r}")
    return SplitSpec(**fractions)


def parse_spec(data: Any, file: Path | str) -> TaskSpec:
    """Validate one task file's parsed YAML (``file`` names it in errors and anchors relative paths)."""
    file = Path(file)
    if not isinstance(data, dict):
        raise TaskSpecError(f"{file}: a task file must be a YAML mapping, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _err(file, sorted(unknown)[0], f"unknown field; allowed: {sorted(_TOP_KEYS)}")

    name = _str(data, "name", file) or file.stem
    if name != file.stem and file.suffix in (".yaml", ".yml"):
        raise _err(
            file,
            "name",
            f"{name!r} must match the file name {file.stem!r} (the registry finds tasks by file)",
        )
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise _err(file, "name", f"{name!r} may hold only letters, digits, '_', '-' and '.'")
    if "source" not in data:
        raise _err(file, "source", "is required")
    source = _parse_source(data["source"], file)

    answer_type = _str(data, "answer_type", file, required=True)
    if answer_type not in ANSWER_TYPES:
        raise _err(file, "answer_type", f"must be one of {list(ANSWER_TYPES)}, got {answer_type!r}")
    choices = _str_list(data["choices"], file, "choices") if "choices" in data else ()
    if answer_type == "yesno" and len(choices) != 2:
        raise _err(
            file,
            "choices",
            f'a yesno task needs two choices, positive first (e.g. ["yes", "no"]), got {list(choices)}',
        )
    if answer_type in ("number", "text") and choices:
        raise _err(file, "choices", f"makes no sense for answer_type {answer_type!r}")
    if len({c.casefold() for c in choices}) != len(choices):
        raise _err(file, "choices", f"must be distinct (case-insensitively), got {list(choices)}")
    label_map = _str_map(data["label_map"], file, "label_map") if "label_map" in data else ()
    for label, target in label_map:
        if target.casefold() not in {c.casefold() for c in choices}:
            raise _err(
                file, f"label_map.{label}", f"maps to {target!r}, which is not one of choices {list(choices)}"
            )

    metric = _str(data, "metric", file, default="exact")
    if metric not in METRICS:
        raise _err(file, "metric", f"must be one of {list(METRICS)}, got {metric!r}")

    pattern = _str(data, "answer_pattern", file)
    strip: tuple[str, ...] = _str_list(data["strip"], file, "strip") if "strip" in data else ()
    for fld, rx in [("answer_pattern", pattern), *((f"strip[{i}]", s) for i, s in enumerate(strip))]:
        if rx is None:
            continue
        try:
            compiled = re.compile(rx)
        except re.error as e:
            raise _err(file, fld, f"is not a valid regular expression: {e}") from None
        if fld == "answer_pattern" and compiled.groups < 1:
            raise _err(file, fld, "needs a capturing group around the answer, e.g. '####\\s*(.+)'")

    splits = _parse_splits(data.get("splits"), file)
    if isinstance(source, HFSource) and source.hub_splits is not None and data.get("splits") is not None:
        raise _err(file, "splits", "source.hf.split already maps test/train to hub splits; drop one of them")

    return TaskSpec(
        name=name,
        source=source,
        prompt=_template(data, "prompt", file, required=True),  # type: ignore[arg-type]
        spoken_prompt=_template(data, "spoken_prompt", file, required=False),
        answer_type=answer_type,
        description=_str(data, "description", file, default="") or "",
        choices=choices,
        label_map=label_map,
        metric=metric,
        instruction=(_str(data, "instruction", file, default="") or "").strip(),
        splits=splits,
        answer_pattern=pattern,
        strip=strip,
        file=file,
        benchmark=_str(data, "benchmark", file) or None,
    )


def load_spec(path: Path | str) -> TaskSpec:
    """Read and validate one task file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskSpecError(f"{path}: task file not found") from None
    except yaml.YAMLError as e:
        raise TaskSpecError(f"{path}: not valid YAML: {e}") from None
    return parse_spec(data, path)
