"""`slm-lab grade`: real grading runs of small fixture submissions (lab 00's fast checks, seconds each)."""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import nbformat
import pytest

from slm_lab.course import grade, make_labs, notebooks, runner, sandbox
from slm_lab.errors import SLMLabError

# Grading runs each kernel in the sandbox (tests/test_setup.py makes sure `make test` has it where it can).
requires_sandbox = pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))

FIXTURE = Path(__file__).parent / "fixtures" / "lab_solution.py"
NAME = "00_fixture_lab"
IDS = ["00.fp16_memory", "00.fits", "00.size_ratio"]
POINTS = {"00.fp16_memory": 2, "00.fits": 3, "00.size_ratio": 1}
FULL = sum(POINTS.values())


def solution_nb():
    return notebooks.from_percent(FIXTURE.read_text(encoding="utf-8"), f"solutions/{NAME}.ipynb")


def cell_of(nb, check_id):
    return next(i for i, c in enumerate(nb.cells)
                if isinstance(c.metadata.get("slm_lab"), dict) and c.metadata["slm_lab"].get("check") == check_id)


def answer(nb, text):
    return next(i for i, c in enumerate(nb.cells) if text in c.source)


def code(source):
    return nbformat.v4.new_code_cell(source)


def pasted(cell):
    """A copy of a cell as Jupyter pastes it: same source and metadata, a new cell id."""
    cell = copy.deepcopy(cell)
    cell.id = nbformat.v4.new_code_cell().id
    return cell


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


@requires_sandbox
def test_gradebook_columns_and_exit_status(graded):
    status, out = graded
    assert status == 0                                           # grading ran, though some scored zero
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["file", *IDS, "total", "max", "reason", "flags", "feedback"]
    rows = read_gradebook(out)
    assert list(rows) == ["solved.ipynb", "malformed.ipynb", "unsolved_lab.ipynb", "edited_check.ipynb",
                          "deleted_check.ipynb"]
    assert all(r["max"] == str(FULL) for r in rows.values())


@requires_sandbox
def test_solution_gets_full_marks(graded):
    r = read_gradebook(graded[1])["solved.ipynb"]
    assert [r[c] for c in IDS] == ["2", "3", "1"] and r["total"] == str(FULL) and r["reason"] == ""


@requires_sandbox
def test_unsolved_lab_gets_zero_on_every_check(graded):
    r = read_gradebook(graded[1])["unsolved_lab.ipynb"]
    assert [r[c] for c in IDS] == ["0", "0", "0"] and r["total"] == "0" and r["reason"] == ""


@requires_sandbox
def test_edited_check_gains_nothing(graded):
    r = read_gradebook(graded[1])["edited_check.ipynb"]
    # the restored fp16 check fails on the wrong answer; the other two are right and count
    assert [r[c] for c in IDS] == ["0", "3", "1"] and r["total"] == "4"


@requires_sandbox
def test_deleted_checks_are_put_back(graded):
    r = read_gradebook(graded[1])["deleted_check.ipynb"]
    # fits is wrong and its deleted check still runs (0); ratio is right and its restored check passes (1);
    # the student's own exception that reads like a timeout is not taken for one
    assert [r[c] for c in IDS] == ["2", "0", "1"] and r["total"] == "3" and r["reason"] == ""


@requires_sandbox
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
    nb.cells.append(code("extra = 1"))
    del nb.cells[cell_of(nb, "00.size_ratio")]
    nb.cells.insert(2, pasted(nb.cells[second]))           # a stray copy of a check above the answers: dropped
    grade.restore_checks(nb, canonical)
    ids = [grade.check_id(c) for c in nb.cells]
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


@requires_sandbox
def test_endless_loop_hits_the_cell_timeout(runaway):
    rows, info = runaway
    r = rows["loop.ipynb"]
    k = answer(info["loop"], "while True") + 1
    assert r["reason"] == f"cell {k} timed out after 15 s"
    # the interrupted kernel lives on: the checks before and the one after the loop still count
    assert [r[c] for c in IDS] == ["2", "3", "1"]


