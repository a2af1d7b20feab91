"""Every benchmarks/*.py runs in its --quick form: it exits 0, prints its table and writes its JSON — with the
top-level keys of the full run's committed result — into the folder SLM_LAB_RESULTS_DIR names, never over
benchmarks/results/. A new benchmark script is picked up by the glob; a new helper module belongs in HELPERS."""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
COMMITTED = BENCH / "results"
HELPERS = {"common.py"}                 # imported by the scripts, not run
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name not in HELPERS)


def load_common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_hashes() -> dict[str, str]:
    """Every file under benchmarks/results/ (a new one counts as a change too) → its SHA-256."""
    return {str(p.relative_to(COMMITTED)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(COMMITTED.rglob("*")) if p.is_file()}


def is_number(token: str) -> bool:
    try:
        float(token.strip("%×x").replace(",", ""))
        return True
    except ValueError:
        return False


def longest_table(text: str) -> int:
    """The most consecutive lines that each hold at least three numbers: the rows of a printed table."""
    best = run = 0
    for line in text.splitlines():
        run = run + 1 if sum(is_number(t) for t in line.split()) >= 3 else 0
        best = max(best, run)
    return best


def test_the_scripts_are_found():
    assert {"attention", "deploy", "distill", "latency", "quantize", "train_speed"} <= {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_quick(script, tmp_path, tmp_cache):
    results = tmp_path / "results"
    # tmp_cache has set SLM_LAB_CACHE in os.environ: the `small` model a benchmark needs is trained (smoke
    # profile, seconds) into the test's cache, never read from or written to the user's.
    env = {**os.environ, "SLM_LAB_PROFILE": "smoke", "SLM_LAB_RESULTS_DIR": str(results)}
    before = committed_hashes()
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    seconds = time.perf_counter() - t0
    print(f"{script.name} --quick: {seconds:.1f} s")
    assert res.returncode == 0, f"{script.name} --quick failed:\n{res.stderr[-3000:]}"
    assert committed_hashes() == before, f"{script.name} --quick changed benchmarks/results/"
    assert longest_table(res.stdout) >= 2, f"{script.name} --quick printed no table:\n{res.stdout[-2000:]}"

    written = {p.name: json.loads(p.read_text()) for p in results.glob("*.json")}
    assert written, f"{script.name} --quick wrote no JSON to {results}"
    assert all(isinstance(v, dict) for v in written.values())
    # The full run's committed result(s): <script>.json or <script>_*.json (attention writes attention_cpu.json).
    mine = {p.name for p in COMMITTED.glob("*.json") if p.stem == script.stem or p.stem.startswith(script.stem + "_")}
    if mine:
        assert mine & written.keys(), f"{script.name} --quick wrote {sorted(written)}, the full run {sorted(mine)}"
    for name in mine & written.keys():
        full = json.loads((COMMITTED / name).read_text())
        missing = full.keys() - written[name].keys()
        assert not missing, f"{name}: the quick run lacks the full run's keys {sorted(missing)}"


def test_quick_results_never_go_to_the_committed_folder(monkeypatch, tmp_path):
    common = load_common()
    monkeypatch.delenv(common.ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))         # where a quick run goes by default
    assert common.results_dir(quick=False) == common.COMMITTED
    assert common.results_dir(quick=True) == tmp_path / "slm_lab_benchmarks"
    monkeypatch.setenv(common.ENV, str(tmp_path / "out"))
    assert common.results_dir(quick=True) == common.results_dir(quick=False) == tmp_path / "out"
    assert (tmp_path / "out").is_dir()
    monkeypatch.setenv(common.ENV, str(COMMITTED))
    with pytest.raises(SystemExit, match="must not overwrite"):
        common.results_dir(quick=True)
