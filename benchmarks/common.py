"""What the benchmark scripts share: the folder their JSON goes to.

A full run writes into benchmarks/results/, the committed results. A --quick run only checks that the
script works (tiny sizes, its numbers mean nothing), so it never writes there: it writes to
$SLM_LAB_RESULTS_DIR when that is set (the tests point it at a temporary folder), else to
slm_lab_benchmarks/ in the system's temporary directory. $SLM_LAB_RESULTS_DIR redirects a full run
too, e.g. to measure another machine without touching the committed numbers.

The scripts run as `python benchmarks/<name>.py`, which puts this folder on sys.path: `from common import ...`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

COMMITTED = Path(__file__).parent / "results"
ENV = "SLM_LAB_RESULTS_DIR"


def results_dir(quick: bool) -> Path:
    """The folder a run writes its JSON to (created): see the module docstring."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        path = Path(raw).expanduser()
    else:
        path = Path(tempfile.gettempdir()) / "slm_lab_benchmarks" if quick else COMMITTED
    if quick and path.resolve() == COMMITTED.resolve():
        raise SystemExit(f"{ENV}={raw!r} is the committed results folder, and a --quick run must not overwrite "
                         f"the real results; point {ENV} at another folder or unset it.")
    path.mkdir(parents=True, exist_ok=True)
    return path