@requires_sandbox
def test_kernel_crash_is_reported_and_the_run_goes_on(runaway):
    rows, info = runaway
    r = rows["crash.ipynb"]
    k = answer(info["crash"], "os._exit") + 1
    assert r["reason"] == f"kernel died in cell {k}"
    # "died", not "timed out and could not be interrupted": noticed at once, not after the cell timeout
    assert [r[c] for c in IDS] == ["2", "0", "0"]


@requires_sandbox
def test_deleting_files_leaves_the_originals(runaway):
    rows, info = runaway
    r = rows["rm.ipynb"]
    assert r["total"] == str(FULL) and r["reason"] == ""          # ratio.txt was there, and then removed
    assert {p: p.read_bytes() for p in info["before"]} == info["before"]


@requires_sandbox
def test_overall_limit_stops_the_notebook_and_keeps_what_passed(course, tmp_path):
    sol = solution_nb()
    marker = f"{os.getpid()}.{time.time_ns() % 10**6}"              # a sleep only this test starts
    slow = copy.deepcopy(sol)
    k = cell_of(slow, "00.fp16_memory") + 1
    # a child in a session of its own, which a process-group kill would miss
    slow.cells[k:k] = [code(f"import subprocess, time\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)")
                       ] + [code("time.sleep(2)") for _ in range(30)]
    notebooks.write(slow, tmp_path / "slow.ipynb")
    t0 = time.perf_counter()
    grade.grade([tmp_path / "slow.ipynb"], course / "solutions" / f"{NAME}.ipynb", tmp_path / "gb.csv",
                timeout=10, limit=15)
    assert time.perf_counter() - t0 < 40
    r = read_gradebook(tmp_path / "gb.csv")["slow.ipynb"]
    assert r["reason"].startswith("ran past the overall limit of 15 s (in cell "), r["reason"]
    assert [r[c] for c in IDS] == ["2", "0", "0"]              # the check that ran before the limit counts
    deadline = time.time() + 5                                 # the kernel and its children were killed
    while time.time() < deadline and _processes_with(marker):
        time.sleep(0.1)
    assert not _processes_with(marker)


