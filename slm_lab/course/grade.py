"""`slm-lab grade SUBMISSION.ipynb... --lab NAME`: grade lab submissions with nbval, write a gradebook CSV.

For each submission, independently (one bad notebook never stops the run: whatever goes wrong costs that
submission a zero row with the reason, and the gradebook is rewritten, atomically, after every row):
  1. read it; a notebook over SUBMISSION_LIMIT_BYTES (its size is checked before anything is read), one
     that does not parse, or one holding text that is not valid Unicode gets a zero row and the reason;
  2. put back the solution's check cells, matched by id (cell.metadata["slm_lab"]["check"], a string; a cell
     whose `slm_lab` metadata has another shape is an ordinary cell): an edited check gets the canonical
     source and metadata back; of several copies of a check the LAST is kept and the others dropped (a
     stray copy pasted above the answer, or one pasted at the end to run it again, costs nothing); a deleted
     one is re-inserted just before the next check cell that exists (so after the student's answer cells
     it tests), or at the end. Hidden checks (whole check cells marked `### BEGIN HIDDEN CHECKS` ...
     `### END HIDDEN CHECKS` in the solution, left out of labs/ by make-labs) are put in from the solution:
     right after the cell they follow in the solution (matched by nbformat cell id, which labs keep), else
     before the next visible check, else at the end; any copy of one in the submission is dropped. Outputs
     are cleared, so nothing is compared with stored output;
  3. run it under `pytest --nbval-lax` in a scratch copy of its folder (a temp dir: the notebook may delete
     files there), one pytest process and so one fresh kernel per notebook, with a timeout per cell and
     an overall limit per notebook;
  4. a check earns its points iff its nbval item passed. nbval names its items "Cell N", N counting code
     cells only from 0 (nbval/plugin.py, IPyNbFile.collect), which is how items map back to cells.
The reason column is empty when every cell ran; otherwise it names the first problem, with "cell K" the
K-th cell of the graded notebook counting every cell from 1: "cell 7 timed out after 10 s", "kernel died
in cell 9", "ran past the overall limit of 600 s (in cell 12)", "malformed notebook: ...". A file name that
is not valid UTF-8 is shown with its odd bytes as \\xNN (`printable`).

The pytest plugin that runs inside each grading run is `slm_lab.course.grade_plugin`: it logs each
item's outcome as it happens (so an overall timeout still credits the checks that passed) and fails a
cell at once when its kernel dies instead of waiting out the cell timeout.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ..atomic import write_text
from ..errors import SLMLabError
from . import grade_plugin, notebooks
from .grade_plugin import LOG_ENV, cell_num
from .make_labs import check_ids, hidden_ids, read_notebook

COPY_LIMIT_BYTES = 200 * 2**20           # a bigger submission folder is not copied (only the notebook is)
# A bigger notebook is not read: parsing one takes about 9 times its size in memory. Outputs (plots) are what
# make a notebook big, and they are cleared before grading anyway.
SUBMISSION_LIMIT_BYTES = 20 * 2**20
_SKIP_NAMES = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__", ".git")
_ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")
# nbval's own line in a failure: "Cell 7: Timeout of ..." (the cell's source and traceback follow it, so only
# this line is read: a student's code cannot fake a reason) or "pytest plugin exception: ..." (grade_plugin's)
_HEADLINE = re.compile(r"^(?:Cell \d+: |pytest plugin exception: )(.*)$", re.M)


@dataclass
class Row:
    file: str                                      # printable(the path)
    points: dict = field(default_factory=dict)     # check id -> points earned
    reason: str = ""


@dataclass(frozen=True)
class Place:
    """Where a hidden check goes in a submission."""
    after: str | None      # nbformat id of the solution cell it follows (hidden cells skipped)
    before: str | None     # else: just before this visible check (the next one in the solution), else at the end


def printable(text: str) -> str:
    """text as it can be written to the CSV and printed: the bytes of a file name that are not UTF-8 (which
    Python keeps as lone surrogates) as \\xNN, any other lone surrogate as \\udNNN."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def check_id(cell) -> str | None:
    """The check id a cell carries, or None for an ordinary cell (also when its `slm_lab` metadata is a string,
    null, or holds an id that is not a string: a submission's metadata can be anything)."""
    meta = cell.get("metadata")
    meta = meta.get("slm_lab") if isinstance(meta, dict) and cell.get("cell_type") == "code" else None
    cid = meta.get("check") if isinstance(meta, dict) else None
    return cid if isinstance(cid, str) else None


