"""What the grading sandbox costs: `slm-lab grade` on each solved lab, sandboxed and with --no-sandbox.

Each solved lab (solutions/, smoke profile, the course cache as it is) is graded `--repeats` times in each
mode, alternating, in this one process; the table gives the median seconds per notebook in each mode, the
ratio, and the points earned (a solved lab must earn full marks both ways). Labs 04-08 read module 02's
model from the course cache: run them once first (the test suite's or `slm-lab execute`) so it is there.
Prints a table and writes benchmarks/results/grading.json.

    python benchmarks/grading.py              # every solved lab, 3 repeats
    python benchmarks/grading.py --quick      # labs 00 and 01, 1 repeat: checks the script runs (JSON: see common.py)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import results_dir

from slm_lab.course import grade, notebooks, sandbox


def grade_once(solution: Path, sandboxed: bool) -> tuple[float, float, float]:
    """(seconds, points earned, points possible) for grading the solved lab against itself."""
    with tempfile.TemporaryDirectory() as d:
        sub = Path(d) / solution.name
        sub.write_bytes(solution.read_bytes())
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):            # grade's own progress line: not the table's
            rows = grade.grade([sub], solution, Path(d) / "gradebook.csv", timeout=600, limit=1800,
                               sandboxed=sandboxed)
        seconds = time.perf_counter() - t0
    canonical, _ = grade.load_checks(solution)
    full = sum(c.metadata["slm_lab"].get("points", 1) for c in canonical.values())
    return seconds, sum(rows[0].points.values()), full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if sandbox.unavailable() and not args.quick:
        raise SystemExit(f"{sandbox.unavailable()}: nothing to measure.")
    modes = (False,) if sandbox.unavailable() else (True, False)      # --quick still checks the script runs
    os.environ.setdefault("SLM_LAB_PROFILE", "smoke")
    labs = sorted((notebooks.ROOT / "solutions").glob("*.ipynb"))
    if args.quick:
        labs, args.repeats = labs[:2], 1
    rows = []
    print(f"{'lab':<32} {'sandboxed s':>11} {'unsandboxed s':>13} {'ratio':>6} {'points':>9}")
    for lab in labs:
        times: dict[bool, list[float]] = {True: [], False: []}
        earned = {}
        for _ in range(args.repeats):
            for mode in modes:                         # alternating, so drift on the machine hits both
                seconds, points, full = grade_once(lab, mode)
                times[mode].append(seconds)
                earned[mode] = points
        times[True] = times[True] or [float("nan")]
        earned.setdefault(True, float("nan"))
        row = {"lab": lab.stem, "sandboxed_s": statistics.median(times[True]),
               "unsandboxed_s": statistics.median(times[False]), "points_sandboxed": earned[True],
               "points_unsandboxed": earned[False], "points_max": full,
               "repeats_sandboxed_s": times[True], "repeats_unsandboxed_s": times[False]}
        row["ratio"] = row["sandboxed_s"] / row["unsandboxed_s"]
        rows.append(row)
        print(f"{lab.stem:<32} {row['sandboxed_s']:>11.2f} {row['unsandboxed_s']:>13.2f} {row['ratio']:>6.2f} "
              f"{f'{earned[True]:g}/{full:g}':>9}", flush=True)
    extra = [r["sandboxed_s"] - r["unsandboxed_s"] for r in rows]
    summary = {"median_ratio": statistics.median(r["ratio"] for r in rows),
               "median_extra_seconds": statistics.median(extra)}
    print(f"median over labs: sandboxed / unsandboxed = {summary['median_ratio']:.2f}, "
          f"extra {summary['median_extra_seconds']:+.2f} s per notebook")
    out = results_dir(args.quick) / "grading.json"
    out.write_text(json.dumps({"what": "seconds to grade each solved lab (smoke profile), sandboxed and not",
                               "date": datetime.date.today().isoformat(), "machine": platform.machine(),
                               "cpus": os.cpu_count(), "repeats": args.repeats, "quick": args.quick,
                               "sandbox": sandbox.describe(), "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