def _processes_with(word: str) -> list[int]:
    """Pids of the running (not zombie) processes whose command line holds `word`."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and word in (p / "cmdline").read_bytes().decode(errors="replace") and _running(int(p.name)):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_running_helper_sees_this_process():
    assert _running(os.getpid())


# --- one bad submission never costs the batch --------------------------------------------------------------

def test_check_metadata_of_the_wrong_shape_makes_an_ordinary_cell():
    """`slm_lab` metadata that is a string, null, or whose id is a list or a dict: not a check, and no crash."""
    sol = solution_nb()
    canonical = make_labs.check_ids(sol, "fixture")
    nb = copy.deepcopy(sol)
    nb.cells[2].metadata["slm_lab"] = "check"
    nb.cells[answer(nb, "fits = {")].metadata["slm_lab"] = None
    nb.cells[cell_of(nb, "00.fp16_memory")].metadata["slm_lab"] = {"check": ["00.fp16_memory"], "points": 9}
    nb.cells.append(code("y = 2"))
    nb.cells[-1].metadata["slm_lab"] = {"check": {"id": "00.fits"}}
    grade.prepare(nb, canonical)
    ids = [grade.check_id(c) for c in nb.cells]
    assert [i for i in ids if i] == IDS
    assert nb.cells[ids.index("00.fp16_memory")] == canonical["00.fp16_memory"]
    assert nb.cells[-1].source == "y = 2"          # kept as the student's own cell


def test_lone_surrogate_in_a_cell_is_a_malformed_notebook(tmp_path):
    nb = solution_nb()
    nb.cells[3].source += " \udcff"
    (tmp_path / "s.ipynb").write_text(json.dumps(nb))          # "\udcff" as a JSON escape: valid JSON, not Unicode
    got, reason = grade._read_submission(tmp_path / "s.ipynb")
    assert got is None and reason.startswith("malformed notebook: cell 4 ") and "Unicode" in reason, reason

    nb = solution_nb()                                          # in an output only: outputs are cleared, so it grades
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", name="stdout", text="\udcff")]
    (tmp_path / "o.ipynb").write_text(json.dumps(nb))
    got, reason = grade._read_submission(tmp_path / "o.ipynb")
    assert got is not None and reason == "" and nbformat.writes(got).encode("utf-8")


def test_submission_over_the_size_limit_gets_a_row_without_being_read(course, tmp_path, monkeypatch):
    huge = tmp_path / "huge.ipynb"
    with open(huge, "wb") as f:
        f.truncate(150 * 2**20)                                 # 150 MB (sparse: no disk used)
    ran = []
    monkeypatch.setattr(grade, "run_graded", lambda *a, **k: ran.append(a) or runner.Outcome())
    tracemalloc.start()
    try:
        grade.grade([huge], course / "solutions" / f"{NAME}.ipynb", tmp_path / "gb.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    r = read_gradebook(tmp_path / "gb.csv")["huge.ipynb"]
    limit = grade.SUBMISSION_LIMIT_BYTES >> 20
    assert r["total"] == "0" and r["reason"].startswith(f"150 MB is over the {limit} MB limit"), r["reason"]
    assert not ran and peak < 10 * 2**20


def test_instructors_guide_quotes_the_size_limit():
    text = (Path(__file__).resolve().parents[1] / "INSTRUCTORS.md").read_text(encoding="utf-8")
    assert f"over\n{grade.SUBMISSION_LIMIT_BYTES >> 20} MB (`SUBMISSION_LIMIT_BYTES`" in text


def _fake_runs(monkeypatch, *outcomes):
    """run_graded replaced by one outcome per call: an exception to raise, or (passed code indices, reason)."""
    calls = []

    def fake(nb, folder, *args, **kwargs):
        calls.append(folder)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return runner.Outcome(*outcome)
    monkeypatch.setattr(grade, "run_graded", fake)
    return calls


def test_gradebook_is_written_after_every_row(course, tmp_path, monkeypatch):
    for n in ("a", "b", "c"):
        notebooks.write(solution_nb(), tmp_path / f"{n}.ipynb")
    _fake_runs(monkeypatch, (set(), ""), (set(), ""), KeyboardInterrupt())
    out = tmp_path / "gb.csv"
    with pytest.raises(KeyboardInterrupt):                       # Ctrl-C in the third: the first two are saved
        grade.grade([tmp_path / f"{n}.ipynb" for n in "abc"], course / "solutions" / f"{NAME}.ipynb", out)
    assert list(read_gradebook(out)) == ["a.ipynb", "b.ipynb"]


def test_an_unexpected_error_costs_one_row_not_the_batch(course, tmp_path, monkeypatch):
    for n in ("a", "b"):
        notebooks.write(solution_nb(), tmp_path / f"{n}.ipynb")
    _fake_runs(monkeypatch, RuntimeError("boom\nsecond line"), (set(), ""))
    grade.grade([tmp_path / "a.ipynb", tmp_path / "b.ipynb"], course / "solutions" / f"{NAME}.ipynb",
                tmp_path / "gb.csv")
    rows = read_gradebook(tmp_path / "gb.csv")
    assert rows["a.ipynb"]["reason"] == "grading failed (RuntimeError: boom)" and rows["a.ipynb"]["total"] == "0"
    assert rows["b.ipynb"]["reason"] == ""


def test_out_naming_a_submission_the_solution_or_a_folder_is_refused(course, tmp_path, monkeypatch):
    sub = tmp_path / "subs" / "s.ipynb"
    sub.parent.mkdir()
    notebooks.write(solution_nb(), sub)
    before = sub.read_bytes()
    (tmp_path / "link.csv").symlink_to(sub)
    calls = _fake_runs(monkeypatch)
    sols = course / "solutions"
    for out, words in [(sub, f"--out {sub} is the submission {sub}"),
                       (tmp_path / "subs" / ".." / "subs" / "s.ipynb", "is the submission"),
                       (tmp_path / "link.csv", "is the submission"),
                       (sols / f"{NAME}.ipynb", "is the solution"),
                       (tmp_path / "subs", "is a folder")]:
        with pytest.raises(SLMLabError) as err:
            run_cli(str(sub), "--lab", "00", "--solutions", str(sols), "--out", str(out))
        assert words in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert sub.read_bytes() == before and not calls                  # refused before anything ran
    with pytest.raises(SLMLabError, match="is the submission"):         # the function refuses it too
        grade.grade([sub], sols / f"{NAME}.ipynb", sub)
    assert sub.read_bytes() == before


def test_restore_keeps_the_last_copy_of_a_check():
    """A stray copy of a check pasted above its answer costs nothing: the last copy is the graded one."""
    sol = solution_nb()
    canonical = make_labs.check_ids(sol, "fixture")
    nb = copy.deepcopy(sol)
    nb.cells.insert(answer(nb, "def fp16_gb"), pasted(nb.cells[cell_of(nb, "00.fp16_memory")]))
    grade.restore_checks(nb, canonical)
    assert nb.cells == sol.cells

    nb = copy.deepcopy(sol)                                  # a copy at the end, to run it again: that one counts
    nb.cells.append(pasted(nb.cells[cell_of(nb, "00.fits")]))
    nb.cells[-1].source = "pass"
    grade.restore_checks(nb, canonical)
    ids = [grade.check_id(c) for c in nb.cells]
    assert ids.count("00.fits") == 1 and ids[-1] == "00.fits" and nb.cells[-1] == canonical["00.fits"]


@requires_sandbox
def test_temp_folder_inside_the_submission_folder_is_not_copied_into_itself(tmp_path, monkeypatch):
    """TMPDIR inside the submission's folder: the scratch copy of that folder must leave itself out (and the
    gradebook, which holds other students' marks)."""
    subs = tmp_path / "subs"
    (subs / "tmp").mkdir(parents=True)
    (subs / "data.txt").write_text("x")
    (subs / "gradebook.csv").write_text("file,total\nsomeone.ipynb,10\n")
    monkeypatch.setattr(tempfile, "tempdir", str(subs / "tmp"))
    nb = nbformat.v4.new_notebook(cells=[code("import os\nassert open('data.txt').read() == 'x'\n"
                                              "assert os.listdir('tmp') == [], os.listdir('tmp')\n"
                                              "assert not os.path.exists('gradebook.csv')")])
    nb.cells[0].metadata["slm_lab"] = {"check": "x"}         # run as a check cell would: its verdict is the grader's
    nb.cells[0].source = "m00.check_answer('00.fp16_memory', listing)"
    nb.cells.insert(0, code("import os\nfrom slm_lab.checks import m00\nassert open('data.txt').read() == 'x'\n"
                            "assert os.listdir('tmp') == [], os.listdir('tmp')\n"
                            "assert not os.path.exists('gradebook.csv')\nlisting = 14.0"))
    outcome = grade.run_graded(nb, subs, 60, 120, "smoke", leave_out=(subs / "gradebook.csv",))
    assert outcome.passed == {1} and outcome.reason == "", outcome


