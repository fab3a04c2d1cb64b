"""A loaded task: its spec, the items of one split, and how an item becomes a user message or spoken words.

Items are built from source rows by the task file's rules: ``strip`` cleans the question, the gold answer is
put in canonical form (``"12"``, a choice's text such as ``"yes"``/``"invalid"``), and the spoken wording
is rendered once into ``Item.spoken``, so that TTS sees exactly what ``render_spoken`` returns.

Splits never overlap: rows are deduplicated on their normalised question text (the first one kept), and an
item's split depends only on a hash of that text (see ``SplitSpec``), never on its row index, the seed or the
limit. The seed picks which items a ``limit`` keeps; smaller limits give nested subsets, and the kept items
stay in source order.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass, field
from typing import Any

from evalsuite.spoken_form import say
from evalsuite.tasks import bigbench, hub, rgym
from evalsuite.tasks.source import Row, Scorer, SourceData
from evalsuite.tasks.spec import BigBenchSource, HFSource, JsonlSource, ReasoningGymSource, TaskSpec
from evalsuite.types import Item

SPLITS = ("test", "validation", "train")
_LETTERS = string.ascii_uppercase
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class TaskDataError(ValueError):
    """A source row cannot become an item (no gold answer, gold not among the choices, ...)."""


# --- rendering -----------------------------------------------------------------------------------------


def choices_text(choices: tuple[str, ...], answer_type: str) -> str:
    """``{choices}`` in a text prompt: "A) ..." lines for multiple choice, "yes or no" for binary labels."""
    if answer_type == "choice":
        return "\n".join(f"{_LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return " or ".join(choices)


def choices_spoken(choices: tuple[str, ...], answer_type: str) -> str:
    """``{choices}`` in a spoken prompt: "Option A: ... . Option B: ... ." (no layout to read aloud)."""
    if answer_type == "choice":
        return " ".join(f"Option {_LETTERS[i]}: {c.rstrip('.')}." for i, c in enumerate(choices))
    return " or ".join(choices)


def speakable(text: str) -> str:
    """One line of speech: every line break becomes a sentence end unless punctuation already ends it."""
    parts = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            parts.append(line if line[-1] in ".?!:;," else line + ".")
    return " ".join(parts)


def _clean(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


# --- answers -------------------------------------------------------------------------------------------


def canonical_number(value: Any) -> str | None:
    """ "1,000" -> "1000", 12.0 -> "12", "3.50" -> "3.5"; None when the value is not a plain number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        return None
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", value.strip()).rstrip(".")
    if s.startswith("$"):
        s = s[1:]
    if not _NUMBER.fullmatch(s):
        return None
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    s = s.lstrip("+")
    if s in ("-0", ""):
        s = "0"
    return s


def _match_choice(label: Any, choices: tuple[str, ...], label_map: dict[str, str]) -> str | None:
    if (
        isinstance(label, bool) and len(choices) == 2
    ):  # a boolean gold answer: True is the first (positive) choice
        return choices[0] if label else choices[1]
    if isinstance(label, int) and not isinstance(label, bool):
        return choices[label] if 0 <= label < len(choices) else None  # hub datasets store 0-based indices
    text = str(label).strip()
    text = label_map.get(text, label_map.get(text.casefold(), text))
    for c in choices:
        if c.casefold() == text.casefold():
            return c
    if len(text) == 1 and text.upper() in _LETTERS[: len(choices)]:  # a gold letter for option texts
        return choices[_LETTERS.index(text.upper())]
    return None


# --- the task ------------------------------------------------------------------------------------------


