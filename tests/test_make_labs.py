"""`slm-lab make-labs`: solution regions become TODOs, everything else is kept, --check catches drift."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from slm_lab.course import make_labs, notebooks
from slm_lab.errors import SLMLabError

FIXTURE = Path(__file__).parent / "fixtures" / "lab_solution.py"
NAME = "00_fixture_lab.ipynb"


def solution_nb():
    return notebooks.from_percent(FIXTURE.read_text(encoding="utf-8"), f"solutions/{NAME}")


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    make_labs.register(parser.add_subparsers())
    args = parser.parse_args(["make-labs", *argv])
    return args.func(args)


@pytest.fixture
def course(tmp_path):
    """A course folder with one solution (executed-looking: outputs, counts, timing metadata)."""
    nb = solution_nb()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.execution_count = i
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output of cell {i}\n")]
            cell.metadata["execution"] = {"iopub.status.busy": "2025-01-01T00:00:00Z"}
    (tmp_path / "solutions").mkdir()
    notebooks.write(nb, tmp_path / "solutions" / NAME)
    return tmp_path


def test_regions_become_todo_and_raise_at_their_indentation():
    src = ("def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    # HINT: add one\n    return x + y\n    ### END SOLUTION\n"
           "\n### BEGIN SOLUTION\nz = f(2)\n### END SOLUTION\nprint(z)")
    assert make_labs.strip_solution(src, "cell") == (
        "def f(x):\n    y = 1\n    # TODO: add one\n    raise NotImplementedError\n"
        "\n# TODO: your code here\nraise NotImplementedError\nprint(z)")


def test_hint_only_counts_right_after_begin():
    src = "if True:\n  ### BEGIN SOLUTION\n  a = 1\n  # HINT: too late\n  ### END SOLUTION"
    assert make_labs.strip_solution(src, "c") == "if True:\n  # TODO: your code here\n  raise NotImplementedError"


def test_lab_from_solution(course):
    sol = nbformat.read(course / "solutions" / NAME, as_version=4)
    assert run_cli("--solutions", str(course / "solutions"), "--labs", str(course / "labs")) == 0
    lab = nbformat.read(course / "labs" / NAME, as_version=4)
    assert len(lab.cells) == len(sol.cells)
    text = (course / "labs" / NAME).read_text()
    assert "params * 2 / 1e9" not in text and "175 / 3.8" not in text and "SOLUTION" not in text
    assert "output of cell" not in text and "iopub.status" not in text
    changed = []
    for i, (s, c) in enumerate(zip(sol.cells, lab.cells, strict=True)):
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None
        assert c.cell_type == s.cell_type and c.get("id") == s.get("id")
        if c.source != s.source:
            changed.append(i)
            continue
        s.metadata.pop("execution", None)              # all that may differ in a kept cell: run results
        if s.cell_type == "code":
            s.outputs, s.execution_count = [], None
        assert c == s, f"cell {i} changed"
    # the badge, fp16_gb's body (in a def), the top-level `fits` and the `ratio` nested in an `if`
    assert changed == [0, 4, 7, 9]
    assert lab.cells[4].source.startswith(
        "def fp16_gb(params):\n    # TODO: 2 bytes per parameter, 10^9 bytes per GB\n    raise NotImplementedError\n")
    assert lab.cells[7].source == "# TODO: your code here\nraise NotImplementedError\nprint(fits)"
    assert lab.cells[9].source == "if True:\n    # TODO: your code here\n    raise NotImplementedError"
    assert notebooks.colab_url(f"labs/{NAME}") in lab.cells[0].source
    assert notebooks.colab_url(f"solutions/{NAME}") not in lab.cells[0].source
    assert lab.cells[0].source.endswith("# Fixture lab: numbers from the SLM landscape")
    assert [c.metadata["slm_lab"]["check"] for c in notebooks.check_cells(lab)] == [
        "00.fp16_memory", "00.fits", "00.size_ratio"]


def test_check_in_sync_stale_missing_extra(course, capsys):
    sols, labs = course / "solutions", course / "labs"
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 1     # nothing generated yet
    assert f"missing: {labs / NAME}" in capsys.readouterr().out
    assert not labs.exists()                                                         # --check writes nothing
    run_cli("--solutions", str(sols), "--labs", str(labs))
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 0
    assert "in sync" in capsys.readouterr().out

    lab = labs / NAME
    good = lab.read_text()
    lab.write_text(good.replace("your code here", "my code here"))                   # edited by hand
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 1
    out = capsys.readouterr().out
    assert f"stale: {lab}" in out and lab.read_text() != good                         # reported, not fixed

    lab.write_text(good)
    sol = nbformat.read(sols / NAME, as_version=4)                                   # the solution changes
    sol.cells[3].source += " More words."
    notebooks.write(sol, sols / NAME)
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 1
    assert f"stale: {lab}" in capsys.readouterr().out

    run_cli("--solutions", str(sols), "--labs", str(labs))
    (labs / "99_old_lab.ipynb").write_text(good)
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 1
    assert f"extra: {labs / '99_old_lab.ipynb'}" in capsys.readouterr().out


def test_what_the_solutions_run_left_in_its_metadata_stays_out_of_the_lab(course):
    """The provenance stamp and widget state of a solution's run: re-executing it does not make its lab stale."""
    sols, labs = course / "solutions", course / "labs"
    run_cli("--solutions", str(sols), "--labs", str(labs))
    before = (labs / NAME).read_bytes()
    sol = nbformat.read(sols / NAME, as_version=4)
    sol.metadata["slm_lab"] = {"profile": "full", "seconds": 12.5, "sha256": "0" * 64}
    sol.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"a1b2": {}}, "version_major": 2}}
    notebooks.write(sol, sols / NAME)
    assert run_cli("--check", "--solutions", str(sols), "--labs", str(labs)) == 0
    text = before.decode()
    assert '"sha256"' not in text and "widget-state" not in text and '"kernelspec"' in text