@pytest.fixture(scope="module")
def hostile(course, tmp_path_factory):
    """One `slm-lab grade` process over submissions that each used to stop the whole run, in a folder that
    also holds the temp folder (TMPDIR) and one submission whose name is not UTF-8."""
    subs = tmp_path_factory.mktemp("hostile")
    (subs / "tmp").mkdir()
    sol = solution_nb()

    surrogate = copy.deepcopy(sol)
    surrogate.cells[3].source += " \udcff"
    (subs / "surrogate.ipynb").write_text(json.dumps(surrogate))

    meta = copy.deepcopy(sol)
    meta.cells[2].metadata["slm_lab"] = "check"
    meta.cells[answer(meta, "fits = {")].metadata["slm_lab"] = None
    meta.cells[cell_of(meta, "00.fp16_memory")].metadata["slm_lab"] = {"check": ["00.fp16_memory"]}
    notebooks.write(meta, subs / "bad_metadata.ipynb")

    stray = copy.deepcopy(sol)                   # the fp16 check pasted above its answer as well
    stray.cells.insert(answer(stray, "def fp16_gb"), pasted(stray.cells[cell_of(stray, "00.fp16_memory")]))
    notebooks.write(stray, subs / "stray_copy.ipynb")

    notebooks.write(sol, subs / os.fsdecode(b"\xff_solved.ipynb"))
    out = subs / "gradebook.csv"
    names = [b"surrogate.ipynb", b"bad_metadata.ipynb", b"stray_copy.ipynb", b"\xff_solved.ipynb"]
    env = {**os.environ, "TMPDIR": str(subs / "tmp"), "PYTHONIOENCODING": "utf-8"}    # strict UTF-8 output
    res = subprocess.run([sys.executable, "-m", "slm_lab.cli", "grade", *(os.fsencode(subs) + b"/" + n for n in names),
                          "--lab", "00", "--solutions", str(course / "solutions"), "--out", str(out),
                          "--timeout", "60"], capture_output=True, text=True, errors="replace", env=env, timeout=600)
    return res, out


