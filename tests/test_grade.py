"""`slm-lab grade`: real nbval runs of small fixture submissions (lab 00's fast checks, seconds each)."""
from __future__ import annotations

import argparse
import copy
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from slm_lab.course import grade, make_labs, notebooks
from slm_lab.errors import SLMLabError

FIXTURE = Path(__file__).parent / "fixtures" / "lab_solution.py"
NAME = "00_fixture_lab"
IDS = ["00.fp16_memory", "00.fits", "00.size_ratio"]
POINTS = {"00.fp16_memory": 2, "00.fits": 3, "00.size_ratio": 1}
FULL = sum(POINTS.values())


def solution_nb():
    return notebooks.from_percent(FIXTURE.read_text(encoding="utf-8"), f"solutions/{NAME}.ipynb")


def cell_of(nb, check_id):
    return next(i for i, c in enumerate(nb.cells) if c.metadata.get("slm_lab", {}).get("check") == check_id)


def answer(nb, text):
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def code(source):
    return nbformat.v4.new_code_cell(source)


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    grade.register(parser.add_subparsers())
    args = parser.parse_args(["grade", *argv])
    return args.func(args)


def read_gradebook(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {Path(r["file"]).name: r for r in rows}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    (root / "solutions").mkdir()
    notebooks.write(solution_nb(), root / "solutions" / f"{NAME}.ipynb")
    (root / "solutions" / "01_other_lab.ipynb").write_text("{}")     # listed, never read
    return root


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    """One grading run of five submissions, through the command's own argument parsing."""
    subs = tmp_path_factory.mktemp("subs")
    sol = solution_nb()
    notebooks.write(sol, subs / "solved.ipynb")
    notebooks.write(make_labs.build_lab(sol, f"{NAME}.ipynb", "fixture"), subs / "unsolved_lab.ipynb")

    edited = copy.deepcopy(sol)                      # wrong fp16 answer, its check edited into `pass`
    i = answer(edited, "def fp16_gb")
    edited.cells[i].source = edited.cells[i].source.replace("params * 2 / 1e9", "params * 4 / 1e9")
    j = cell_of(edited, "00.fp16_memory")
    edited.cells[j].source = "pass"
    edited.cells[j].metadata["slm_lab"]["points"] = 100
    notebooks.write(edited, subs / "edited_check.ipynb")

    deleted = copy.deepcopy(sol)        # wrong `fits` with its check deleted; right `ratio` with its check deleted
    i = answer(deleted, "fits = {")
    deleted.cells[i].source = "fits = {name: True for name in m00.FIT_MODELS}\nprint(fits)"
    del deleted.cells[cell_of(deleted, "00.fits")]
    del deleted.cells[cell_of(deleted, "00.size_ratio")]
    # extra cells up front shift every index: the item -> cell mapping must follow
    deleted.cells[2:2] = [nbformat.v4.new_markdown_cell("my notes"), code("x = 1"),
                          code("raise TimeoutError('Timeout of 9 seconds exceeded')")]
    notebooks.write(deleted, subs / "deleted_check.ipynb")

    (subs / "malformed.ipynb").write_text('{"cells": [ this is not json')
    out = tmp_path_factory.mktemp("out") / "gradebook.csv"
    names = ["solved", "malformed", "unsolved_lab", "edited_check", "deleted_check"]
    status = run_cli(*(str(subs / f"{n}.ipynb") for n in names), "--lab", "00", "--solutions",
                     str(course / "solutions"), "--out", str(out), "--timeout", "60")
    return status, out


def test_gradebook_columns_and_exit_status(graded):
    status, out = graded
    assert status == 0                                           # grading ran, though some scored zero
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["file", *IDS, "total", "max", "reason"]
    rows = read_gradebook(out)
    assert list(rows) == ["solved.ipynb", "malformed.ipynb", "unsolved_lab.ipynb", "edited_check.ipynb",
                          "deleted_check.ipynb"]
    assert all(r["max"] == str(FULL) for r in rows.values())


def test_solution_gets_full_marks(graded):
    r = read_gradebook(graded[1])["solved.ipynb"]
    assert [r[c] for c in IDS] == ["2", "3", "1"] and r["total"] == str(FULL) and r["reason"] == ""


def test_unsolved_lab_gets_zero_on_every_check(graded):
    r = read_gradebook(graded[1])["unsolved_lab.ipynb"]
    assert [r[c] for c in IDS] == ["0", "0", "0"] and r["total"] == "0" and r["reason"] == ""


def test_edited_check_gains_nothing(graded):
    r = read_gradebook(graded[1])["edited_check.ipynb"]
    # the restored fp16 check fails on the wrong answer; the other two are right and count
    assert [r[c] for c in IDS] == ["0", "3", "1"] and r["total"] == "4"


def test_deleted_checks_are_put_back(graded):
    r = read_gradebook(graded[1])["deleted_check.ipynb"]
    # fits is wrong and its deleted check still runs (0); ratio is right and its restored check passes (1);
    # the student's own exception that reads like a timeout is not taken for one
    assert [r[c] for c in IDS] == ["2", "0", "1"] and r["total"] == "3" and r["reason"] == ""


def test_malformed_notebook_gets_a_zero_row_with_reason(graded):
    r = read_gradebook(graded[1])["malformed.ipynb"]
    assert r["total"] == "0" and r["reason"].startswith("malformed notebook: ") and "\n" not in r["reason"]


def test_restore_checks_positions():
    sol = solution_nb()
    canonical = make_labs.check_ids(sol, "fixture")
    nb = copy.deepcopy(sol)
    first, second = cell_of(nb, "00.fp16_memory"), cell_of(nb, "00.fits")
    nb.cells[first].source = "pass"
    nb.cells[first].metadata = {}          # metadata wiped: no longer a check, so it stays as the student's cell
    nb.cells.append(copy.deepcopy(nb.cells[second]))          # a pasted duplicate
    nb.cells.append(code("extra = 1"))
    del nb.cells[cell_of(nb, "00.size_ratio")]
    grade.restore_checks(nb, canonical)
    ids = [c.metadata.get("slm_lab", {}).get("check") for c in nb.cells]
    assert [i for i in ids if i] == IDS
    # fp16's check (gone as such) goes right before the next check that exists, after the answers before it
    assert ids.index("00.fp16_memory") == second and ids.index("00.fits") == second + 1
    assert nb.cells[first].source == "pass"
    assert ids[-1] == "00.size_ratio" and nb.cells[-2].source == "extra = 1"     # no later check: at the end
    for cid in IDS:
        assert nb.cells[ids.index(cid)] == canonical[cid]

    edited = copy.deepcopy(sol)
    k = cell_of(edited, "00.fits")
    edited.cells[k].source = "pass"
    edited.cells[k].metadata["slm_lab"]["points"] = 99
    grade.restore_checks(edited, canonical)
    assert edited.cells == sol.cells                        # an edited check is put back in place


def test_lab_name_exact_prefix_unknown_ambiguous(course, tmp_path):
    sols = course / "solutions"
    assert grade.find_lab("00", sols).name == f"{NAME}.ipynb"
    assert grade.find_lab(f"{NAME}.ipynb", sols).name == f"{NAME}.ipynb"
    with pytest.raises(SLMLabError, match=r"--lab '0' is ambiguous; choose one of: 00_fixture_lab, 01_other_lab\."):
        grade.find_lab("0", sols)
    with pytest.raises(SLMLabError, match=r"--lab '7' matches no lab; choose one of: 00_fixture_lab, 01_other_lab\."):
        grade.find_lab("7", sols)
    with pytest.raises(SLMLabError, match="no notebook at"):
        run_cli(str(tmp_path / "missing.ipynb"), "--lab", "00", "--solutions", str(sols))


def test_reasons_come_from_nbval_lines_not_from_cell_sources(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="s.ipynb" name="Cell 0" />'
        '<testcase classname="s.ipynb" name="Cell 1"><failure message="Notebook cell execution failed&#10;'
        'Cell 1: Cell execution caused an exception&#10;&#10;Input:&#10;print(\'Timeout of 1 seconds exceeded\')'
        '&#10;pytest plugin exception: KernelDied" /></testcase>'
        '<testcase classname="s.ipynb" name="Cell 2" />'
        '<testcase classname="s.ipynb" name="Cell 3"><failure message="pytest plugin exception: Kernel dead on '
        'test start" /></testcase>'
        '<testcase classname="s.ipynb" name="Cell 4"><skipped type="pytest.xfail" message="x" /></testcase>'
        '</testsuite></testsuites>')
    passed, problems = grade._from_junit(xml)
    assert passed == {0, 2}
    assert grade._reason(problems, lambda n: n + 10, 5) == "kernel died before cell 13"


def test_not_a_notebook_is_malformed(tmp_path):
    for text in ("[]", '{"cells": 3, "nbformat": 4, "nbformat_minor": 5, "metadata": {}}'):
        (tmp_path / "x.ipynb").write_text(text)
        nb, reason = grade._read_submission(tmp_path / "x.ipynb")
        assert nb is None and reason.startswith("malformed notebook: "), reason


def test_cli_usage_error_is_one_line(course, tmp_path):
    sub = tmp_path / "s.ipynb"
    notebooks.write(solution_nb(), sub)
    res = subprocess.run([sys.executable, "-m", "slm_lab.cli", "grade", str(sub), "--lab", "zz", "--solutions",
                          str(course / "solutions")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--lab 'zz' matches no lab" in res.stderr


@pytest.fixture(scope="module")
def runaway(course, tmp_path_factory):
    """An endless loop, a kernel that exits, and a notebook that deletes the files around it."""
    sol = solution_nb()
    subs = tmp_path_factory.mktemp("runaway")
    loop = copy.deepcopy(sol)
    loop.cells.insert(cell_of(loop, "00.size_ratio"), code("while True:\n    pass"))
    (subs / "loop").mkdir()
    notebooks.write(loop, subs / "loop" / "loop.ipynb")

    crash = copy.deepcopy(sol)
    crash.cells.insert(cell_of(crash, "00.fits"), code("import os\nos._exit(1)"))
    (subs / "crash").mkdir()
    notebooks.write(crash, subs / "crash" / "crash.ipynb")

    rm = copy.deepcopy(sol)     # its `ratio` comes from a data file beside it, so it must be in the scratch copy
    i = answer(rm, "ratio = 175 / 3.8")
    rm.cells[i].source = ("import os, shutil\nratio = float(open('ratio.txt').read())\n"
                          "for f in os.listdir('.'):\n"
                          "    shutil.rmtree(f) if os.path.isdir(f) else os.remove(f)\n"
                          "assert not os.listdir('.')")
    (subs / "rm" / "data").mkdir(parents=True)
    notebooks.write(rm, subs / "rm" / "rm.ipynb")
    (subs / "rm" / "ratio.txt").write_text(repr(175 / 3.8))
    (subs / "rm" / "data" / "keep.txt").write_text("keep me")
    before = {p: p.read_bytes() for p in (subs / "rm").rglob("*") if p.is_file()}

    out = subs / "gradebook.csv"
    # the cell timeout must leave room for `import torch` in a loaded kernel; the loop costs all of it
    grade.grade([subs / n / f"{n}.ipynb" for n in ("loop", "crash", "rm")], course / "solutions" / f"{NAME}.ipynb",
                out, timeout=15, limit=120)
    return read_gradebook(out), {"crash": crash, "loop": loop, "before": before}


def test_endless_loop_hits_the_cell_timeout(runaway):
    rows, info = runaway
    r = rows["loop.ipynb"]
    k = answer(info["loop"], "while True") + 1
    assert r["reason"] == f"cell {k} timed out after 15 s"
    # the interrupted kernel lives on: the checks before and the one after the loop still count
    assert [r[c] for c in IDS] == ["2", "3", "1"]


def test_kernel_crash_is_reported_and_the_run_goes_on(runaway):
    rows, info = runaway
    r = rows["crash.ipynb"]
    k = answer(info["crash"], "os._exit") + 1
    assert r["reason"] == f"kernel died in cell {k}"
    # "died", not "timed out and could not be interrupted": noticed at once, not after the cell timeout
    assert [r[c] for c in IDS] == ["2", "0", "0"]


def test_deleting_files_leaves_the_originals(runaway):
    rows, info = runaway
    r = rows["rm.ipynb"]
    assert r["total"] == str(FULL) and r["reason"] == ""          # ratio.txt was there, and then removed
    assert {p: p.read_bytes() for p in info["before"]} == info["before"]


def test_overall_limit_stops_the_notebook_and_keeps_what_passed(course, tmp_path):
    sol = solution_nb()
    pid_file = tmp_path / "kernel.pid"
    slow = copy.deepcopy(sol)
    k = cell_of(slow, "00.fp16_memory") + 1
    slow.cells[k:k] = [code(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))")] + [
        code("time.sleep(2)") for _ in range(30)]
    notebooks.write(slow, tmp_path / "slow.ipynb")
    t0 = time.perf_counter()
    grade.grade([tmp_path / "slow.ipynb"], course / "solutions" / f"{NAME}.ipynb", tmp_path / "gb.csv",
                timeout=10, limit=15)
    assert time.perf_counter() - t0 < 40
    r = read_gradebook(tmp_path / "gb.csv")["slow.ipynb"]
    assert r["reason"].startswith("ran past the overall limit of 15 s (in cell "), r["reason"]
    assert [r[c] for c in IDS] == ["2", "0", "0"]              # the check that ran before the limit counts
    pid = int(pid_file.read_text())
    deadline = time.time() + 5                                 # the kernel was killed, not left running
    while time.time() < deadline and _running(pid):
        time.sleep(0.1)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_running_helper_sees_this_process():
    assert _running(os.getpid())
