"""`slm-lab grade SUBMISSION.ipynb... --lab NAME`: grade lab submissions, write a gradebook CSV.

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
  3. run it in a scratch copy of its folder (a temp dir: the notebook may delete files there), one fresh
     kernel per notebook, in the sandbox (`sandbox`: its own uid, no network, nothing but scratch
     writable, nothing outliving it), with a timeout per cell and an overall limit per notebook
     (`runner`). Check cells are not run by the kernel: the grader runs them itself, calling the student's
     functions in the kernel on inputs it chooses, so a check's verdict cannot be forged from the
     student's cells (`slm_lab.checks.remote`);
  4. a check earns its points iff it passed there. The answer cells are also scanned for constructs an
     instructor should read (`scan`: the flags column), and each failed check's line goes to the feedback
     column.
The reason column is empty when every cell ran; otherwise it names the first problem, with "cell K" the
K-th cell of the graded notebook counting every cell from 1: "cell 7 timed out after 10 s", "kernel died
in cell 9", "ran past the overall limit of 600 s (in cell 12)", "malformed notebook: ...". A file name that
is not valid UTF-8 is shown with its odd bytes as \\xNN (`printable`).

Without the sandbox (no bubblewrap here) grading refuses to start unless told `--no-sandbox`.
"""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from ..atomic import write_text
from ..errors import SLMLabError
from ..settings import cache_dir
from . import notebooks, runner, sandbox, scan
from .make_labs import build_lab, check_ids, hidden_ids, read_notebook

COPY_LIMIT_BYTES = 200 * 2**20           # a bigger submission folder is not copied (only the notebook is)
# A bigger notebook is not read: parsing one takes about 9 times its size in memory. Outputs (plots) are what
# make a notebook big, and they are cleared before grading anyway.
SUBMISSION_LIMIT_BYTES = 20 * 2**20
_SKIP_NAMES = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__", ".git")
_ANSI = re.compile(r"(\x1b|#x1B)\[[0-9;]*m")


@dataclass
class Row:
    file: str                                      # printable(the path)
    points: dict = field(default_factory=dict)     # check id -> points earned
    reason: str = ""
    flags: list = field(default_factory=list)      # what the static scan found in the answer cells (scan.flags)
    feedback: dict = field(default_factory=dict)   # check id -> the line a failed check said


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


def run_graded(nb, folder: Path, timeout: float, limit: float, profile: str, leave_out: tuple = (),
               sandboxed: bool = True) -> runner.Outcome:
    """Run nb with the files of `folder` (but `leave_out`) in a scratch copy, its kernel sandboxed, its checks
    judged by this process (`runner`)."""
    scratch = Path(tempfile.mkdtemp(prefix="slm-lab-grade-"))
    ipc = None
    try:
        work = scratch / "work"
        _scratch_copy(folder, work, (scratch, *leave_out))
        # the kernel's sockets: a short path (a Unix socket's is limited to ~107 bytes, and TMPDIR can be deep)
        ipc = Path(tempfile.mkdtemp(prefix="slm-ipc-", dir="/tmp" if os.path.isdir("/tmp") else None))
        notebooks.write(nb, work / "submission.ipynb")
        if sandboxed:
            sandbox.prepare(work)
        readable = _cache_root()
        env = {"SLM_LAB_PROFILE": profile, **({"SLM_LAB_CACHE": str(readable[0])} if readable else {})}
        return runner.run(nb, work, ipc, timeout=timeout, limit=limit, env=env, sandboxed=sandboxed,
                          is_check=lambda c: check_id(c) is not None, readable=readable)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if ipc is not None:
            shutil.rmtree(ipc, ignore_errors=True)


def _cache_root() -> tuple[Path, ...]:
    """The course cache (trained models; settings.cache_dir), which graded kernels may read but not change:
    (its path,), or () where it cannot be created."""
    try:
        return (cache_dir(),)
    except OSError:
        return ()


def grade_one(path: Path, canonical: dict, timeout: float, limit: float, profile: str,
              hidden: dict | None = None, leave_out: tuple = (), sandboxed: bool = True,
              given: frozenset = frozenset()) -> Row:
    """One submission's row; `given`: the sources of the code cells the lab hands out as they are (not
    scanned for flags: the course wrote them)."""
    row = Row(printable(str(path)), {cid: 0 for cid in canonical})
    nb, row.reason = _read_submission(path)
    if nb is None:
        return row
    prepare(nb, canonical, hidden)
    labs = tuple(sorted({cid.split(".")[0] for cid in canonical}))
    row.flags = scan.flags([(k, c.source) for k, c in enumerate(nb.cells, 1)
                            if c.cell_type == "code" and check_id(c) is None and c.source.strip() not in given], labs)
    outcome = run_graded(nb, path.resolve().parent, timeout, limit, profile, leave_out, sandboxed)
    row.reason = outcome.reason
    code = [c for c in nb.cells if c.cell_type == "code"]
    for num in outcome.passed:
        cid = check_id(code[num]) if num < len(code) else None
        if cid in canonical:
            row.points[cid] = canonical[cid].metadata["slm_lab"].get("points", 1)
    for num, message in outcome.messages.items():
        cid = check_id(code[num]) if num < len(code) else None
        if cid in canonical:
            row.feedback[cid] = message
    return row