def find_lab(name: str, solutions: Path) -> Path:
    """The solution notebook named by its stem or a unique prefix of it ("02" -> 02_build_and_train_lab)."""
    stems = sorted(p.stem for p in solutions.glob("*.ipynb")) if solutions.is_dir() else []
    if not stems:
        raise SLMLabError(f"no solution notebooks in {solutions}; pass --solutions DIR.")
    name = name.removesuffix(".ipynb")
    matches = [s for s in stems if s == name] or [s for s in stems if s.startswith(name)]
    if len(matches) != 1:
        what = "is ambiguous" if matches else "matches no lab"
        raise SLMLabError(f"--lab {name!r} {what}; choose one of: {', '.join(matches or stems)}.")
    return solutions / f"{matches[0]}.ipynb"


def canonical_checks(solution, where: str) -> tuple[dict, dict[str, Place]]:
    """(the solution's check cells by id, in order — hidden ones included; {hidden check id: its Place})."""
    canonical = check_ids(solution, where)
    hidden = set(hidden_ids(solution, where))
    visible = [c for c in canonical if c not in hidden]
    places: dict[str, Place] = {}
    after = None
    for k, cell in enumerate(solution.cells):
        cid = check_id(cell)
        if cid in hidden:
            later = [check_id(c) for c in solution.cells[k + 1:]]
            places[cid] = Place(after, next((c for c in later if c in visible), None))
        else:
            after = cell.get("id")
    return canonical, places


def _hidden_position(nb, place: Place, hidden: dict) -> int:
    ids = [c.get("id") for c in nb.cells]
    if place.after is not None and place.after in ids:
        k = ids.index(place.after) + 1
        while k < len(nb.cells) and check_id(nb.cells[k]) in hidden:     # after those already put there
            k += 1
        return k
    if place.before is not None:
        return next(k for k, c in enumerate(nb.cells) if check_id(c) == place.before)
    return len(nb.cells)


def restore_checks(nb, canonical: dict, hidden: dict | None = None) -> None:
    """Give nb the canonical check cells (id -> cell), in place; `hidden` ({id: Place}, from canonical_checks)
    names those of them that are hidden. See the module docstring for the rules."""
    hidden = hidden or {}
    last = {check_id(c): k for k, c in enumerate(nb.cells)}          # the last copy of each check is kept
    kept = []
    for k, cell in enumerate(nb.cells):
        cid = check_id(cell)
        if cid in canonical:
            if cid in hidden or last[cid] != k:
                continue                        # an earlier copy of a check, or a hidden check's id: dropped
            cell = copy.deepcopy(canonical[cid])
        kept.append(cell)
    nb.cells = kept
    visible = [c for c in canonical if c not in hidden]
    for i, cid in enumerate(visible):
        if cid in last:
            continue
        positions = {check_id(c): k for k, c in enumerate(nb.cells)}
        later = [positions[c] for c in visible[i + 1:] if c in positions]
        nb.cells.insert(later[0] if later else len(nb.cells), copy.deepcopy(canonical[cid]))
    for cid, place in hidden.items():
        nb.cells.insert(_hidden_position(nb, place, hidden), copy.deepcopy(canonical[cid]))


def prepare(nb, canonical: dict, hidden: dict | None = None) -> None:
    """Restore the checks and clear outputs, so a cell passes iff it runs without an error."""
    restore_checks(nb, canonical, hidden)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None


def _too_big(size: int) -> str:
    return (f"{size / 2**20:.0f} MB is over the {SUBMISSION_LIMIT_BYTES >> 20} MB limit for a submission; "
            f"clear its outputs and submit it again")


