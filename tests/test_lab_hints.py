"""Labs teach: their text never gives away a solution line, and an unsolved lab's checks say "not done yet"."""
from __future__ import annotations

from difflib import SequenceMatcher

import nbformat
import pytest

from slm_lab.checks import CheckFailed
from slm_lab.course import make_labs, notebooks

SOLUTIONS = sorted((notebooks.ROOT / "solutions").glob("*.ipynb"))
MIN_LINE = 20          # a shorter line (`return out`, `i += 1`) is not a give-away
MIN_FRAGMENT = 20      # a hint sharing this many characters with the code it replaces spells the code out


def _code(line: str) -> str:
    """`line` without its comment (a `#` outside string quotes), whitespace collapsed."""
    quote, i = None, 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            line = line[:i]
            break
        i += 1
    return " ".join(line.split())


def _regions(nb) -> list[tuple[str, list[str]]]:
    """(hint, normalised code lines) of every solution region, hint "" when it has none."""
    regions = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines, first = None, False
        for line in cell.source.split("\n"):
            if line.strip() == make_labs.BEGIN:
                lines, hint, first = [], "", True
            elif line.strip() == make_labs.END:
                regions.append((hint, [code for code in lines if code]))
                lines = None
            elif lines is not None:
                if first and line.strip().startswith(make_labs.HINT):       # make-labs's rule: right after BEGIN
                    hint = line.strip()[len(make_labs.HINT):].strip()
                else:
                    lines.append(_code(line))
                first = False
    return regions


def _given_code(nb) -> set[str]:
    """Normalised lines of the solution's code outside its regions: code the lab shows the student anyway."""
    given = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            given |= {_code(line) for line in make_labs.strip_solution(cell.source, "solution").split("\n")}
    return given


def test_regions_are_read_as_the_lab_maker_reads_them():
    """The helpers above must see what make-labs sees, or the tests below check nothing."""
    src = ("def f(x):\n    ### BEGIN SOLUTION\n    # HINT: add one\n    y = x + 1  # the answer\n"
           "    return str(y) + '#'\n    ### END SOLUTION")
    assert _regions(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])) == [
        ("add one", ["y = x + 1", "return str(y) + '#'"])]
    assert make_labs.strip_solution(src, "c").endswith("# TODO: add one\n    raise NotImplementedError")


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_no_solution_line_appears_in_the_lab(path):
    """No line of an answer (longer than MIN_LINE) is in the lab's text: markdown, code or TODO hints."""
    sol = make_labs.read_notebook(path)
    lab = make_labs.build_lab(sol, path.name, str(path))
    text = "\n".join(" ".join(cell.source.split()) for cell in lab.cells)
    given = _given_code(sol)
    leaks = sorted({line for _, lines in _regions(sol) for line in lines
                    if len(line) > MIN_LINE and line not in given and line in text})
    assert not leaks, f"{path.name}: the lab spells out solution lines (say the idea in words instead): {leaks}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_hints_describe_the_idea_not_the_code(path):
    """A hint that paraphrases its answer in code (`min(k, V)` for `min(k, logits.shape[-1])`) leaks it too."""
    sol = make_labs.read_notebook(path)
    leaks = []
    for hint, lines in _regions(sol):
        for line in lines:
            m = SequenceMatcher(None, hint, line, autojunk=False).find_longest_match(0, len(hint), 0, len(line))
            if m.size >= MIN_FRAGMENT:
                leaks.append(f"{hint[m.a:m.a + m.size]!r} (from {line!r})")
    assert not leaks, f"{path.name}: hints quote their answers' code: {leaks}"


# --- an unsolved lab's check cells say "not done yet" --------------------------------------------------------

LAB00 = notebooks.ROOT / "labs" / "00_why_slms_lab.ipynb"


@pytest.fixture(scope="module")
def lab00_check_results() -> dict[str, BaseException | None]:
    """Run the generated lab 00 top to bottom in one namespace, as a student who has solved nothing would."""
    if not LAB00.is_file():
        pytest.skip("no labs/ in this checkout")
    lab = nbformat.read(LAB00, as_version=4)
    namespace: dict = {"__name__": "__main__"}
    results: dict[str, BaseException | None] = {}
    for i, cell in enumerate(lab.cells):
        if cell.cell_type != "code":
            continue
        check = cell.metadata.get("slm_lab", {}).get("check")
        try:
            exec(compile(cell.source, f"{LAB00.name}, cell {i}", "exec"), namespace)
        except NotImplementedError:
            assert check is None, f"check cell {check} raised NotImplementedError itself"
            assert "raise NotImplementedError" in cell.source, f"cell {i} raised without a TODO stub"
        except Exception as exc:       # noqa: BLE001 — a check cell's failure is the result under test
            assert check is not None, f"cell {i} (not a check cell) raised {type(exc).__name__}: {exc}"
            results[check] = exc
        else:
            if check is not None:
                results[check] = None
    return results


LAB00_CHECKS = ["00.fp16_memory", "00.size_ratio", "00.opt_hardware", "00.phone_int4", "00.fits", "00.fits_in"]


def test_lab00_runs_every_check_cell(lab00_check_results):
    assert list(lab00_check_results) == LAB00_CHECKS


@pytest.mark.parametrize("check", LAB00_CHECKS)
def test_unsolved_lab00_check_fails_as_a_check_not_a_name_error(lab00_check_results, check):
    exc = lab00_check_results[check]
    assert isinstance(exc, CheckFailed), f"{check}: the unsolved lab's check cell gave {exc!r}, not a CheckFailed"


@pytest.mark.parametrize("check", LAB00_CHECKS)
def test_unsolved_lab00_check_says_not_done_yet(lab00_check_results, check):
    exc = lab00_check_results[check]
    assert isinstance(exc, CheckFailed) and "not done yet" in str(exc), f"{check}: {exc!r}"
