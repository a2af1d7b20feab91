"""`slm-lab make-labs [--check]`: write labs/ from solutions/, the single source of truth.

For every solutions/NAME.ipynb, labs/NAME.ipynb is the same notebook with
  - each region from a line `### BEGIN SOLUTION` to `### END SOLUTION` in a code cell replaced, at the
    BEGIN line's indentation, by `# TODO: <hint>` and `raise NotImplementedError` (the hint is the text of
    a `# HINT: ...` line right after BEGIN, else "your code here");
  - each hidden check cell left out: a check cell whose first line is `### BEGIN HIDDEN CHECKS` and whose
    last line is `### END HIDDEN CHECKS` (whole cells, not regions: each hidden check has its own id and
    points, and `slm-lab grade` puts the cell back from the solution, see `slm_lab.course.grade`);
  - every output, execution count and execution timing cleared, and the rest of what the solution's run
    left in the notebook metadata dropped: its provenance stamp (`slm_lab`, see `provenance`: a lab has no
    outputs to vouch for) and its widget state (`widgets`: the progress bars of outputs that are gone). So
    re-executing a solution does not make its lab stale;
  - the Colab badge in the first cell pointing at labs/NAME.ipynb.
Everything else is kept as it is (cell ids too: grading puts a hidden check back after the cell it follows).
The output is deterministic text, so `--check` compares it with labs/ and names each stale, missing or extra
lab without writing anything.
"""
from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path

import nbformat

from ..atomic import write_text
from ..errors import SLMLabError
from . import notebooks
from .provenance import STAMP_KEY

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = "# HINT:"
DEFAULT_HINT = "your code here"
# A line that mentions a marker but is not exactly one (`## BEGIN SOLUTION`, `### End Solution`) would leak
# the answer into the lab, so it is an error rather than ordinary code.
_NEAR_MARKER = re.compile(r"(BEGIN|END)[ _]SOLUTION", re.I)
HIDDEN_BEGIN = "### BEGIN HIDDEN CHECKS"
HIDDEN_END = "### END HIDDEN CHECKS"
_NEAR_HIDDEN = re.compile(r"(BEGIN|END)[ _]HIDDEN", re.I)     # a misspelt one would leak the check into the lab


def strip_solution(source: str, where: str) -> str:
    """Replace every BEGIN/END SOLUTION region of one code cell's source by a TODO and a raise.

    `where` names the cell in error messages ("solutions/x.ipynb, cell 5").
    """
    out: list[str] = []
    begin_line = 0                       # line number of the open BEGIN marker, 0 when outside a region
    indent, hint, first = "", "", False
    for lineno, line in enumerate(source.split("\n"), 1):
        marker = line.strip()
        if marker == BEGIN:
            if begin_line:
                raise SLMLabError(f"{where}: `{BEGIN}` on line {lineno} opens a region inside the one opened on "
                                  f"line {begin_line}; close that one with `{END}` first.")
            begin_line, indent, hint, first = lineno, line[:len(line) - len(line.lstrip())], "", True
        elif marker == END:
            if not begin_line:
                raise SLMLabError(f"{where}: `{END}` on line {lineno} has no `{BEGIN}` before it; "
                                  f"add the BEGIN line or remove this one.")
            out += [f"{indent}# TODO: {hint or DEFAULT_HINT}", f"{indent}raise NotImplementedError"]
            begin_line = 0
        elif begin_line:
            if first and marker.startswith(HINT):
                hint = marker[len(HINT):].strip()
            first = False
        elif _NEAR_MARKER.search(line):
            raise SLMLabError(f"{where}: line {lineno} ({marker!r}) looks like a solution marker but is not exactly "
                              f"`{BEGIN}` or `{END}`; fix it so the answer does not leak into the lab.")
        else:
            out.append(line)
    if begin_line:
        raise SLMLabError(f"{where}: `{BEGIN}` on line {begin_line} has no matching `{END}`; close the region.")
    return "\n".join(out)


def is_hidden(cell, where: str) -> bool:
    """Whether a solution cell is a hidden check cell (see the module docstring); a hidden-check marker
    anywhere else, or misspelt, is an error. `where` names the cell in error messages."""
    if cell.cell_type != "code":
        return False
    lines = cell.source.split("\n")
    marks = [(n, line.strip()) for n, line in enumerate(lines, 1) if _NEAR_HIDDEN.search(line)]
    if not marks:
        return False
    for n, mark in marks:
        if mark not in (HIDDEN_BEGIN, HIDDEN_END):
            raise SLMLabError(f"{where}: line {n} ({mark!r}) looks like a hidden-check marker but is not exactly "
                              f"`{HIDDEN_BEGIN}` or `{HIDDEN_END}`; fix it so the check does not leak into the lab.")
    begins = [n for n, mark in marks if mark == HIDDEN_BEGIN]
    ends = [n for n, mark in marks if mark == HIDDEN_END]
    if not ends:
        raise SLMLabError(f"{where}: `{HIDDEN_BEGIN}` on line {begins[0]} has no matching `{HIDDEN_END}`; "
                          f"end the cell with it.")
    if not begins:
        raise SLMLabError(f"{where}: `{HIDDEN_END}` on line {ends[0]} has no `{HIDDEN_BEGIN}` before it; "
                          f"start the cell with it.")
    filled = [n for n, line in enumerate(lines, 1) if line.strip()]
    if begins != [filled[0]] or ends != [filled[-1]]:
        raise SLMLabError(f"{where}: a hidden check is a whole cell, its first line `{HIDDEN_BEGIN}` and its last "
                          f"`{HIDDEN_END}`; move the hidden check into a check cell of its own.")
    meta = cell.metadata.get("slm_lab")
    if not (isinstance(meta, dict) and "check" in meta):
        raise SLMLabError(f"{where}: this hidden cell is not a check cell, so grading could not count it; give it "
                          f"check metadata (percent scripts: `# %% check id=... points=...`).")
    return True


