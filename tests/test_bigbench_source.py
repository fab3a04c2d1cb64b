"""BIG-bench is an optional source with three ways in; each is run here on fixtures the tests write in that
way's own layout: (a) a ``bigbench-1.0.0.tar.gz`` sdist, (b) a git checkout, (c) a local copy of the
``hails/bigbench`` Hugging Face dataset. Nothing is downloaded, and no real BIG-bench data is needed."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from evalsuite.tasks import build_task, get_spec, load_spec, load_task
from evalsuite.tasks.bigbench import BigBenchError, parse_task_json
from evalsuite.tasks.spec import BigBenchSource

NAVIGATE = [
    {"input": f"  Take {n} steps.\n  Turn around.\n\n  Take {n + (i % 2)} steps.",
     "target_scores": {"True": int(i % 2 == 0), "False": int(i % 2 == 1)}}
    for i, n in enumerate(range(1, 13))
]  # fmt: skip
OBJECT_COUNTING = [
    {"input": f"I have {k} apples and a pear. How many fruits do I have?", "target": [str(k + 1), w]}
    for k, w in [(1, "two"), (2, "three"), (3, "four"), (4, "five"), (5, "six"), (6, "seven")]
]


def _sums(pairs, word: str) -> list[dict]:
    sign = 1 if word == "plus" else -1
    return [{"input": f"What is {a} {word} {b}?", "target": str(a + sign * b)} for a, b in pairs]


ARITH_SUBTASKS = {
    "1_digit_addition": _sums([(a, a + 1) for a in range(1, 7)], "plus"),
    "1_digit_subtraction": _sums([(a, 1) for a in range(2, 8)], "minus"),
    "2_digit_addition": _sums([(a, 10) for a in range(11, 17)], "plus"),
    "2_digit_subtraction": _sums([(a, 10) for a in range(21, 27)], "minus"),
    "3_digit_addition": _sums([(a, 100) for a in range(101, 107)], "plus"),
}


def _task_json(name: str, examples: list[dict]) -> str:
    return json.dumps({"name": name, "description": f"xopd fixture for {name}", "keywords": ["fixture"],
                       "metrics": ["exact_str_match"], "examples": examples})  # fmt: skip


def _task_files() -> dict[str, str]:
    """Paths below ``benchmark_tasks/`` -> task.json text, as BIG-bench lays them out."""
    files = {
        "navigate/task.json": _task_json("navigate", NAVIGATE),
        "object_counting/task.json": _task_json("object_counting", OBJECT_COUNTING),
        "arithmetic/task.json": json.dumps({"name": "arithmetic", "subtasks": sorted(ARITH_SUBTASKS)}),
    }
    for sub, examples in ARITH_SUBTASKS.items():
        files[f"arithmetic/{sub}/task.json"] = _task_json(f"arithmetic:{sub}", examples)
    return files


def make_sdist(path: Path) -> Path:
    """A tiny stand-in for bigbench-1.0.0.tar.gz: the task.json members plus some files the reader skips."""
    extra = {"bigbench-1.0.0/setup.py": "# not a task\n", "bigbench-1.0.0/bigbench/api/task.py": "# api\n",
             "bigbench-1.0.0/bigbench/benchmark_tasks/navigate/README.md": "# navigate\n"}  # fmt: skip
    members = {f"bigbench-1.0.0/bigbench/benchmark_tasks/{k}": v for k, v in _task_files().items()} | extra
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_checkout(root: Path) -> Path:
    """A BIG-bench git checkout as far as xopd reads it."""
    tasks = root / "bigbench" / "benchmark_tasks"
    for rel, text in _task_files().items():
        (tasks / rel).parent.mkdir(parents=True, exist_ok=True)
        (tasks / rel).write_text(text)
    (tasks / "navigate" / "README.md").write_text("# navigate\n")
    (root / "README.md").write_text("# BIG-bench\n")
    return root


def _hf_records(task: str) -> dict[str, list]:
    """The task's examples in hails/bigbench's columns, formatted as BIG-bench's zero-shot HF export does:
    ``Q: `` + input + ``\\n  choice: `` options + ``\\nA:`` (stripped), scores as ints."""
    examples = {"navigate": NAVIGATE, "object_counting": OBJECT_COUNTING}[task]
    cols: dict[str, list] = {k: [] for k in ("idx", "inputs", "targets", "multiple_choice_targets",
                                             "multiple_choice_scores")}  # fmt: skip
    for i, ex in enumerate(examples):
        text = "Q: " + ex["input"]
        scores = ex.get("target_scores", {})
        if scores:
            text += "".join(f"\n  choice: {c}" for c in sorted(scores, reverse=i % 2 == 1))
            targets = [max(scores, key=scores.get)]
        else:
            targets = ex["target"]
        cols["idx"].append(i)
        cols["inputs"].append((text + "\nA:").strip())
        cols["targets"].append(targets)
        cols["multiple_choice_targets"].append(list(scores))
        cols["multiple_choice_scores"].append([int(v) for v in scores.values()])
    return cols


def make_hf_copy(root: Path, layout: str) -> Path:
    """A local copy of hails/bigbench: the hub repository's parquet layout, or save_to_disk per config."""
    import datasets

    for task in ("navigate", "object_counting"):
        ds = datasets.Dataset.from_dict(_hf_records(task))
        folder = root / f"{task}_zero_shot"
        if layout == "parquet":
            folder.mkdir(parents=True)
            ds.to_parquet(str(folder / "default-00000-of-00001-0123456789abcdef.parquet"))
            ds.select(range(4)).to_parquet(str(folder / "train-00000-of-00001-0123456789abcdef.parquet"))
        else:
            datasets.DatasetDict({"default": ds, "train": ds.select(range(4))}).save_to_disk(str(folder))
    return root


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty XOPD_HOME, offline, and none of the three ways set."""
    home = tmp_path / "xopd-home"
    monkeypatch.setenv("XOPD_HOME", str(home))
    monkeypatch.setenv("XOPD_OFFLINE", "1")
    for var in ("XOPD_BIGBENCH_DIR", "XOPD_BIGBENCH_SDIST", "XOPD_BIGBENCH_HF", "XOPD_TASKS_PATH"):
        monkeypatch.delenv(var, raising=False)
    return home


def _no_subprocess(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"BIG-bench loading started a process: {a}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def all_items(name: str) -> list:
    """Every item of a task, over all its splits."""
    validation = getattr(get_spec(name).splits, "validation_fraction", 0)  # when the task file has one
    splits = ["test", "train"] + (["validation"] if validation else [])
    return [i for s in splits for i in load_task(name, split=s).items]


def check_navigate(task) -> None:
    assert task.items and all(i.answer in ("yes", "no") for i in task.items)
    assert {i.answer for i in all_items("navigate")} == {"yes", "no"}  # both labels occur
    assert all(task.score(i, i.answer) is None for i in task.items)  # generic comparison for BIG-bench
    again, other = load_task("navigate", limit=4, seed=0), load_task("navigate", split="train")
    assert [i.id for i in again.items] == [i.id for i in task.items]
    assert not {i.id for i in other.items} & {i.id for i in load_task("navigate").items}
    for item in task.items:
        assert item.question.startswith("Take ") and "choice:" not in item.question
        assert "Q:" not in item.question
        assert not item.question.endswith("A:")
    first = {i.meta["index"]: i for i in task.items}
    if 0 in first:
        assert first[0].question == "Take 1 steps.\nTurn around.\nTake 1 steps." and first[0].answer == "yes"


def check_builtin_arithmetic() -> None:
    items = all_items("arithmetic")
    subs = {i.id.split("/")[1] for i in items}
    assert subs == {"1_digit_addition", "1_digit_subtraction", "2_digit_addition", "2_digit_subtraction"}
    assert all(" plus " in i.question or " minus " in i.question for i in items)


def check_subtask_task_file(tmp_path) -> None:
    (tmp_path / "add3.yaml").write_text(
        'source: {bigbench: arithmetic/3_digit_addition}\nanswer_type: number\nprompt: "{question}"\n'
    )
    task = build_task(load_spec(tmp_path / "add3.yaml"))
    assert len(task.items) == 6 and all("/3_digit_addition/" in i.id for i in task.items)
    assert {i.answer for i in task.items} == {str(a + 100) for a in range(101, 107)}
    (tmp_path / "add9.yaml").write_text(
        'source: {bigbench: arithmetic/9_digit_addition}\nanswer_type: number\nprompt: "{question}"\n'
    )
    with pytest.raises(BigBenchError, match="no subtask '9_digit_addition'.*3_digit_addition"):
        build_task(load_spec(tmp_path / "add9.yaml"))


# --- (a) a local sdist -------------------------------------------------------------------------------------


def test_sdist_from_env_extracts_only_the_asked_task_into_the_cache(home, tmp_path, monkeypatch):
    _no_subprocess(monkeypatch)
    sdist = make_sdist(tmp_path / "bigbench-1.0.0.tar.gz")
    monkeypatch.setenv("XOPD_BIGBENCH_SDIST", str(sdist))
    check_navigate(load_task("navigate", limit=4))
    cache = home / "data" / "bigbench"
    assert (cache / "navigate" / "task.json").is_file()
    assert not (cache / "navigate" / "README.md").exists()
    assert not (cache / "arithmetic").exists()  # only what is asked
    assert not (cache / "object_counting").exists()
    assert set(json.loads((cache / "index.json").read_text())["tasks"]) == {"navigate", "object_counting",
                                                                             "arithmetic"}  # fmt: skip
    check_builtin_arithmetic()
    check_subtask_task_file(tmp_path)
    assert sorted(p.name for p in (cache / "arithmetic").iterdir()) == sorted([*ARITH_SUBTASKS, "task.json"])

    # the cache keeps working without the sdist
    sdist.unlink()
    monkeypatch.delenv("XOPD_BIGBENCH_SDIST")
    check_navigate(load_task("navigate", limit=4))
    with pytest.raises(BigBenchError, match="not extracted yet"):
        load_task("object_counting")


@pytest.fixture
def downloads_sdist(home) -> Path:
    (home / "downloads").mkdir(parents=True)
    return make_sdist(home / "downloads" / "bigbench-1.0.0.tar.gz")


def test_sdist_in_downloads_folder(home, downloads_sdist):
    items = all_items("object_counting")
    assert len(items) == len(OBJECT_COUNTING)
    assert all(i.answer.isdigit() and i.meta["aliases"] for i in items)  # "three" kept beside "3"


def test_unreadable_sdist_is_listed(home, tmp_path, monkeypatch):
    bad = tmp_path / "bigbench-1.0.0.tar.gz"
    bad.write_bytes(b"not a tarball")
    monkeypatch.setenv("XOPD_BIGBENCH_SDIST", str(bad))
    with pytest.raises(BigBenchError, match=r"XOPD_BIGBENCH_SDIST=.*: not a readable sdist tarball"):
        load_task("navigate")


# --- (b) a git checkout ------------------------------------------------------------------------------------


@pytest.mark.parametrize("point_at", ["root", "bigbench/benchmark_tasks"])
def test_checkout(home, tmp_path, monkeypatch, point_at):
    _no_subprocess(monkeypatch)
    root = make_checkout(tmp_path / "BIG-bench")
    monkeypatch.setenv("XOPD_BIGBENCH_DIR", str(root if point_at == "root" else root / point_at))
    check_navigate(load_task("navigate", limit=4))
    check_builtin_arithmetic()
    check_subtask_task_file(tmp_path)
    assert not (home / "data" / "bigbench").exists()  # read in place, nothing copied


# --- (c) a local copy of the Hugging Face dataset ----------------------------------------------------------


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_hf_local_copy(home, tmp_path, monkeypatch, layout):
    _no_subprocess(monkeypatch)
    monkeypatch.setenv("XOPD_BIGBENCH_HF", str(make_hf_copy(tmp_path / "hf-bigbench", layout)))
    # XOPD_OFFLINE=1 (set by the fixture) stops the hub, not a local copy
    task = load_task("navigate", limit=4)
    check_navigate(task)
    full = all_items("navigate")
    assert len(full) == len(NAVIGATE)  # the 'default' split, not 'train'
    assert all(i.id.startswith("navigate/") and i.meta["source"] == "bigbench:navigate" for i in full)
    counting = all_items("object_counting")
    assert sorted(i.answer for i in counting) == sorted(ex["target"][0] for ex in OBJECT_COUNTING)
    assert all(i.meta["aliases"] and i.question.endswith("How many fruits do I have?") for i in counting)


def test_hf_rows_match_the_task_json_rows(home, tmp_path, monkeypatch):
    """The same examples through the hub form and through task.json give the same questions and answers."""
    root = make_checkout(tmp_path / "BIG-bench")
    monkeypatch.setenv("XOPD_BIGBENCH_DIR", str(root))
    from_json = {i.id: (i.question, i.answer, i.choices) for i in all_items("navigate")}
    monkeypatch.delenv("XOPD_BIGBENCH_DIR")
    monkeypatch.setenv("XOPD_BIGBENCH_HF", str(make_hf_copy(tmp_path / "hf", "parquet")))
    from_hf = {i.id: (i.question, i.answer, i.choices) for i in all_items("navigate")}
    assert from_hf == from_json


def test_hf_source_cannot_pick_subtasks(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XOPD_BIGBENCH_HF", str(make_hf_copy(tmp_path / "hf", "parquet")))
    with pytest.raises(BigBenchError, match=r"(?s)subtasks \[.*no subtask names"):
        load_task("arithmetic")


# --- (d) nothing available ---------------------------------------------------------------------------------


def test_nothing_available_lists_every_place_tried(home, monkeypatch):
    _no_subprocess(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(BigBenchError) as e:
        load_task("navigate")
    assert time.monotonic() - t0 < 10  # fails at once: nothing fetched, nothing retried
    msg = str(e.value)
    for part in (
        "BIG-bench task 'navigate' is not available here. Tried:",
        "XOPD_BIGBENCH_DIR (a BIG-bench git checkout): not set",
        f"cache {home / 'data' / 'bigbench' / 'navigate'}: not extracted yet",
        "XOPD_BIGBENCH_SDIST: not set",
        f"sdist {home / 'downloads' / 'bigbench-1.0.0.tar.gz'}: does not exist",
        "XOPD_BIGBENCH_HF: not set",
        "Hugging Face hub dataset 'hails/bigbench' (config navigate_zero_shot): skipped: XOPD_OFFLINE=1",
        "BIG-bench is an optional source; provide it in one of three ways:",
        "XOPD_BIGBENCH_HF=<local folder>",
        f"XOPD_BIGBENCH_SDIST=<file> or put it in {home / 'downloads'}/",
        "XOPD_BIGBENCH_DIR=<repository root or bigbench/benchmark_tasks>",
    ):
        assert part in msg, (part, msg)


def test_env_vars_naming_nothing_are_listed_without_touching_the_hub(home, tmp_path, monkeypatch):
    monkeypatch.delenv("XOPD_OFFLINE")  # online, yet a local-looking XOPD_BIGBENCH_HF never reaches the hub
    _no_subprocess(monkeypatch)
    import datasets

    def no_hub(*a, **k):
        raise AssertionError("the hub was tried")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    for var, name in [("XOPD_BIGBENCH_DIR", "BIG-bench"), ("XOPD_BIGBENCH_SDIST", "bb.tar.gz"),
                      ("XOPD_BIGBENCH_HF", "hf-copy")]:  # fmt: skip
        monkeypatch.setenv(var, str(tmp_path / "missing" / name))
    with pytest.raises(BigBenchError) as e:
        load_task("sports_understanding")
    msg = str(e.value)
    for var, name in [("XOPD_BIGBENCH_DIR", "BIG-bench"), ("XOPD_BIGBENCH_SDIST", "bb.tar.gz"),
                      ("XOPD_BIGBENCH_HF", "hf-copy")]:  # fmt: skip
        assert f"{var}={tmp_path / 'missing' / name}" in msg and "does not exist" in msg, msg


def test_error_comes_before_any_model(home, monkeypatch):
    """evalsuite's CLI loads tasks before models: a task that cannot load must fail in load_task itself."""
    import sys

    before = {m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "vllm")}
    with pytest.raises(BigBenchError):
        load_task("causal_judgment")
    after = {m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "vllm")}
    assert after == before


