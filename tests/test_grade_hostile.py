"""Hostile submissions: grading one must change no grade, no file outside its scratch folder, and leave no
process behind.

Two kinds of attack, each planted in a real submission and graded by `slm-lab grade` itself:
- FORGERIES (issue 12 §2): an unsolved lab whose first cell arranges for its checks to "pass" without an
  answer. Each must still score 0 (and be flagged for the instructor).
- ESCAPES (§1): a solved lab whose first cell tries to reach outside its sandbox: change the installed
  package or the solutions, read and overwrite the next submission, kill the grader, reach the network,
  write to the host's /tmp, edit the gradebook later from a detached process. Each must fail: both
  submissions keep their full marks, every file outside scratch is as it was, the server sees no client,
  no process outlives grading.
"""
from __future__ import annotations

import copy
import hashlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from test_grade import FULL, IDS, NAME, _processes_with, code, read_gradebook, solution_nb

from slm_lab.course import grade, make_labs, notebooks, sandbox

pytestmark = pytest.mark.skipif(sandbox.unavailable() is not None, reason=str(sandbox.unavailable()))

FORGERIES = {
    "showtraceback": "get_ipython().showtraceback = lambda *a, **k: None",
    "custom_exc": "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)",
    "input_transformer": ("def _skip(lines):\n    return ['pass\\n'] if any('m00.check' in l for l in lines) else lines\n"
                          "get_ipython().input_transformers_cleanup.append(_skip)"),
    "shadow_module": ("class m00:\n    FIT_MODELS = {}\n    @staticmethod\n    def check_answer(*a, **k):\n"
                      "        print('✅ passed')\n    check_fits = check_answer"),
    "patched_fail": ("import slm_lab.checks as _c\nfrom slm_lab.checks import m00\n"
                     "m00.fail = _c.fail = lambda *a, **k: None"),
    "setattr_checks": ("import slm_lab.checks.m00 as _m\n"
                       "for _n in ('check_answer', 'check_fits'):\n    setattr(_m, _n, lambda *a, **k: None)"),
    "patched_compare": ("import math, torch\nmath.isclose = lambda *a, **k: True\n"
                        "torch.allclose = lambda *a, **k: True"),
    "lying_values": ("class _Always(float):\n    __eq__ = lambda s, o: True\n    __hash__ = float.__hash__\n"
                     "memory = ratio = _Always(0.0)\n"
                     "class _Yes(dict):\n    __eq__ = lambda s, o: True\n    keys = lambda s: {}.keys()\n"
                     "fits = _Yes()"),
}
# Flags the static scan must raise for each (the lying values use nothing it looks for).
FORGERY_FLAGS = {"showtraceback": "get_ipython", "custom_exc": "get_ipython", "input_transformer": "get_ipython",
                 "shadow_module": "defines m00", "patched_fail": "assigns m00.fail", "setattr_checks": "setattr",
                 "patched_compare": "assigns math.isclose", "lying_values": None}


def _with_first_cell(nb, source: str):
    nb = copy.deepcopy(nb)
    nb.cells.insert(1, code(source))           # after the imports cell
    return nb


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    root = tmp_path_factory.mktemp("forged")
    (root / "solutions").mkdir()
    sol = solution_nb()
    notebooks.write(sol, root / "solutions" / f"{NAME}.ipynb")
    lab = make_labs.build_lab(sol, f"{NAME}.ipynb", "fixture")
    subs = root / "subs"
    subs.mkdir()
    for name, source in FORGERIES.items():
        notebooks.write(_with_first_cell(lab, source), subs / f"{name}.ipynb")
    notebooks.write(lab, subs / "honest_unsolved.ipynb")
    out = root / "gradebook.csv"
    grade.grade(sorted(subs.glob("*.ipynb")), root / "solutions" / f"{NAME}.ipynb", out, timeout=60)
    return read_gradebook(out)


@pytest.mark.parametrize("attack", sorted(FORGERIES))
def test_a_forged_pass_earns_nothing(forged, attack):
    row = forged[f"{attack}.ipynb"]
    assert [row[c] for c in IDS] == ["0", "0", "0"], (attack, row)
    assert row["total"] == forged["honest_unsolved.ipynb"]["total"] == "0"
    if FORGERY_FLAGS[attack]:
        assert FORGERY_FLAGS[attack] in row["flags"], row["flags"]
    assert forged["honest_unsolved.ipynb"]["flags"] == ""


def test_a_forged_pass_on_tensors_earns_nothing(tmp_path):
    """The same forgeries on lab 02, whose checks compare tensors: patched torch.allclose, hidden errors."""
    sol_path = grade.find_lab("02", notebooks.ROOT / "solutions")
    lab = make_labs.build_lab(make_labs.read_notebook(sol_path), sol_path.name, "lab 02")
    attack = "\n".join([FORGERIES["patched_compare"], FORGERIES["showtraceback"], FORGERIES["custom_exc"]])
    notebooks.write(_with_first_cell(lab, attack), tmp_path / "forged_02.ipynb")
    rows = grade.grade([tmp_path / "forged_02.ipynb"], sol_path, tmp_path / "gb.csv", timeout=120)
    assert sum(rows[0].points.values()) == 0, rows[0]