@requires_sandbox
def test_hostile_batch_gets_a_row_for_every_submission(hostile):
    res, out = hostile
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_gradebook(out)
    assert list(rows) == ["surrogate.ipynb", "bad_metadata.ipynb", "stray_copy.ipynb", "\\xff_solved.ipynb"]
    assert rows["surrogate.ipynb"]["total"] == "0" and "Unicode" in rows["surrogate.ipynb"]["reason"]
    for name in ("bad_metadata.ipynb", "stray_copy.ipynb", "\\xff_solved.ipynb"):
        assert rows[name]["total"] == str(FULL) and rows[name]["reason"] == "", (name, rows[name])
    assert "\\xff_solved.ipynb" in res.stdout


# --- hidden checks -------------------------------------------------------------------------------------------

HIDDEN_FIXTURE = Path(__file__).parent / "fixtures" / "lab_solution_hidden.py"
HIDDEN_NAME = "00_hidden_lab"
H_IDS = ["00.fp16_memory", "00.fp16_hidden", "00.size_ratio", "00.ratio_hidden"]
H_POINTS = {"00.fp16_memory": 2, "00.fp16_hidden": 4, "00.size_ratio": 1, "00.ratio_hidden": 5}


def hidden_solution():
    return notebooks.from_percent(HIDDEN_FIXTURE.read_text(encoding="utf-8"), f"solutions/{HIDDEN_NAME}.ipynb")


def student_copy(sol):
    """What a student hands in for the lab of `sol`: its cells (and cell ids) without the hidden checks."""
    nb = copy.deepcopy(sol)
    nb.cells = [c for c in nb.cells if "### BEGIN HIDDEN CHECKS" not in c.source]
    return nb