@dataclass
class Task:
    """A task file applied to its data: ``items`` of one split, ready to render and score."""

    spec: TaskSpec
    split: str
    seed: int
    limit: int | None
    items: list[Item]
    _scorer: Scorer | None = field(default=None, repr=False)
    _labels: dict[str, str] = field(default_factory=dict, repr=False)  # choice (casefolded) -> source label

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def answer_type(self) -> str:
        return self.spec.answer_type

    @property
    def instruction(self) -> str:
        """The answer-format instruction, also sent as text beside the audio in speech mode."""
        return self.spec.instruction

    def __len__(self) -> int:
        return len(self.items)

    def render_text(self, item: Item) -> str:
        """The user message of the text version: the prompt template, then the instruction."""
        body = self.spec.prompt.format(
            question=item.question, choices=choices_text(item.choices, self.spec.answer_type)
        ).strip()
        return f"{body}\n{self.spec.instruction}" if self.spec.instruction else body

    def render_spoken(self, item: Item) -> str:
        """What the speech version says aloud (no instruction: that goes as text beside the audio)."""
        if item.spoken:
            return item.spoken
        return spoken_text(self.spec, item.question, item.choices)

    def score(self, item: Item, extracted: Any) -> bool | None:
        """The source's own verdict (reasoning-gym's ``score_answer``) on an extracted answer, or None to
        mean "use the generic comparison with ``item.answer``" (also when nothing was extracted)."""
        if self._scorer is None or extracted is None:
            return None
        if isinstance(extracted, bool) and self.spec.answer_type == "yesno":
            text = item.choices[0] if extracted else item.choices[1]
        elif isinstance(extracted, float) and extracted.is_integer():
            text = str(int(extracted))
        else:
            text = str(extracted).strip()
        if item.choices:  # hand the scorer the label spelling its source uses ("Yes", not "yes")
            chosen = _match_choice(text, item.choices, {})
            if chosen is not None:
                text = self._labels.get(chosen.casefold(), chosen)
        return self._scorer(item.meta, text) >= 1.0


def spoken_text(spec: TaskSpec, question: str, choices: tuple[str, ...]) -> str:
    """The spoken wording: ``spoken_prompt`` if given, else the text prompt itself, read aloud (line breaks
    become sentence ends, options become "Option A: ..."), so speech asks what the text asks."""
    template = spec.spoken_prompt if spec.spoken_prompt is not None else spec.prompt
    return speakable(say(template.format(question=question, choices=choices_spoken(choices, spec.answer_type))))