def _read_submission(path: Path):
    """The submission as a notebook, or the one-line reason it is not one."""
    try:
        size = path.stat().st_size
        if size > SUBMISSION_LIMIT_BYTES:                          # before reading a byte of it
            return None, _too_big(size)
        with open(path, "rb") as f:
            data = f.read(SUBMISSION_LIMIT_BYTES + 1)              # a file that grows meanwhile is cut off too
    except OSError as exc:
        return None, f"cannot read it: {exc.strerror or type(exc).__name__}"
    if len(data) > SUBMISSION_LIMIT_BYTES:
        return None, _too_big(len(data))
    try:
        nb = nbformat.reads(data.decode("utf-8"), as_version=4)
        for cell in nb.cells:         # outputs are cleared before grading: don't reject a notebook for them
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
        nbformat.validate(nb)
    except Exception as exc:
        text = _ANSI.sub("", str(exc)).strip()
        return None, f"malformed notebook: {text.splitlines()[0][:100] if text else type(exc).__name__}"
    # JSON may spell a lone surrogate ("\udcff"), which no UTF-8 file (nor the kernel) can hold
    for where, part in [*((f"cell {k}", c) for k, c in enumerate(nb.cells, 1)), ("its metadata", nb.metadata)]:
        try:
            json.dumps(part, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, (f"malformed notebook: {where} holds text that is not valid Unicode (a lone surrogate); "
                          f"re-save it from Jupyter")
    return nb, ""


def _scratch_copy(src: Path, dst: Path, leave_out: tuple = ()) -> None:
    """Copy the submission's folder (other notebooks left out) unless it is too big to be its own.

    `leave_out`: real paths not to copy (the scratch folder itself, when the temp folder lies inside the
    submission's folder — copying it into itself would never end — and the gradebook, others' marks)."""
    skip = {os.path.realpath(p) for p in leave_out}

    def left_out(folder, name) -> bool:
        path = os.path.join(folder, name)
        return os.path.islink(path) or os.path.realpath(path) in skip

    total = 0
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d not in (".ipynb_checkpoints", "__pycache__", ".git") and not left_out(root, d)]
        total += sum((Path(root) / f).stat().st_size for f in files if not f.endswith(".ipynb")
                     and not left_out(root, f) and (Path(root) / f).is_file())
        if total > COPY_LIMIT_BYTES:
            dst.mkdir(parents=True)
            print(f"note: {printable(str(src))} holds over {COPY_LIMIT_BYTES >> 20} MB; only the notebook is "
                  f"copied for grading", file=sys.stderr)
            return
    # other notebooks are other students' work; links could lead the notebook back to the originals
    shutil.copytree(src, dst, ignore=lambda d, names: set(_SKIP_NAMES(d, names)) | {
        n for n in names if left_out(d, n)})


def _kill_group(pid: int | None) -> None:
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _from_junit(xml: Path) -> tuple[set, list]:
    """(code indices of passed items, [(code index, nbval's headline of a failure)]) from its junit report."""
    passed: set[int] = set()
    problems: list[tuple[int, str]] = []
    try:
        cases = list(ET.parse(xml).getroot().iter("testcase"))
    except ET.ParseError:
        return passed, [(0, "unreadable junit report")]
    for case in cases:
        num = cell_num(case.get("name", ""))
        if num is None:
            continue
        bad = [e for e in case if e.tag in ("failure", "error", "skipped")]
        if not bad:
            passed.add(num)
        for e in bad:
            if e.tag != "skipped":
                text = _ANSI.sub("", e.get("message", "") or e.text or "")
                m = _HEADLINE.search(text)
                problems.append((num, m.group(1) if m else text.strip().split("\n")[0]))
    return passed, problems


def _from_log(log: Path) -> tuple[set, int | None, int | None]:
    """(code indices whose call passed, the last cell started, the kernel's pid) from the plugin's log."""
    passed, failed, last, pid = set(), set(), None, None
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue                      # a line cut short by the kill
            if "start" in event:
                last, pid = event["start"], event.get("pid") or pid
            elif event.get("passed") and event.get("when") == "call":
                passed.add(event["cell"])
            elif not event.get("passed"):
                failed.add(event["cell"])
    return passed - failed, last, pid