def test_output_is_deterministic(course, tmp_path):
    sols = course / "solutions"
    run_cli("--solutions", str(sols), "--labs", str(tmp_path / "a"))
    run_cli("--solutions", str(sols), "--labs", str(tmp_path / "b"))
    assert (tmp_path / "a" / NAME).read_bytes() == (tmp_path / "b" / NAME).read_bytes()


@pytest.mark.parametrize("source, words", [
    ("x = 1\n### BEGIN SOLUTION\ny = 2", "`### BEGIN SOLUTION` on line 2 has no matching `### END SOLUTION`"),
    ("y = 2\n### END SOLUTION", "`### END SOLUTION` on line 2 has no `### BEGIN SOLUTION` before it"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "opens a region inside the one opened on line 1"),
    ("## BEGIN SOLUTION\nanswer = 42\n## END SOLUTION", "looks like a solution marker"),
])
def test_bad_markers_name_the_file_and_cell(course, source, words):
    sol = nbformat.read(course / "solutions" / NAME, as_version=4)
    sol.cells[4].source = source
    notebooks.write(sol, course / "solutions" / NAME)
    with pytest.raises(SLMLabError) as err:
        run_cli("--solutions", str(course / "solutions"), "--labs", str(course / "labs"))
    msg = str(err.value)
    assert f"{course / 'solutions' / NAME}, cell 5:" in msg and words in msg and "\n" not in msg
    assert not (course / "labs" / NAME).exists()


def test_duplicate_check_ids_and_missing_badge_cell_are_errors(course):
    path = course / "solutions" / NAME
    sol = nbformat.read(path, as_version=4)
    sol.cells[10].metadata["slm_lab"]["check"] = "00.fits"
    notebooks.write(sol, path)
    with pytest.raises(SLMLabError, match="two check cells have id '00.fits'"):
        run_cli("--solutions", str(course / "solutions"), "--labs", str(course / "labs"))
    sol = solution_nb()
    sol.cells.pop(0)
    notebooks.write(sol, path)
    with pytest.raises(SLMLabError, match="the first cell must be the markdown cell"):
        run_cli("--solutions", str(course / "solutions"), "--labs", str(course / "labs"))