def _unit_hash(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def normalized_question(text: str) -> str:
    """The split and deduplication key of a question: case-folded, spacing collapsed."""
    return " ".join(text.casefold().split())


def row_split(spec: TaskSpec, row: Row, index: int, question: str) -> str:
    """``row``'s split: the source's own, else by a hash of the normalised ``question`` (see ``SplitSpec``)."""
    if row.split is not None:
        return row.split
    sp = spec.splits
    if sp.test_fraction is not None:
        u = _unit_hash(normalized_question(question))
        if u < sp.test_fraction:
            return "test"
        return "validation" if u < sp.test_fraction + sp.validation_fraction else "train"
    if sp.test_size is not None:
        return "test" if index < sp.test_size else "train"
    return "test"


def clean_question(spec: TaskSpec, row: Row) -> str:
    """The question as typed: the task file's ``strip`` patterns removed, blank lines and spacing tidied."""
    question = row.question
    for rx in spec.strip:
        question = re.sub(rx, " ", question)
    return _clean(question)


def make_item(spec: TaskSpec, row: Row) -> tuple[Item, str | None]:
    """An item from a row, and the source's own spelling of the gold label (for source scorers)."""
    item_id = f"{spec.name}/{row.local_id}"
    where = f"task {spec.name!r} item {item_id!r}"
    question = clean_question(spec, row)  # may be empty: the evaluator marks such an item "empty prompt"

    answers: list[Any] = list(row.answers)
    if spec.answer_pattern:
        for i, a in enumerate(answers):
            m = re.search(spec.answer_pattern, str(a), flags=re.S)
            if m is None:
                raise TaskDataError(
                    f"{where}: answer_pattern {spec.answer_pattern!r} does not match {str(a)[-200:]!r}"
                )
            answers[i] = m.group(1).strip()
    if not answers:
        raise TaskDataError(f"{where}: no gold answer")

    label_map = dict(spec.label_map)
    label_map.update({k.casefold(): v for k, v in spec.label_map})
    choices: tuple[str, ...] = ()
    source_label = None
    if spec.answer_type == "number":
        forms = [canonical_number(a) for a in answers]
        numbers = [f for f in forms if f is not None]
        if not numbers:
            raise TaskDataError(f"{where}: no numeric gold answer in {answers!r}")
        gold = numbers[0]
        aliases = [str(a) for a in answers if str(a) != gold]
    elif spec.answer_type in ("choice", "yesno"):
        choices = spec.choices if spec.answer_type == "yesno" else (row.choices or spec.choices)
        if not choices:
            raise TaskDataError(
                f"{where}: a choice task needs options (from the source or the 'choices' field)"
            )
        if len(choices) > len(_LETTERS):
            raise TaskDataError(f"{where}: more than {len(_LETTERS)} options")
        mapped = [_match_choice(a, choices, label_map) for a in answers]
        if mapped[0] is None:
            raise TaskDataError(
                f"{where}: gold answer {answers[0]!r} is not one of the choices {list(choices)} "
                "(see label_map)"
            )
        gold = mapped[0]
        aliases = [m for m in mapped[1:] if m is not None and m != gold]
        source_label = str(answers[0]) if isinstance(answers[0], str) else None
    else:
        gold = str(answers[0]).strip()
        if not gold:
            raise TaskDataError(f"{where}: empty gold answer")
        aliases = [str(a).strip() for a in answers[1:]]

    meta = dict(row.meta)
    if aliases:
        meta["aliases"] = aliases
    spoken = spoken_text(spec, _clean(row.spoken) if row.spoken else question, choices)
    item = Item(
        id=item_id, question=question, answer=gold, choices=choices, spoken=spoken, audio=row.audio, meta=meta
    )
    return item, source_label


def load_source(spec: TaskSpec) -> SourceData:
    """Dispatch on the source kind. The loaders import their heavy libraries (``datasets``,
    ``reasoning_gym``) only when they load, so a BIG-bench task never imports ``datasets``."""
    src = spec.source
    if isinstance(src, BigBenchSource):
        return SourceData(bigbench.load_rows(src))
    if isinstance(src, ReasoningGymSource):
        return rgym.load_rows(src)
    if isinstance(src, JsonlSource):
        return SourceData(hub.jsonl_rows(src))
    if isinstance(src, HFSource):
        return SourceData(hub.hf_rows(src, task=spec.name))
    raise TypeError(f"unknown source type {type(src).__name__}")


def build_task(spec: TaskSpec, *, split: str = "test", limit: int | None = None, seed: int = 0) -> Task:
    """Load ``spec``'s data and keep the items of ``split`` (``limit`` of them, picked by ``seed``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    data = load_source(spec)
    ids = [r.local_id for r in data.rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskDataError(f"task {spec.name!r}: duplicate item id {dup!r} in the source")
    seen: set[str] = set()
    chosen = []
    for k, r in enumerate(data.rows):
        question = clean_question(spec, r)
        key = normalized_question(question) + "\x00" + (r.audio or "")  # a recording makes a new item
        if question and key in seen:  # a generator may produce one question twice: keep the first
            continue
        seen.add(key)
        if row_split(spec, r, k, question) == split:
            chosen.append(k)
    if not chosen:
        raise ValueError(
            f"task {spec.name!r} has no {split!r} items ({len(data.rows)} rows; splits: {spec.splits}); "
            "set 'splits' in its task file to divide it"
        )
    if limit is not None and limit < len(chosen):
        order = list(chosen)
        random.Random(f"{spec.name}:{seed}").shuffle(order)
        chosen = sorted(order[:limit])  # nested in limit, kept in source order
    items, labels = [], {}
    for k in chosen:
        item, label = make_item(spec, data.rows[k])
        items.append(item)
        if label is not None:
            labels.setdefault(item.answer.casefold(), label)
    return Task(
        spec=spec, split=split, seed=seed, limit=limit, items=items, _scorer=data.scorer, _labels=labels
    )