# --- (e) a task missing from a source ----------------------------------------------------------------------


@pytest.mark.parametrize("way", ["sdist", "checkout", "hf"])
def test_missing_task_names_close_ones(home, tmp_path, monkeypatch, way):
    if way == "sdist":
        monkeypatch.setenv("XOPD_BIGBENCH_SDIST", str(make_sdist(tmp_path / "bigbench-1.0.0.tar.gz")))
        where = "XOPD_BIGBENCH_SDIST="
    elif way == "checkout":
        monkeypatch.setenv("XOPD_BIGBENCH_DIR", str(make_checkout(tmp_path / "BIG-bench")))
        where = "XOPD_BIGBENCH_DIR="
    else:
        monkeypatch.setenv("XOPD_BIGBENCH_HF", str(make_hf_copy(tmp_path / "hf", "parquet")))
        where = "XOPD_BIGBENCH_HF="
    (tmp_path / "typo.yaml").write_text(
        'source: {bigbench: navigat}\nanswer_type: yesno\nchoices: ["yes", "no"]\n'
        'label_map: {"True": "yes", "False": "no"}\nprompt: "{question}"\n'
    )
    with pytest.raises(BigBenchError) as e:
        build_task(load_spec(tmp_path / "typo.yaml"))
    line = next(ln for ln in str(e.value).splitlines() if where in ln)
    assert "no task 'navigat'" in line and "close names: navigate" in line, str(e.value)
    if way == "sdist":  # the second time the index answers, without reading the tarball again
        sdist = tmp_path / "bigbench-1.0.0.tar.gz"
        sdist.write_bytes(b"x" * sdist.stat().st_size)  # unreadable now: only the index can know the names
        with pytest.raises(BigBenchError, match="close names: navigate"):
            build_task(load_spec(tmp_path / "typo.yaml"))