def test_cli_check_exit_status_names_the_file(course):
    res = subprocess.run([sys.executable, "-m", "slm_lab.cli", "make-labs", "--check", "--solutions",
                          str(course / "solutions"), "--labs", str(course / "labs")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and f"missing: {course / 'labs' / NAME}" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "slm_lab.cli", "make-labs", "--solutions", str(course / "nope")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "no solutions directory" in res.stderr


def test_repository_labs_are_in_sync_with_solutions():
    """The course's own labs/ is what make-labs writes from its solutions/ (CI fails when someone forgets)."""
    solutions, labs = notebooks.ROOT / "solutions", notebooks.ROOT / "labs"
    if not solutions.is_dir():
        pytest.skip("no solutions/ in this checkout")
    problems = make_labs.differences(make_labs.expected_labs(solutions), labs)
    assert not problems, "run `slm-lab make-labs`: " + "; ".join(problems)


# --- hidden checks -------------------------------------------------------------------------------------------

HIDDEN_FIXTURE = Path(__file__).parent / "fixtures" / "lab_solution_hidden.py"
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN CHECKS", "### END HIDDEN CHECKS"


def test_hidden_check_cells_are_left_out_of_the_lab():
    sol = notebooks.from_percent(HIDDEN_FIXTURE.read_text(encoding="utf-8"), f"solutions/{NAME}")
    lab = make_labs.build_lab(sol, NAME, "fixture")
    text = make_labs.render(lab)
    for secret in ("HIDDEN", "00.fp16_hidden", "00.ratio_hidden", "3.8e9", "parameter counts"):
        assert secret not in text, secret
    hidden = [c.get("id") for c in sol.cells if HIDDEN_BEGIN in c.source]
    assert len(hidden) == 2
    assert [c.get("id") for c in lab.cells] == [c.get("id") for c in sol.cells if c.get("id") not in hidden]
    assert [c.metadata["slm_lab"]["check"] for c in notebooks.check_cells(lab)] == ["00.fp16_memory", "00.size_ratio"]
    assert make_labs.hidden_ids(sol, "fixture") == ["00.fp16_hidden", "00.ratio_hidden"]


@pytest.mark.parametrize("cell, source, words", [
    (5, f"{HIDDEN_BEGIN}\nm00.check_answer('00.fp16_memory', memory)",
     f"`{HIDDEN_BEGIN}` on line 1 has no matching `{HIDDEN_END}`"),
    (5, f"m00.check_answer('00.fp16_memory', memory)\n{HIDDEN_END}",
     f"`{HIDDEN_END}` on line 2 has no `{HIDDEN_BEGIN}` before it"),
    (5, f"m00.check_answer('00.fp16_memory', memory)\n{HIDDEN_BEGIN}\nassert memory\n{HIDDEN_END}",
     "a hidden check is a whole cell"),
    (5, f"{HIDDEN_BEGIN}\nassert memory\n{HIDDEN_END}\n{HIDDEN_BEGIN}\nassert memory\n{HIDDEN_END}",
     "a hidden check is a whole cell"),
    (5, "## BEGIN HIDDEN CHECKS\nassert memory\n## END HIDDEN CHECKS", "looks like a hidden-check marker"),
    (4, f"{HIDDEN_BEGIN}\nassert memory\n{HIDDEN_END}", "is not a check cell"),
], ids=["no-end", "no-begin", "region-in-a-visible-check", "two-regions", "misspelt", "not-a-check-cell"])
def test_bad_hidden_markers_name_the_file_and_cell(course, cell, source, words):
    sol = nbformat.read(course / "solutions" / NAME, as_version=4)
    sol.cells[cell].source = source
    notebooks.write(sol, course / "solutions" / NAME)
    with pytest.raises(SLMLabError) as err:
        run_cli("--solutions", str(course / "solutions"), "--labs", str(course / "labs"))
    msg = str(err.value)
    assert f"{course / 'solutions' / NAME}, cell {cell + 1}:" in msg and words in msg and "\n" not in msg, msg
    assert not (course / "labs" / NAME).exists()
