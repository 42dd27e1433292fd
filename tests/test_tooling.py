"""The linters the project is held to (configured in pyproject.toml) find nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import fresh_python

ROOT = Path(__file__).resolve().parents[1]


def _check(*command: str) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing():
    _check("ruff", "check", "--no-cache", ".")


def test_mypy_finds_nothing_in_the_library_and_the_flows():
    _check("mypy", "--no-incremental")


def test_the_library_never_imports_prefect():
    import pkgutil

    import spectroflow

    library = sorted(f"spectroflow.{m.name}" for m in pkgutil.iter_modules(spectroflow.__path__)
                     if m.name not in ("cli", "orchestration", "flows"))
    assert "spectroflow.pipeline" in library and "spectroflow.storage" in library
    code = (f"import sys, importlib\nfor name in {library!r}:\n    importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'prefect_dask'}))")
    assert fresh_python(code) == "[]"