def test_load_rows_api(home, tmp_path, monkeypatch):
    from evalsuite.tasks.bigbench import load_rows

    monkeypatch.setenv("XOPD_BIGBENCH_DIR", str(make_checkout(tmp_path / "BIG-bench")))
    rows = load_rows(BigBenchSource(task="arithmetic", subtasks=("2_digit_subtraction", "1_digit_addition")))
    assert [r.local_id for r in rows][:2] == ["2_digit_subtraction/0000", "2_digit_subtraction/0001"]
    assert rows[-1].local_id == "1_digit_addition/0005"
    assert rows[-1].meta["source"] == "bigbench:arithmetic/1_digit_addition"


def test_bigbench_task_json_parser():
    rows = parse_task_json(Path(__file__).parent / "data" / "bigbench_task.json", task="xopd_fixture")
    assert [r.local_id for r in rows] == ["0000", "0001", "0002", "0003"]
    assert rows[0].question == "Take 1 step.\nTurn around.\nTake 1 step."  # indentation and blank lines gone
    assert rows[0].choices == ("True", "False") and rows[0].answers == ("True",)
    assert rows[1].answers == ("three", "3") and rows[1].choices == ()
    assert rows[2].answers == ("4",)  # a free-form target wins over target_scores' distractors
    assert rows[3].answers == ("5", "7")  # every best-scored option is gold


def test_builtin_bigbench_task_files_name_the_optional_source():
    from evalsuite.tasks import get_spec

    for n in ("navigate", "object_counting", "formal_fallacies_syllogisms_negation", "causal_judgment",
              "sports_understanding", "arithmetic"):
        assert get_spec(n).source.key == f"bigbench:{n}"