def gradebook_text(rows: list[Row], canonical: dict) -> str:
    """The CSV: file, one column per check id (points earned), total, max, reason, flags (the static scan's
    findings, for the instructor to read), feedback (what each failed check said)."""
    full = sum(c.metadata["slm_lab"].get("points", 1) for c in canonical.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", *canonical, "total", "max", "reason", "flags", "feedback"])
    for r in rows:
        feedback = " | ".join(f"{cid}: {msg}" for cid, msg in r.feedback.items())
        w.writerow([printable(r.file), *(r.points[c] for c in canonical), sum(r.points.values()), full,
                    printable(r.reason), printable("; ".join(r.flags)), printable(feedback)])
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
          profile: str = "smoke", sandboxed: bool = True) -> list[Row]:
    """Grade each submission (str, bytes or Path) against the solution's check cells; write the gradebook CSV
    to out after every row. `sandboxed=False` runs the kernels unconfined (the verdicts are still the grader's)."""
    paths = [Path(os.fsdecode(p)) for p in paths]
    out = Path(out)
    check_out(out, paths, solution)
    canonical, hidden = load_checks(solution)
    given = frozenset(c.source.strip() for c in build_lab(read_notebook(solution), solution.name, str(solution)).cells
                      if c.cell_type == "code")
    if sandboxed and sandbox.unavailable():
        raise SLMLabError(f"{sandbox.unavailable()}; to grade without the sandbox anyway, pass --no-sandbox.")
    rows: list[Row] = []
    for i, path in enumerate(paths, 1):
        t0 = time.perf_counter()
        try:
            row = grade_one(path, canonical, timeout, limit, profile, hidden, leave_out=(out,), sandboxed=sandboxed,
                            given=given)
        except Exception as exc:         # a bug, say: it costs this submission its row, not the batch its run
            text = str(exc).strip().splitlines()
            row = Row(printable(str(path)), {cid: 0 for cid in canonical},
                      f"grading failed ({type(exc).__name__}{': ' + text[0][:100] if text else ''})")
        row.reason = printable(row.reason)
        rows.append(row)
        write_text(out, gradebook_text(rows, canonical))
        flagged = f" [{len(row.flags)} flag{'s' * (len(row.flags) != 1)}]" if row.flags else ""
        print(f"[{i}/{len(paths)}] {row.file}: {sum(row.points.values()):g} points "
              f"({time.perf_counter() - t0:.0f} s){' — ' + row.reason if row.reason else ''}{flagged}", flush=True)
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
    rows = grade(paths, solution, out, args.timeout, args.notebook_timeout, args.profile,   # checks --out first
                 sandboxed=not args.no_sandbox)
    width = max(len("file"), *(len(r.file) for r in rows))
    print(f"\n{'file':<{width}}  {'score':>9}  reason")
    for r in rows:
        print(f"{r.file:<{width}}  {f'{sum(r.points.values()):g}/{full:g}':>9}  {r.reason}")
    print(f"gradebook: {printable(str(out))} ({len(rows)} submissions, lab {solution.stem})")
    return 0


def register(sub) -> None:
    p = sub.add_parser("grade", help="grade lab submissions into a gradebook CSV (sandboxed, judged by the grader)")
    p.add_argument("submissions", nargs="+", help="submitted .ipynb files")
    p.add_argument("--lab", required=True, help="the lab: a solution's name or a unique prefix (e.g. 02)")
    p.add_argument("--out", default="gradebook.csv", help="gradebook CSV to write (default gradebook.csv)")
    p.add_argument("--solutions", default=str(notebooks.ROOT / "solutions"),
                   help="solved labs (default: repo's solutions/)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per cell (default 300)")
    p.add_argument("--notebook-timeout", type=float, default=1800, help="seconds per notebook (default 1800)")
    p.add_argument("--profile", default="smoke", choices=("smoke", "full"),
                   help="SLM_LAB_PROFILE the submissions run with (default smoke)")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run the submissions' kernels unconfined (as you, with your files and network)")
    p.set_defaults(func=run)