def test_hidden_checks_go_back_in_their_canonical_place():
    sol = hidden_solution()
    canonical, hidden = grade.canonical_checks(sol, "fixture")
    assert list(canonical) == H_IDS and list(hidden) == ["00.fp16_hidden", "00.ratio_hidden"]
    nb = student_copy(sol)
    grade.restore_checks(nb, canonical, hidden)
    assert nb.cells == sol.cells

    # right after the cell it follows in the solution (the fp16 check), before the student's own next cell;
    # a copy of a hidden check in the submission (an id it should not know, an edited body) is not kept
    nb = student_copy(sol)
    nb.cells.insert(cell_of(nb, "00.fp16_memory") + 1, code("print('mine')"))
    leaked = copy.deepcopy(sol.cells[cell_of(sol, "00.ratio_hidden")])
    leaked.source = "pass"
    nb.cells.insert(2, leaked)
    grade.restore_checks(nb, canonical, hidden)
    k = cell_of(nb, "00.fp16_memory")
    assert grade.check_id(nb.cells[k + 1]) == "00.fp16_hidden" and nb.cells[k + 2].source == "print('mine')"
    assert [grade.check_id(c) for c in nb.cells].count("00.ratio_hidden") == 1
    assert nb.cells[-1] == canonical["00.ratio_hidden"] and "pass" not in [c.source for c in nb.cells]

    # cells without the solution's ids (another editor re-made them): the restored checks still carry theirs
    nb = student_copy(sol)
    for c in nb.cells:
        c.pop("id", None)
    grade.restore_checks(nb, canonical, hidden)
    ids = [grade.check_id(c) for c in nb.cells]
    assert ids.index("00.fp16_hidden") == ids.index("00.fp16_memory") + 1 and ids[-1] == "00.ratio_hidden"

    # a hidden check that follows a student's cell in the solution, where the submission has no such cell:
    # just before the next visible check
    sol2 = copy.deepcopy(sol)
    h = sol2.cells.pop(cell_of(sol2, "00.fp16_hidden"))
    sol2.cells.insert(answer(sol2, "def fp16_gb") + 1, h)
    canonical, hidden = grade.canonical_checks(sol2, "fixture")
    assert hidden["00.fp16_hidden"] == grade.Place(sol2.cells[answer(sol2, "def fp16_gb")].id, "00.fp16_memory")
    nb = student_copy(sol2)
    nb.cells[answer(nb, "def fp16_gb")].id = "re-made"
    nb.cells.insert(cell_of(nb, "00.fp16_memory"), code("print('mine')"))
    grade.restore_checks(nb, canonical, hidden)
    k = cell_of(nb, "00.fp16_memory")
    assert grade.check_id(nb.cells[k - 1]) == "00.fp16_hidden" and nb.cells[k - 2].source == "print('mine')"


@pytest.fixture(scope="module")
def hidden_graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("hidden")
    (root / "solutions").mkdir()
    notebooks.write(hidden_solution(), root / "solutions" / f"{HIDDEN_NAME}.ipynb")
    sol = nbformat.read(root / "solutions" / f"{HIDDEN_NAME}.ipynb", as_version=4)
    subs = root / "subs"
    subs.mkdir()
    notebooks.write(student_copy(sol), subs / "solved.ipynb")
    notebooks.write(make_labs.build_lab(sol, f"{HIDDEN_NAME}.ipynb", "fixture"), subs / "unsolved_lab.ipynb")
    typed = student_copy(sol)        # numbers typed in: the visible checks pass, the hidden ones do not
    i = answer(typed, "def fp16_gb")
    typed.cells[i].source = typed.cells[i].source.replace("params * 2 / 1e9", "14.0")
    i = answer(typed, "ratio = 175 / 3.8")
    typed.cells[i].source = typed.cells[i].source.replace("175 / 3.8", "46.0")
    notebooks.write(typed, subs / "typed_numbers.ipynb")
    leaked = student_copy(sol)       # the hidden checks' ids, edited into `pass`, above the answers
    for cid in ("00.fp16_hidden", "00.ratio_hidden"):
        cell = copy.deepcopy(sol.cells[cell_of(sol, cid)])
        cell.source = "pass"
        leaked.cells.insert(2, cell)
    notebooks.write(leaked, subs / "leaked.ipynb")
    out = root / "gradebook.csv"
    names = ["solved", "unsolved_lab", "typed_numbers", "leaked"]
    run_cli(*(str(subs / f"{n}.ipynb") for n in names), "--lab", "00", "--solutions", str(root / "solutions"),
            "--out", str(out), "--timeout", "60")
    return out


@requires_sandbox
def test_hidden_checks_count_in_the_gradebook(hidden_graded):
    with open(hidden_graded, newline="") as f:
        assert next(csv.reader(f)) == ["file", *H_IDS, "total", "max", "reason", "flags", "feedback"]
    rows = read_gradebook(hidden_graded)
    full = str(sum(H_POINTS.values()))
    assert all(r["max"] == full for r in rows.values())
    assert [rows["solved.ipynb"][c] for c in H_IDS] == ["2", "4", "1", "5"] and rows["solved.ipynb"]["reason"] == ""
    assert rows["unsolved_lab.ipynb"]["total"] == "0"
    assert [rows["typed_numbers.ipynb"][c] for c in H_IDS] == ["2", "0", "1", "0"]
    assert rows["leaked.ipynb"]["total"] == full
