"""The layering of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml are kept, they
break on a deliberately added back-edge or circle, no contract has an ``ignore_imports`` escape hatch, and
every module directly under xopd/ is placed in one of xopd's two layers (base or training side).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xopd", "evalsuite", "analysis", "app")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the packages under ``root`` (found there first: cwd and PYTHONPATH), no cache."""
    if not LINT_IMPORTS.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_contracts_are_kept() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_no_escape_hatches() -> None:
    cfg = _config()
    assert set(cfg["root_packages"]) == set(PACKAGES)
    assert not cfg.get("exclude_type_checking_imports")  # an `if TYPE_CHECKING:` import counts as an import
    for contract in cfg["contracts"]:
        assert "ignore_imports" not in contract, contract["name"]
    assert {c["type"] for c in cfg["contracts"]} == {"layers", "acyclic_siblings"}
    acyclic = next(c for c in cfg["contracts"] if c["type"] == "acyclic_siblings")
    assert set(acyclic["ancestors"]) == set(PACKAGES) and "skip_descendants" not in acyclic


def test_every_xopd_module_has_a_layer() -> None:
    """A new module directly under xopd/ must be put in the base or in the training side, not left out."""
    (layers,) = [c["layers"] for c in _config()["contracts"] if c["type"] == "layers"]
    placed = [m.strip() for layer in layers for m in layer.replace("|", ":").split(":")]
    xopd = [m for m in placed if m.startswith("xopd.")]
    assert len(xopd) == len(set(xopd))
    children = {f"xopd.{p.stem}" for p in (ROOT / "xopd").glob("*.py") if p.stem != "__init__"}
    children |= {f"xopd.{p.parent.name}" for p in (ROOT / "xopd").glob("*/__init__.py")}
    assert set(xopd) == children
    assert [m for m in placed if not m.startswith("xopd.")] == ["app", "analysis", "evalsuite"]


def test_xopd_eval_divergence_is_registered_by_analysis() -> None:
    """evalsuite's CLI gets ``divergence`` from the entry point analysis registers (it never imports it)."""
    from evalsuite.cli import build_parser, registered_commands

    assert [(ep.name, ep.value) for ep in registered_commands()] == [
        ("divergence", "analysis.divergence:register")
    ], "reinstall xopd (pip install -e .) so that its entry points are current"
    args = build_parser().parse_args(["divergence", "--logdir", "somewhere"])
    from analysis.divergence import run

    assert args.fn is run


def _insert_after_header(path: Path, line: str) -> None:
    """``line`` as the first statement after the module's docstring and ``from __future__`` import."""
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text, path
    path.write_text(text.replace(anchor, anchor + line + "\n", 1))


@pytest.mark.parametrize(
    "module, line, expected",
    [
        # evalsuite (a lower layer) importing the app at the top
        ("evalsuite/types.py", "import app  # a deliberate back-edge", ["evalsuite.types -> app"]),
        # xopd's base importing xopd's training side
        ("xopd/paths.py", "import xopd.trainer  # a deliberate back-edge", ["xopd.paths -> xopd.trainer"]),
        # a circle inside one layer: xopd.engines imports xopd.rollout
        ("xopd/rollout.py", "import xopd.engines  # a deliberate circle", ["No cycles are allowed in xopd",
                                                                           ".rollout -> .engines"]),
    ],
    ids=["evalsuite->app", "xopd-base->xopd.trainer", "rollout<->engines"],
)
def test_a_deliberate_back_edge_breaks_the_contract(tmp_path: Path, module: str, line: str,
                                                    expected: list[str]) -> None:  # fmt: skip
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy as it is keeps the contracts
    _insert_after_header(tmp_path / module, line)
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "BROKEN" in proc.stdout
    for text in expected:
        assert text in proc.stdout, proc.stdout
