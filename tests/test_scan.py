"""The static scan behind the gradebook's flags column: it points at what an instructor should read, and
stays quiet on honest work (a flag on every solved lab would teach instructors to ignore the column)."""
import pytest

from slm_lab.course import grade, make_labs, notebooks, scan

SOLUTIONS = sorted((notebooks.ROOT / "solutions").glob("*.ipynb"))

FLAGGED = {
    "get_ipython().showtraceback = None": "get_ipython",
    "import sys\nsys.modules['slm_lab.checks.m02'] = None": "sys.modules",
    "import builtins": "imports builtins",
    "import importlib\nimportlib.reload(m02)": "imports importlib",
    "import ctypes": "imports ctypes",
    "import os\nos.kill(1, 9)": "os.kill",
    "import subprocess": "imports subprocess",
    "open('/proc/1/environ').read()": "/proc",
    "m02.fail = print": "assigns m02.fail",
    "import slm_lab.checks.m02 as c\nc.check_rope = print": "assigns c.check_rope",
    "import slm_lab.checks.m02 as c\nsetattr(c, 'check_rope', print)": "setattr on c",
    "import torch\ntorch.allclose = lambda *a, **k: True": "assigns torch.allclose",
    "class m02:\n    pass": "defines m02",
    "from slm_lab.model import apply_rope": "imports slm_lab.model.apply_rope",
    "import slm_lab.model as M\ny = M.apply_rope(x, c, s)": "uses slm_lab.model.apply_rope",
    "y = F.scaled_dot_product_attention(q, k, v, is_causal=True)": "uses torch.nn.functional.scaled_dot_product_attention",
    "from slm_lab.checks import references_allowed": "imports slm_lab.checks.references_allowed",
    "x = m01.reference_merges(300)": "reads m01.reference_merges",
}


@pytest.mark.parametrize("source", FLAGGED, ids=list(FLAGGED.values()))
def test_the_scan_flags_what_reaches_into_the_machinery(source):
    assert FLAGGED[source] in scan.cell_flags(source), scan.cell_flags(source)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_the_scan_is_quiet_on_the_solved_labs(path):
    """What grading scans (the cells a student writes: not the checks, not the cells the lab hands out as
    they are) raises no flag in the solution itself."""
    sol = make_labs.read_notebook(path)
    given = {c.source.strip() for c in make_labs.build_lab(sol, path.name, str(path)).cells if c.cell_type == "code"}
    cells = [(k, c.source) for k, c in enumerate(sol.cells, 1)
             if c.cell_type == "code" and grade.check_id(c) is None and c.source.strip() not in given]
    assert cells, "a solved lab has cells of its own"
    assert scan.flags(cells, (path.stem[:2],)) == []


def test_setattr_on_a_model_is_not_a_flag():
    assert scan.cell_flags("setattr(parent, name, LoRALinear(child, r, alpha))") == set()
    assert scan.cell_flags("print(m00.FIT_MODELS)") == set()
