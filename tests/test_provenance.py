"""Stale outputs are visible: a notebook's stamp names the slm_lab code it ran, and any change to a
module it imports (directly or through the package) makes it stale; unrelated modules do not."""
import nbformat
import pytest

from slm_lab.course import provenance as P


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "slm_lab"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import helper\n\ndef f():\n    from .sub import deep  # a lazy import counts too\n",
        "b.py": "from . import errors\nhelper = 1\n",
        "errors.py": "class E(Exception): pass\n",
        "unrelated.py": "x = 1\n",
        "sub/__init__.py": "",
        "sub/deep.py": "from ..errors import E\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def notebook(code: str):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), nbformat.v4.new_code_cell("%matplotlib inline\n" + code)]
    return nb


def test_dependencies_follow_the_package_imports(package):
    deps = P.dependencies("import os\nfrom slm_lab.a import f\n", package)
    assert deps == ["slm_lab", "slm_lab.a", "slm_lab.b", "slm_lab.errors", "slm_lab.sub", "slm_lab.sub.deep"]
    assert P.dependencies("from slm_lab import unrelated", package) == ["slm_lab", "slm_lab.unrelated"]


def test_a_change_to_an_imported_module_makes_the_notebook_stale(package):
    nb = notebook("from slm_lab.a import f")
    P.stamp(nb, "full", package)
    assert P.staleness(nb, package) is None
    (package / "unrelated.py").write_text("x = 2\n")
    assert P.staleness(nb, package) is None                      # not imported: not stale
    (package / "sub" / "deep.py").write_text("from ..errors import E\nE2 = E\n")
    reason = P.staleness(nb, package)
    assert reason is not None and "slm_lab.sub.deep" in reason


def test_other_profiles_missing_stamps_and_new_imports_are_stale(package):
    nb = notebook("from slm_lab.a import f")
    assert "no provenance stamp" in P.staleness(nb, package)
    P.stamp(nb, "smoke", package)
    assert "'smoke' profile" in P.staleness(nb, package)
    P.stamp(nb, "full", package)
    nb.cells.append(nbformat.v4.new_code_cell("import slm_lab.unrelated"))
    assert "other slm_lab modules" in P.staleness(nb, package)


def test_comments_docstrings_hints_and_import_order_do_not_make_a_notebook_stale(package):
    nb = notebook("from slm_lab.a import f")
    (package / "b.py").write_text("from . import errors\nimport os\nhelper = 1\n")
    P.stamp(nb, "full", package)
    (package / "b.py").write_text('"""Doc."""\nimport os  # why\nfrom . import errors\n\nhelper: int = 1\n')
    assert P.staleness(nb, package) is None
    (package / "b.py").write_text('"""Doc."""\nimport os\nfrom . import errors\n\nhelper: int = 2\n')
    assert "slm_lab.b" in P.staleness(nb, package)               # a changed value is a changed result
