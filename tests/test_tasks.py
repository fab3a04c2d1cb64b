"""Task files: the registry, the YAML schema and its errors, every built-in task's items, and the hub loaders
run on local fixtures in the hub datasets' own layouts (tests/data/hub/)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evalsuite.tasks import (
    TaskDataError,
    TaskSpecError,
    build_task,
    get_spec,
    list_tasks,
    load_spec,
    load_task,
)
from evalsuite.tasks.spec import HFSource
from evalsuite.tasks.task import canonical_number, choices_spoken, choices_text, speakable

DATA = Path(__file__).parent / "data"
HUB = DATA / "hub"
BIGBENCH_TASKS = ["navigate", "object_counting", "formal_fallacies_syllogisms_negation", "causal_judgment",
                  "sports_understanding", "arithmetic"]  # fmt: skip
RG_TASKS = ["gsm_symbolic", "sums", "counting", "syllogism", "family"]  # the last four: the default mix
BBA_CATEGORIES = ("formal_fallacies", "navigate", "object_counting", "web_of_lies")
HUB_TASKS = [
    "gsm8k",
    "voicebench_mmsu",
    "voicebench_openbookqa",
    *(f"big_bench_audio_{c}" for c in BBA_CATEGORIES),
]


def check_items(task, n_expected: int | None = None) -> None:
    """What every task must give: unique ids, non-empty text, canonical gold answers, speakable wording."""
    assert task.items, task.name
    if n_expected is not None:
        assert len(task.items) == n_expected
    assert len({i.id for i in task.items}) == len(task.items)
    for item in task.items:
        assert item.id.startswith(task.name + "/")
        assert item.question.strip() and item.answer.strip(), item.id
        if task.answer_type in ("choice", "yesno"):
            assert item.answer in item.choices, (item.id, item.answer, item.choices)
        if task.answer_type == "number":
            assert canonical_number(item.answer) == item.answer, (item.id, item.answer)
        text, spoken = task.render_text(item), task.render_spoken(item)
        assert item.question in text or task.spec.strip, item.id
        assert task.instruction in text
        assert spoken and "\n" not in spoken and "|" not in spoken, (item.id, spoken)  # one line, no tables
        json.dumps(item.meta)  # meta must travel into JSONL reports


def assert_split_contract(name: str, spec=None) -> None:
    """Same seed -> same items; another seed -> another sample; train and test never overlap."""
    load = (lambda **kw: build_task(spec, **kw)) if spec is not None else (lambda **kw: load_task(name, **kw))
    a, b = load(limit=8, seed=3), load(limit=8, seed=3)
    assert [i.id for i in a.items] == [i.id for i in b.items]
    assert [i.question for i in a.items] == [i.question for i in b.items]
    assert [i.id for i in load(limit=8, seed=4).items] != [i.id for i in a.items]
    assert {i.id for i in load(limit=4, seed=3).items} <= {i.id for i in a.items}  # nested limits
    test, train = load(split="test"), load(split="train")
    valid = load(split="validation") if (spec or get_spec(name)).splits.validation_fraction else None
    parts = [test, train] + ([valid] if valid else [])
    for k, one in enumerate(parts):  # disjoint by id and by question text
        for other in parts[k + 1 :]:
            assert not {i.id for i in one.items} & {i.id for i in other.items}
            assert not {i.question.casefold() for i in one.items} & {i.question.casefold() for i in other.items}
    assert {i.id for i in a.items} <= {i.id for i in test.items}


# --- pure helpers ----------------------------------------------------------------------------------------


def test_rendering_helpers():
    assert choices_text(("red", "blue"), "choice") == "A) red\nB) blue"
    assert choices_spoken(("red", "blue."), "choice") == "Option A: red. Option B: blue."
    assert choices_text(("valid", "invalid"), "yesno") == "valid or invalid"
    assert (
        speakable("Consider:\n1. All cats purr\n\n2. Tom is a cat\nSo?")
        == "Consider: 1. All cats purr. 2. Tom is a cat. So?"
    )
    values = ("1,500", "12.0", "3.50", "-4", "+7", 12.0, 7, True, "12 apples")
    assert [canonical_number(v) for v in values] == ["1500", "12", "3.5", "-4", "7", "12", "7", None, None]


# --- the registry ----------------------------------------------------------------------------------------


def test_registry_lists_every_builtin_task():
    assert set(BIGBENCH_TASKS + RG_TASKS + HUB_TASKS) <= set(list_tasks())
    for name in HUB_TASKS:
        assert get_spec(name).needs_hub
    for name in BIGBENCH_TASKS + RG_TASKS:
        assert not get_spec(name).needs_hub


def test_unknown_task_lists_the_available_ones():
    with pytest.raises(KeyError) as e:
        load_task("navigat")
    msg = str(e.value)
    assert (
        "unknown task 'navigat'" in msg
        and "navigate" in msg
        and "gsm_symbolic" in msg
        and "XOPD_TASKS_PATH" in msg
    )


def test_task_added_by_a_file_alone(tmp_path, monkeypatch):
    (tmp_path / "colors.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "id": "sky",
                    "question": "What color is a clear sky?",
                    "choices": ["green", "blue", "red"],
                    "answer": "B",
                },
                {
                    "id": "grass",
                    "question": "What color is grass?",
                    "choices": ["green", "blue", "red"],
                    "answer": "green",
                },
                {
                    "id": "blood",
                    "question": "What color is blood?",
                    "choices": ["green", "blue", "red"],
                    "answer": 2,
                    "topic": "body",
                },
            ]
        )
        + "\n"  # fmt: skip
    )
    (tmp_path / "colors.yaml").write_text(
        "description: Colors of things.\n"
        "source: {jsonl: colors.jsonl}\n"
        "answer_type: choice\n"
        'prompt: "{question}\\nOptions:\\n{choices}"\n'
        'spoken_prompt: "{question} Is it {choices}"\n'
        "instruction: Answer with the letter.\n"
    )
    monkeypatch.setenv("XOPD_TASKS_PATH", f"{tmp_path / 'missing'}{os.pathsep}{tmp_path}")
    with pytest.warns(UserWarning, match="not a folder"):
        assert "colors" in list_tasks()
    monkeypatch.setenv("XOPD_TASKS_PATH", str(tmp_path))
    task = load_task("colors")
    check_items(task, 3)
    by_id = {i.id: i for i in task.items}
    sky = by_id["colors/sky"]
    assert (
        sky.answer == "blue"
        and by_id["colors/grass"].answer == "green"
        and by_id["colors/blood"].answer == "red"
    )
    assert by_id["colors/blood"].meta["topic"] == "body"
    assert (
        task.render_text(sky)
        == "What color is a clear sky?\nOptions:\nA) green\nB) blue\nC) red\nAnswer with the letter."
    )
    assert (
        task.render_spoken(sky)
        == "What color is a clear sky? Is it Option A: green. Option B: blue. Option C: red."
    )
    assert task.score(sky, "B") is None  # no source scorer: the generic comparison decides

    # a file in XOPD_TASKS_PATH named like a built-in task replaces it
    (tmp_path / "navigate.yaml").write_text((tmp_path / "colors.yaml").read_text())
    assert get_spec("navigate").file == tmp_path / "navigate.yaml"
    assert load_task("navigate", limit=2).items[0].id.startswith("navigate/")


NAV = "source: {reasoning_gym: {dataset: syllogism, size: 10, seed: 1}}\n"
NUM = 'answer_type: number\nprompt: "{question}"\n'
BAD_FILES = {
    "choices[0]": NAV + 'answer_type: yesno\nchoices: [yes, no]\nprompt: "{question}"\n',
    "answer_type": NAV + 'answer_type: boolean\nprompt: "{question}"\n',
    "prompt": NAV + 'answer_type: number\nprompt: "{question} {options}"\n',
    "source": NUM,
    "splits.test_fraction": NAV + NUM + "splits: {test_fraction: 2}\n",
    "source.reasoning_gym.seed": "source: {reasoning_gym: {dataset: syllogism, size: 10}}\n" + NUM,
    "name": "name: other\n" + NAV + NUM,
    "label_map.True": NAV
    + 'answer_type: yesno\nchoices: ["yes", "no"]\nlabel_map: {"True": "y"}\nprompt: "{question}"\n',
    "answer_pattern": NAV + NUM + 'answer_pattern: "####"\n',
    "promt": NAV + 'answer_type: number\npromt: "{question}"\n',
}


@pytest.mark.parametrize("field", sorted(BAD_FILES))
def test_malformed_task_file_names_file_and_field(tmp_path, monkeypatch, field):
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_FILES[field])
    monkeypatch.setenv("XOPD_TASKS_PATH", str(tmp_path))
    with pytest.raises(TaskSpecError) as e:
        load_task("broken")
    assert str(path) in str(e.value) and f"field '{field}'" in str(e.value), str(e.value)


def test_unparseable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("source: {jsonl: q.jsonl\nprompt: [\n")
    with pytest.raises(TaskSpecError, match=str(path)):
        load_spec(path)


def test_bad_data_names_the_item(tmp_path):
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"id": "x1", "question": "Pick one.", "choices": ["a", "b"], "answer": "c"}) + "\n"
    )
    (tmp_path / "q.yaml").write_text('source: {jsonl: q.jsonl}\nanswer_type: choice\nprompt: "{question}"\n')
    with pytest.raises(TaskDataError, match="'q/x1'.*not one of the choices"):
        build_task(load_spec(tmp_path / "q.yaml"))
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "How many?", "answer": "many"}) + "\n")
    (tmp_path / "q.yaml").write_text('source: {jsonl: q.jsonl}\nanswer_type: number\nprompt: "{question}"\n')
    with pytest.raises(TaskDataError, match="'q/00001'.*no numeric gold answer"):
        build_task(load_spec(tmp_path / "q.yaml"))
    with pytest.raises(ValueError, match="no 'train' items"):
        build_task(load_spec(tmp_path / "q.yaml"), split="train")


# --- reasoning-gym tasks (offline, seeded) ---------------------------------------------------------------


@pytest.mark.parametrize("name", RG_TASKS)
def test_reasoning_gym_task(name):
    task = load_task(name, limit=20)
    check_items(task, 20)
    assert_split_contract(name)
    spec = get_spec(name)
    splits = {s: load_task(name, split=s) for s in ("test", "validation", "train")} if spec.splits.validation_fraction \
        else {s: load_task(name, split=s) for s in ("test", "train")}
    pool = sum(len(t) for t in splits.values())
    assert 0.7 * spec.source.size < pool <= spec.source.size  # the splits divide the deduplicated pool
    for s, t in splits.items():
        want = {"test": spec.splits.test_fraction, "validation": spec.splits.validation_fraction}.get(s)
        if want is not None:
            assert abs(len(t) / pool - want) < 0.03, (s, len(t), pool)
    test = splits["test"]
    for item in task.items:
        assert "final answer" not in item.question and "(Answer Yes or No)" not in item.question  # stripped
        assert task.score(item, item.answer) is True
        assert task.score(item, None) is None
    if name == "syllogism":
        item = task.items[0]
        other = next(c for c in item.choices if c != item.answer)
        assert task.score(item, item.answer.upper()) is True  # "YES" -> the generator's own "Yes"
        assert task.score(item, other) is False
        assert {i.answer for i in test.items} == {"yes", "no"}
    elif name == "family":
        item = task.items[0]
        other = next(c for c in item.choices if c != item.answer)
        assert task.score(item, item.answer.capitalize()) is True and task.score(item, other) is False
        assert len({i.answer for i in test.items}) >= 5  # husband, wife, son, father, mother, in-laws
    else:
        item = task.items[0]
        assert task.score(item, int(item.answer)) is True
        assert task.score(item, str(int(item.answer) + 1)) is False


# --- hub loaders on local fixtures -------------------------------------------------------------------------


def local(name: str, path: Path, **changes):
    """A built-in hub task's spec with ``hf.path`` pointing at a local folder in the hub's layout."""
    spec = get_spec(name)
    assert isinstance(spec.source, HFSource) and spec.needs_hub
    spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, path=str(path), **changes))
    assert not spec.needs_hub
    return spec


def test_gsm8k_loader_on_a_local_copy():
    spec = local("gsm8k", HUB / "gsm8k")
    test, train = build_task(spec), build_task(spec, split="train")
    check_items(test, 3)
    check_items(train, 2)
    assert [i.answer for i in test.items] == ["29", "1500", "210"]  # "#### 1,500" -> "1500"
    assert test.items[0].meta["hf_split"] == "test" and test.items[0].id == "gsm8k/test/00000"
    assert build_task(spec, limit=2, seed=1).items[0].id in {i.id for i in test.items}


def _wav_bytes(seconds: float, freq: float) -> bytes:
    t = np.arange(int(16_000 * seconds)) / 16_000
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16_000, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def voicebench_copy(tmp_path_factory) -> Path:
    """hlt-lab/voicebench's layout: a README with configs and parquet files with an Audio column (bytes)."""
    import datasets

    root = tmp_path_factory.mktemp("voicebench")
    shutil.copy(HUB / "voicebench" / "README.md", root / "README.md")
    groups: dict[tuple[str, str], list[dict]] = {}
    for line in (HUB / "voicebench" / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        groups.setdefault((row["config"], row["split"]), []).append(row)
    for k, ((config, split), rows) in enumerate(groups.items()):
        ds = datasets.Dataset.from_dict({
            "audio": [{"bytes": _wav_bytes(0.2, 300 + 20 * k + j), "path": f"{split}_{j}.wav"}
                      for j in range(len(rows))],
            "prompt": [r["prompt"] for r in rows], "reference": [r["reference"] for r in rows]})  # fmt: skip
        ds = ds.cast_column("audio", datasets.Audio())  # cast, not encode: encoding would need torchcodec
        (root / config).mkdir(exist_ok=True)
        ds.to_parquet(str(root / config / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("name,n", [("voicebench_mmsu", 12), ("voicebench_openbookqa", 2)])
def test_voicebench_loader_on_a_local_copy(voicebench_copy, name, n):
    task = build_task(local(name, voicebench_copy))
    check_items(task, n)
    for item in task.items:
        assert item.choices == ("A", "B", "C", "D") and item.answer in "ABCD"
        assert "\nA. " in item.question  # the options travel inside the question, as in VoiceBench
        audio, sr = sf.read(item.audio)
        assert sr == 16_000 and audio.ndim == 1 and len(audio) == 3200, item.audio
    if name == "voicebench_mmsu":
        assert len({i.meta["hf_split"] for i in task.items}) == 12


@pytest.fixture(scope="module")
def big_bench_audio_copy(tmp_path_factory) -> Path:
    """ArtificialAnalysis/big_bench_audio's layout: metadata.jsonl + data/question_N.* (espeak-ng speech)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to synthesise the Big Bench Audio fixture")
    from evalsuite.tts import SAMPLE_RATE, espeak_synthesize

    root = tmp_path_factory.mktemp("big_bench_audio")
    shutil.copy(HUB / "big_bench_audio" / "metadata.jsonl", root / "metadata.jsonl")
    (root / "data").mkdir()
    for line in (root / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        sf.write(root / row["file_name"], espeak_synthesize(row["transcript"][:60], rate=260), SAMPLE_RATE)
    return root


@pytest.mark.parametrize("category,answer", [("formal_fallacies", "valid"), ("navigate", "yes"),
                                             ("object_counting", "4"), ("web_of_lies", "no")])  # fmt: skip
def test_big_bench_audio_loader_on_a_local_copy(big_bench_audio_copy, category, answer):
    task = build_task(local(f"big_bench_audio_{category}", big_bench_audio_copy))
    check_items(task, 1)  # the category filter keeps one row of four
    item = task.items[0]
    assert item.answer == answer and item.meta["category"] == category
    assert Path(item.audio).parent == big_bench_audio_copy / "data"  # the recording itself, not a copy
    audio, sr = sf.read(item.audio)
    assert sr == 16_000 and len(audio) > 1600


def test_hub_task_without_hub_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot load Hugging Face hub dataset 'openai/gsm8k'.*local copy"):
        load_task("gsm8k", limit=1)
