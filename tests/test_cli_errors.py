"""Bad input to the command lines: one line ``<prog>: <message>`` on stderr, exit code 2, no traceback.

The real console scripts run as subprocesses, on inputs that fail before any model loads (the one model case
fails while resolving the name, before weights or generation). The expected-error lists of
:mod:`xopd.cli_errors` must name real exception classes, and an unexpected error keeps its traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xopd import cli_errors
from xopd.cli_errors import APP_ERRORS, EVAL_ERRORS, TRAIN_ERRORS, resolve_expected, run_cli

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "recipes" / "tiny.yaml"


def _cli(prog: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = BIN / prog
    assert exe.exists(), f"{exe} missing: pip install -e . puts the [project.scripts] there"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _one_error_line(proc: subprocess.CompletedProcess, prog: str, *words: str) -> str:
    """Exit 2, no traceback, and the error is a single ``prog: ...`` line naming the problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # `gap` without --model first says that it runs the embedded default: a notice, not part of the error
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("no --model:")]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"{prog}: ") or line.startswith(f"{prog} "), line
    for w in words:
        assert w in line, (w, line)
    return line


def test_eval_unknown_task(tmp_path: Path) -> None:
    proc = _cli("xopd-eval", "gap", "--tasks", "nosuch", "--output", str(tmp_path / "out"), cwd=tmp_path)
    _one_error_line(proc, "xopd-eval", "unknown task 'nosuch'", "syllogism")


def test_eval_malformed_task_file(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.yaml").write_text(
        "name: broken\nsource: {jsonl: items.jsonl}\nanswer_type: text\nbogus: 1\n"
    )
    proc = _cli("xopd-eval", "gap", "--tasks", "broken", "--output", str(tmp_path / "out"), cwd=tmp_path,
                env={"XOPD_TASKS_PATH": str(tasks)})
    _one_error_line(proc, "xopd-eval", "broken.yaml", "bogus", "unknown field")


def test_eval_bad_model_path_fails_before_generating(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli("xopd-eval", "gap", "--model", "/nonexistent/path", "--tasks", "syllogism", "--limit", "1",
                "--output", str(out), cwd=tmp_path)
    _one_error_line(proc, "xopd-eval", "/nonexistent/path", "no such directory")
    assert not (out / "cache.jsonl").exists() and not (out / "samples.jsonl").exists()


def test_eval_gate_missing_report(tmp_path: Path) -> None:
    proc = _cli("xopd-eval", "gate", "--report", "/nonexistent.json", "--max-drop", "0.02", cwd=tmp_path)
    _one_error_line(proc, "xopd-eval", "/nonexistent.json", "does not exist")


def test_train_unknown_config_key(tmp_path: Path) -> None:
    proc = _cli("xopd-train", "--config", str(TINY), "nosuch.key=1", cwd=tmp_path)
    _one_error_line(proc, "xopd-train", "unknown config key 'nosuch.key'")
    assert not (tmp_path / "artifacts").exists()


def test_train_missing_recipe(tmp_path: Path) -> None:
    proc = _cli("xopd-train", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    _one_error_line(proc, "xopd-train", "nope.yaml")


def test_app_missing_logdir(tmp_path: Path) -> None:
    proc = _cli("xopd-app", "--logdir", str(tmp_path / "nope"), cwd=tmp_path)
    _one_error_line(proc, "xopd-app", "nope", "does not exist")


# --- the helper ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["EVAL_ERRORS", "TRAIN_ERRORS", "APP_ERRORS"])
def test_every_expected_error_names_an_exception_class(name: str) -> None:
    """A renamed or removed class would silently turn its message back into a traceback."""
    expected = getattr(cli_errors, name)
    classes = resolve_expected(expected, import_missing=True, strict=True)
    optional = {"xopd.offline:OfflineError"}  # xopd/offline.py may not exist yet
    named = [e for e in expected if not isinstance(e, str) or e not in optional]
    assert len(classes) >= len(named)
    assert all(issubclass(c, BaseException) for c in classes)
    with pytest.raises(ValueError, match="no exception class 'Nope'"):
        resolve_expected(["xopd.config:Nope"], import_missing=True)


def test_the_lists_hold_what_the_brief_names() -> None:
    assert {"evalsuite.tasks:UnknownTaskError", "evalsuite.tasks.spec:TaskSpecError",
            "evalsuite.tasks.task:TaskDataError", "evalsuite.tasks.bigbench:BigBenchError",
            "xopd.loading:ModelLoadError", "xopd.offline:OfflineError", "evalsuite.speech:AudioError",
            "evalsuite.tts:TTSError", FileNotFoundError} <= set(EVAL_ERRORS)
    assert {"xopd.config:ConfigError", "xopd.trainer:ResumeError", "xopd.loading:ModelLoadError",
            "xopd.offline:OfflineError", FileNotFoundError} <= set(TRAIN_ERRORS)
    assert FileNotFoundError in APP_ERRORS


def test_run_cli_expected_is_one_line_unexpected_keeps_its_traceback(capsys: pytest.CaptureFixture) -> None:
    from xopd.config import ConfigError

    def fail(exc: BaseException) -> int:
        raise exc

    assert run_cli("prog", fail, ConfigError("bad key 'x'"), expected=["xopd.config:ConfigError"]) == 2
    assert capsys.readouterr().err == "prog: bad key 'x'\n"
    assert run_cli("prog", fail, FileNotFoundError(2, "No such file or directory", "/x.json"),
                   expected=[FileNotFoundError]) == 2
    assert capsys.readouterr().err == "prog: /x.json: No such file or directory\n"
    # a module never imported cannot have raised; a stale name does not hide the user's error
    assert run_cli("prog", fail, ConfigError("y"), expected=["no_such_module:E", "xopd.config:Gone",
                                                              "xopd.config:ConfigError"]) == 2
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli("prog", fail, RuntimeError("a bug"), expected=EVAL_ERRORS)
    with pytest.raises(KeyError):  # UnknownTaskError is a KeyError; a plain KeyError is not expected
        run_cli("prog", fail, KeyError("k"), expected=EVAL_ERRORS)
    assert run_cli("prog", lambda: 0, expected=()) == 0


def test_eval_gap_refuses_a_text_llm_before_generating(tmp_path: Path) -> None:
    """A text LLM cannot hear the spoken items: every one would error and the "gap" would be its text accuracy
    (seen: speech 0.0, gap +51.0, McNemar p 8.9e-16). `gap` says so from the model's config, before loading
    weights or generating anything."""
    out = tmp_path / "out"
    proc = _cli("xopd-eval", "gap", "--model", "smollm2-135m-instruct", "--tasks", "syllogism", "--limit", "2",
                "--backend", "hf", "--output", str(out), cwd=tmp_path)
    _one_error_line(proc, "xopd-eval", "'smollm2-135m-instruct' is a text LLM", "speech LLM", "cascade:")
    assert not (out / "samples.jsonl").exists() and not (out / "cache.jsonl").exists()
    assert not (out / "report.json").exists()
