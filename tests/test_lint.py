"""The package passes its linter (ruff) and type checker (mypy), configured in pyproject.toml — run by `make test`
(and alone by `make lint`). Both come with the dev extra; a test is skipped, saying so, only where one is missing."""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import slm_lab.model
from slm_lab.model import SLMConfig

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str) -> None:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed in this environment; `pip install -e '.[dev]'` (or `make setup`) adds it.")
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"`{' '.join((tool, *args))}` exited with {proc.returncode}:\n"
                                  f"{proc.stdout}{proc.stderr}")


def test_ruff_is_clean():
    _run("ruff", "check", "slm_lab")


def test_mypy_is_clean():
    _run("mypy")     # files, python_version and options: [tool.mypy] in pyproject.toml


def test_slmconfig_constructor_for_type_checkers_matches_its_fields():
    """SLMConfig spells out its __init__ for type checkers (None asks for a default __post_init__ derives), since
    its fields are typed as what a built config holds. That signature must list the dataclass fields in order,
    each with its field's type — or that type | None where the field's default is None."""
    tree = ast.parse(Path(slm_lab.model.__file__).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SLMConfig")
    stubs = [f for n in cls.body if isinstance(n, ast.If) for f in n.body
             if isinstance(f, ast.FunctionDef) and f.name == "__init__"]
    assert len(stubs) == 1, "SLMConfig should declare its __init__ once, under `if TYPE_CHECKING:`"
    declared = [(a.arg, ast.unparse(a.annotation) if a.annotation else None) for a in stubs[0].args.args[1:]]
    expected = [(f.name, f"{f.type} | None" if f.default is None else f.type) for f in fields(SLMConfig)]
    assert declared == expected
