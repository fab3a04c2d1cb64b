"""How the command lines (``xopd-train``, ``xopd-eval``, ``xopd-app``) fail on bad input: one message, no
traceback.

An *expected* error -- an unknown task, a malformed task file, a model name that names nothing, a bad config
key, a missing file -- is the user's to fix, and its message already says how. :func:`run_cli` prints it as
``<prog>: <message>`` on stderr and returns exit code 2. Anything else is a bug and keeps its traceback.

Each CLI's expected classes are listed below, explicitly. Classes are named ``"module:Class"`` and looked up
only when an exception arrives, and only in modules already imported: an exception cannot be an instance of
a class whose module never loaded, so checking costs no import (``xopd-eval tasks`` does not pay for torch),
and a module that does not exist (yet) or is being rewritten cannot break the CLI.
``tests/test_cli_errors.py`` checks that every name resolves to an exception class.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

EXIT_USAGE = 2  # argparse's exit code for a bad command line; ours for bad input of any other kind

ExpectedError = type[BaseException] | str  # a class, or "module:Class" resolved lazily

# the model zoo, model names and paths, running without a hub
MODEL_ERRORS: tuple[ExpectedError, ...] = (
    "xopd.loading:ModelLoadError",  # also what evalsuite/backends/resolve.py raises
    "xopd.zoo.packaged:MissingPackageError",  # a zoo model whose weights package is not installed
    "xopd.offline:OfflineError",  # needs the Hugging Face hub, which is switched off or unreachable
)
# task names and task files, and the data behind them
TASK_ERRORS: tuple[ExpectedError, ...] = (
    "evalsuite.tasks:UnknownTaskError",
    "evalsuite.tasks.spec:TaskSpecError",
    "evalsuite.tasks.task:TaskDataError",
    "evalsuite.tasks.bigbench:BigBenchError",
)
# audio in and out
AUDIO_ERRORS: tuple[ExpectedError, ...] = (
    "evalsuite.speech:AudioError",
    "evalsuite.tts:TTSError",
)

EVAL_ERRORS: tuple[ExpectedError, ...] = (
    *TASK_ERRORS,
    *MODEL_ERRORS,
    *AUDIO_ERRORS,
    "evalsuite.cache:CacheError",  # a --cache file damaged beyond a torn last line
    "analysis.logs:LogError",  # divergence --logdir: an unreadable run
    "xopd.data:DataError",  # divergence: prompts from tasks
    "xopd.models:VocabularyMismatchError",  # divergence: student and teacher do not share a vocabulary
    FileNotFoundError,  # e.g. gate --report / --baseline
)

TRAIN_ERRORS: tuple[ExpectedError, ...] = (
    "xopd.config:ConfigError",
    "xopd.data:DataError",
    "xopd.trainer:ResumeError",
    "xopd.models:VocabularyMismatchError",
    *MODEL_ERRORS,
    *TASK_ERRORS,  # prompts and the eval hook come from evalsuite tasks
    *AUDIO_ERRORS,
    FileNotFoundError,
)

APP_ERRORS: tuple[ExpectedError, ...] = (
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    "analysis.logs:LogError",
)


def resolve_expected(
    expected: Iterable[ExpectedError], *, import_missing: bool = False, strict: bool = True
) -> tuple[type[BaseException], ...]:
    """The classes ``expected`` names whose modules are loaded (with ``import_missing``: importing them first,
    skipping modules that do not exist). A name that does not resolve to an exception class is a ValueError
    (``strict``) or skipped."""
    classes: list[type[BaseException]] = []
    for entry in expected:
        if isinstance(entry, type):
            classes.append(entry)
            continue
        module_name, _, cls_name = entry.partition(":")
        module = sys.modules.get(module_name)
        if module is None and import_missing:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
        if module is None:
            continue
        cls = getattr(module, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            if not strict:
                continue
            raise ValueError(f"expected error {entry!r}: {module_name} has no exception class {cls_name!r}")
        classes.append(cls)
    return tuple(classes)


def error_message(exc: BaseException) -> str:
    """The exception's own message; for an OSError ``path: reason`` rather than ``[Errno 2] ...``."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def run_cli(prog: str, fn: Callable[..., int], *args: Any, expected: Iterable[ExpectedError]) -> int:
    """``fn(*args)``; an expected error becomes ``prog: message`` on stderr and exit code 2."""
    try:
        return fn(*args)
    except Exception as exc:
        # not strict: a stale name in a list must not hide the user's error behind one of ours
        if not isinstance(exc, resolve_expected(expected, strict=False)):
            raise
        print(f"{prog}: {error_message(exc)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