def _reason(problems: list, cell_no, timeout: float) -> str:
    """The first problem worth a reason; ordinary exceptions in cells (a failed check) are not one."""
    for num, text in sorted(problems, key=lambda p: p[0]):
        if "KernelDied" in text:
            return f"kernel died in cell {cell_no(num)}"
        if "Kernel dead on test start" in text:
            return f"kernel died before cell {cell_no(num)}"
        if "Timeout of" in text and "exceeded" in text:
            stuck = " and could not be interrupted" if "Failed to interrupt" in text else ""
            return f"cell {cell_no(num)} timed out after {timeout:g} s{stuck}"
        if "unreadable junit report" in text:
            return "grading run failed: its junit report is unreadable"
        if text.startswith("failed on setup"):            # e.g. the kernel did not start
            return f"cell {cell_no(num)} could not run: {text[:100]}"
    return ""


def run_nbval(nb, folder: Path, timeout: float, limit: float, profile: str,
              leave_out: tuple = ()) -> tuple[set, str]:
    """Execute nb (with the files of `folder`, but `leave_out`) under nbval; return (code indices that passed,
    reason)."""
    scratch = Path(tempfile.mkdtemp(prefix="slm-lab-grade-"))
    try:
        work, report = scratch / "work", scratch / "report"
        _scratch_copy(folder, work, (scratch, *leave_out))
        report.mkdir()
        nb_path, xml, log = work / "submission.ipynb", report / "junit.xml", report / "events.jsonl"
        notebooks.write(nb, nb_path)
        ini = report / "pytest.ini"
        ini.write_text("[pytest]\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
        env.update({LOG_ENV: str(log), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "SLM_LAB_PROFILE": profile})
        cmd = [sys.executable, "-m", "pytest", "-p", "nbval", "-p", grade_plugin.__name__, "-p", "no:cacheprovider",
               "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={timeout:g}", "--noconftest",
               "-c", str(ini), "--rootdir", str(work), f"--junitxml={xml}", "-q", nb_path.name]
        with open(report / "pytest.out", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=limit)
                killed = False
            except subprocess.TimeoutExpired:
                killed = True
            except BaseException:                   # Ctrl-C: leave no pytest or kernel running
                _kill_group(proc.pid)
                _kill_group(_from_log(log)[2])
                raise
            if killed:
                _kill_group(proc.pid)
                proc.wait()
        log_passed, last, kernel_pid = _from_log(log)
        _kill_group(kernel_pid)             # the kernel runs in its own session; leave nothing behind
        code_cells = [k for k, c in enumerate(nb.cells, 1) if c.cell_type == "code"]

        def cell_no(num):
            return code_cells[num] if num is not None and num < len(code_cells) else "?"

        if killed:
            where = f" (in cell {cell_no(last)})" if last is not None else ""
            return log_passed, f"ran past the overall limit of {limit:g} s{where}"
        if proc.returncode not in (0, 1, 5) or not xml.is_file():    # 1: a cell failed; 5: no code cells
            tail = (report / "pytest.out").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return log_passed, f"grading run failed (exit {proc.returncode}): {tail[-1][:100] if tail else 'no output'}"
        passed, problems = _from_junit(xml)
        return passed, _reason(problems, cell_no, timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def grade_one(path: Path, canonical: dict, timeout: float, limit: float, profile: str,
              hidden: dict | None = None, leave_out: tuple = ()) -> Row:
    row = Row(printable(str(path)), {cid: 0 for cid in canonical})
    nb, row.reason = _read_submission(path)
    if nb is None:
        return row
    prepare(nb, canonical, hidden)
    passed, row.reason = run_nbval(nb, path.resolve().parent, timeout, limit, profile, leave_out)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for num in passed:
        cid = check_id(code[num]) if num < len(code) else None
        if cid in canonical:
            row.points[cid] = canonical[cid].metadata["slm_lab"].get("points", 1)
    return row


def gradebook_text(rows: list[Row], canonical: dict) -> str:
    """The CSV: file, one column per check id (points earned), total, max, reason."""
    full = sum(c.metadata["slm_lab"].get("points", 1) for c in canonical.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", *canonical, "total", "max", "reason"])
    for r in rows:
        w.writerow([printable(r.file), *(r.points[c] for c in canonical), sum(r.points.values()), full,
                    printable(r.reason)])
    return buf.getvalue()


def load_checks(solution: Path) -> tuple[dict, dict[str, Place]]:
    """The solution's check cells by id and its hidden checks' places (canonical_checks); a solution without
    any check is an error."""
    canonical, hidden = canonical_checks(read_notebook(solution), str(solution))
    if not canonical:
        raise SLMLabError(f"{solution} has no check cells, so there is nothing to grade; add check cells to it.")
    return canonical, hidden


def check_out(out: Path, paths: list, solution: Path) -> None:
    """Refuse a gradebook path that would replace a submission or the solution, or that cannot be written."""
    if out.is_dir():
        raise SLMLabError(f"--out {out} is a folder; give a file name such as {out / 'gradebook.csv'}.")
    if not out.parent.is_dir():
        raise SLMLabError(f"no folder {out.parent} for the gradebook; create it or choose another --out.")
    for what, p in [*(("submission", p) for p in paths), ("solution", solution)]:
        try:
            same = os.path.realpath(out) == os.path.realpath(p) or (out.exists() and os.path.samefile(out, p))
        except OSError:                  # p is gone: nothing to replace
            same = False
        if same:
            raise SLMLabError(f"--out {printable(str(out))} is the {what} {printable(str(p))}, which the gradebook "
                              f"would replace; choose another file, such as gradebook.csv.")


def grade(paths: list, solution: Path, out: Path, timeout: float = 300, limit: float = 1800,
          profile: str = "smoke") -> list[Row]:
    """Grade each submission (str, bytes or Path) against the solution's check cells; write the gradebook CSV
    to out after every row."""
    paths = [Path(os.fsdecode(p)) for p in paths]
    out = Path(out)
    check_out(out, paths, solution)
    canonical, hidden = load_checks(solution)
    rows: list[Row] = []
    for i, path in enumerate(paths, 1):
        t0 = time.perf_counter()
        try:
            row = grade_one(path, canonical, timeout, limit, profile, hidden, leave_out=(out,))
        except Exception as exc:         # a bug, say: it costs this submission its row, not the batch its run
            text = str(exc).strip().splitlines()
            row = Row(printable(str(path)), {cid: 0 for cid in canonical},
                      f"grading failed ({type(exc).__name__}{': ' + text[0][:100] if text else ''})")
        row.reason = printable(row.reason)
        rows.append(row)
        write_text(out, gradebook_text(rows, canonical))
        print(f"[{i}/{len(paths)}] {row.file}: {sum(row.points.values()):g} points "
              f"({time.perf_counter() - t0:.0f} s){' — ' + row.reason if row.reason else ''}", flush=True)
    return rows


def run(args) -> int:
    paths = [Path(p) for p in args.submissions]
    for p in paths:
        if not p.is_file():
            raise SLMLabError(f"no notebook at {printable(str(p))}; pass submission files (e.g. submissions/*.ipynb).")
    if args.timeout <= 0 or args.notebook_timeout <= 0:
        raise SLMLabError("--timeout and --notebook-timeout must be positive numbers of seconds.")
    out = Path(args.out)
    solution = find_lab(args.lab, Path(args.solutions))
    full = sum(c.metadata["slm_lab"].get("points", 1) for c in load_checks(solution)[0].values())
    rows = grade(paths, solution, out, args.timeout, args.notebook_timeout, args.profile)   # checks --out first
    width = max(len("file"), *(len(r.file) for r in rows))
    print(f"\n{'file':<{width}}  {'score':>9}  reason")
    for r in rows:
        print(f"{r.file:<{width}}  {f'{sum(r.points.values()):g}/{full:g}':>9}  {r.reason}")
    print(f"gradebook: {printable(str(out))} ({len(rows)} submissions, lab {solution.stem})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("grade", help="grade lab submissions with nbval and write a gradebook CSV")
    p.add_argument("submissions", nargs="+", help="submitted .ipynb files")
    p.add_argument("--lab", required=True, help="the lab: a solution's name or a unique prefix (e.g. 02)")
    p.add_argument("--out", default="gradebook.csv", help="gradebook CSV to write (default gradebook.csv)")
    p.add_argument("--solutions", default=str(notebooks.ROOT / "solutions"),
                   help="solved labs (default: repo's solutions/)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per cell (default 300)")
    p.add_argument("--notebook-timeout", type=float, default=1800, help="seconds per notebook (default 1800)")
    p.add_argument("--profile", default="smoke", choices=("smoke", "full"),
                   help="SLM_LAB_PROFILE the submissions run with (default smoke)")
    p.set_defaults(func=run)