def hidden_ids(nb, where: str) -> list[str]:
    """The ids of the solution's hidden check cells, in order (every code cell's markers are validated)."""
    return [cell.metadata["slm_lab"]["check"] for i, cell in enumerate(nb.cells, 1)
            if is_hidden(cell, f"{where}, cell {i}")]


def check_ids(nb, where: str) -> dict:
    """The solution's check cells by id, in order; duplicate ids or bad points are an error."""
    checks: dict = {}
    for cell in notebooks.check_cells(nb):
        meta = cell.metadata["slm_lab"]
        cid, points = meta.get("check"), meta.get("points", 1)
        if not isinstance(cid, str) or not cid:
            raise SLMLabError(f"{where}: a check cell has id {cid!r}; give each check cell a non-empty string id.")
        if cid in checks:
            raise SLMLabError(f"{where}: two check cells have id {cid!r}; give each check a unique id.")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
            raise SLMLabError(f"{where}: check {cid!r} has points {points!r}; use a non-negative number.")
        checks[cid] = cell
    return checks


def read_notebook(path: Path):
    """Read a course notebook (solution) or raise one clear error."""
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise SLMLabError(f"{path} is not a readable notebook ({first}); fix it or re-save it from Jupyter.") from None


def build_lab(solution, name: str, where: str):
    """The lab notebook for one solution notebook (a new object; the solution is not changed)."""
    check_ids(solution, where)
    lab = copy.deepcopy(solution)
    kept = []
    for i, cell in enumerate(lab.cells, 1):
        if is_hidden(cell, f"{where}, cell {i}"):
            continue
        kept.append(cell)
        if cell.cell_type == "code":
            cell.source = strip_solution(cell.source, f"{where}, cell {i}")
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)    # nbclient's timing stamps belong to the solution run
    lab.cells = kept
    for key in (STAMP_KEY, "widgets"):
        lab.metadata.pop(key, None)
    try:
        notebooks.stamp(lab, f"labs/{name}")
    except ValueError:
        raise SLMLabError(f"{where}: the first cell must be the markdown cell with the Colab badge and the title; "
                          f"add one (notebooks.from_percent makes it).") from None
    return lab


def render(nb) -> str:
    """The exact text notebooks.write() stores for nb."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.ipynb"
        notebooks.write(nb, path)
        return path.read_text(encoding="utf-8")


def expected_labs(solutions: Path) -> dict[str, str]:
    """{lab file name: the text make-labs writes for it}, for every solutions/*.ipynb."""
    if not solutions.is_dir():
        raise SLMLabError(f"no solutions directory at {solutions}; pass --solutions DIR.")
    return {path.name: render(build_lab(read_notebook(path), path.name, str(path)))
            for path in sorted(solutions.glob("*.ipynb"))}


def differences(expected: dict[str, str], labs: Path) -> list[str]:
    """One line per lab file that differs from what make-labs would write: stale, missing or extra."""
    problems = []
    for name, text in expected.items():
        path = labs / name
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"stale: {path}")
    present = {p.name for p in labs.glob("*.ipynb")} if labs.is_dir() else set()
    problems += [f"extra: {labs / name} (no solution notebook of that name)"
                 for name in sorted(present - set(expected))]
    return problems


def run(args) -> int:
    solutions, labs = Path(args.solutions), Path(args.labs)
    expected = expected_labs(solutions)
    if args.check:
        problems = differences(expected, labs)
        for line in problems:
            print(line)
        if problems:
            print(f"{labs} is out of sync with {solutions}: run `slm-lab make-labs` (extra labs: delete them).")
            return 1
        print(f"{labs} is in sync with {solutions} ({len(expected)} labs).")
        return 0
    if not expected:
        print(f"no solution notebooks in {solutions}; nothing to write.")
    labs.mkdir(parents=True, exist_ok=True)
    for name, text in expected.items():
        path = labs / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            print(f"up to date: {path}")
            continue
        write_text(path, text)
        print(f"wrote {path}")
    for line in differences(expected, labs):       # only extras can remain
        print(f"{line}: delete it, or add its solution")
    return 0


def register(sub) -> None:
    p = sub.add_parser("make-labs", help="write labs/ from solutions/ (TODOs for solution regions, outputs cleared)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each stale, missing or extra lab")
    p.add_argument("--solutions", default=str(notebooks.ROOT / "solutions"),
                   help="solved lab notebooks (default: repo's solutions/)")
    p.add_argument("--labs", default=str(notebooks.ROOT / "labs"), help="where labs go (default: repo's labs/)")
    p.set_defaults(func=run)