# ------------------------------------------------------------------------------------------ escapes ----
def _tree_digest(*folders: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def _escape_cell(package: Path, solutions: Path, victim: Path, gradebook: Path, port: int, marker: str) -> str:
    """Every attempt in a try: the cell must run to the end, whatever is refused."""
    return f'''import os, socket, subprocess, sys
tried = []
def attempt(what, fn):
    try:
        fn()
        tried.append(what + ": done")
    except BaseException as exc:
        tried.append(what + ": " + type(exc).__name__)
assert os.getuid() != 0, "not sandboxed: refusing to run the kill attempt as root"
attempt("append to the checks", lambda: open({str(package / "checks" / "m00.py")!r}, "a").write("\\nfail = print\\n"))
attempt("rewrite the solution", lambda: open({str(solutions / (NAME + ".ipynb"))!r}, "w").write("{{}}"))
attempt("read the next submission", lambda: open({str(victim)!r}).read())
attempt("overwrite the next submission", lambda: open({str(victim)!r}, "w").write("{{}}"))
attempt("write the gradebook", lambda: open({str(gradebook)!r}, "a").write("pwned"))
attempt("write the host's /tmp", lambda: open("/tmp/slm-lab-pwned-{marker}", "w").write("x"))
attempt("reach the network", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"pwned"))
def kill_everyone():
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        if pid != os.getpid():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
attempt("kill the grader", kill_everyone)
# started after the kill attempt, so that only the end of grading can stop them
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4); open({str(gradebook)!r}, 'a').write('pwned')",
                  "{marker}"], start_new_session=True)
subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
print(tried)
'''


@pytest.fixture(scope="module")
def escaped(tmp_path_factory):
    import slm_lab

    root = tmp_path_factory.mktemp("escape")
    solutions = root / "solutions"
    solutions.mkdir()
    sol = solution_nb()
    notebooks.write(sol, solutions / f"{NAME}.ipynb")
    subs = root / "subs"
    subs.mkdir()
    victim, out = subs / "victim.ipynb", root / "gradebook.csv"
    notebooks.write(sol, victim)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    clients: list = []

    def serve():
        while not stop.is_set():
            try:
                clients.append(server.accept())
            except OSError:
                continue
    stop = threading.Event()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    marker = f"{os.getpid()}{time.time_ns() % 10**9}"
    package = Path(slm_lab.__file__).resolve().parent
    cell = _escape_cell(package, solutions, victim, out, server.getsockname()[1], marker)
    notebooks.write(_with_first_cell(sol, cell), subs / "attacker.ipynb")
    watched = (package, solutions, subs)
    before = _tree_digest(*watched)
    try:
        rows = grade.grade([subs / "attacker.ipynb", victim], solutions / f"{NAME}.ipynb", out, timeout=60)
        time.sleep(5)                         # the detached writer would have written by now
    finally:
        stop.set()
        thread.join()
        server.close()
    return {"rows": rows, "out": out, "before": before, "after": _tree_digest(*watched), "clients": clients,
            "marker": marker, "gradebook": out.read_text(encoding="utf-8")}


def test_an_escaping_submission_changes_no_grade(escaped):
    rows = read_gradebook(escaped["out"])
    assert list(rows) == ["attacker.ipynb", "victim.ipynb"]              # the grader lived to write both
    for name in rows:
        assert rows[name]["total"] == str(FULL) and rows[name]["reason"] == "", rows[name]


def test_an_escaping_submission_changes_no_file_outside_scratch(escaped):
    assert escaped["after"] == escaped["before"]      # package, solutions, submissions (the victim) untouched
    assert "pwned" not in escaped["gradebook"] and "pwned" not in escaped["out"].read_text(encoding="utf-8")
    assert not list(Path("/tmp").glob(f"slm-lab-pwned-{escaped['marker']}"))


def test_an_escaping_submission_reaches_no_network_and_leaves_no_process(escaped):
    assert escaped["clients"] == []
    assert _processes_with(escaped["marker"]) == []


def test_without_the_sandbox_grading_refuses_in_one_line(tmp_path, monkeypatch):
    sub = tmp_path / "s.ipynb"
    notebooks.write(solution_nb(), sub)
    sols = tmp_path / "solutions"
    sols.mkdir()
    notebooks.write(solution_nb(), sols / f"{NAME}.ipynb")
    monkeypatch.setattr(sandbox, "unavailable", lambda: "bwrap is not installed, so submissions cannot be sandboxed")
    from slm_lab.errors import SLMLabError

    with pytest.raises(SLMLabError, match="--no-sandbox") as err:
        grade.grade([sub], sols / f"{NAME}.ipynb", tmp_path / "gb.csv")
    assert "\n" not in str(err.value) and not (tmp_path / "gb.csv").exists()
    rows = grade.grade([sub], sols / f"{NAME}.ipynb", tmp_path / "gb.csv", sandboxed=False)   # the explicit choice
    assert sum(rows[0].points.values()) == FULL


def test_the_sandbox_confines_what_runs_in_it(tmp_path):
    """The sandbox itself: uid 65534 with no capabilities, / read-only, no network, its own processes only."""
    import subprocess

    probe = ("import os, socket, subprocess\n"
             "caps = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
             "print(os.getuid(), int(caps, 16), len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
             "r = subprocess.run(['mount', '-o', 'remount,rw', '/usr'], capture_output=True)\n"
             "print(r.returncode != 0, os.access('/usr', os.W_OK), os.path.exists(os.path.expanduser('~/.ssh')))\n"
             "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('net')\n"
             "except OSError:\n    print('no net')\n")
    sandbox.prepare(tmp_path)
    res = subprocess.run(sandbox.command([sys.executable, "-c", probe], work=tmp_path), capture_output=True,
                         text=True, timeout=120)
    lines = res.stdout.split("\n")
    uid, caps, procs = lines[0].split()
    assert (uid, caps) == (str(sandbox.UID), "0") and int(procs) <= 4, res.stdout + res.stderr
    assert lines[1] == "True False False" and lines[2] == "no net", res.stdout
