"""Measuring attention honestly: peak memory on CPU, time on CPU and GPU.

Peak memory (CPU). torch's CPU tensors are invisible to tracemalloc and the CPU allocator keeps no
peak counter, so we measure what the operating system sees: the process's resident-set high-water
mark. All points run in ONE fresh Python process (no notebook state, no cached buffers) with glibc's
mmap threshold fixed at 32 KiB, so every tensor but the smallest is mapped on allocation and
unmapped on free, and one point cannot reuse another's freed memory. Per point: build q, k, v, run a tiny warm-up,
read the resident size (baseline), reset the high-water mark to it (`/proc/self/clear_refs`, Linux),
run attention once, read the high-water mark: peak = mark − baseline, which includes the output.
Where the reset is not available (macOS), each point gets its own process and the baseline is the
high-water mark after the warm-up. `expected_bytes` gives the analytical size to compare with.

Time: medians over repeats — `median_seconds` with perf_counter on CPU, `cuda_median_ms` with CUDA
events on a GPU (no triton.testing.do_bench, which needs a GPU and hides the method).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch

from ..errors import SLMLabError
from ..timing import median_seconds
from .naive import scores_bytes

MMAP_THRESHOLD = 32 * 1024      # bytes: every tensor above it gets its own mapping, returned on free
__all__ = ["IMPLS", "measure_peak_memory", "expected_bytes", "median_seconds", "cuda_median_ms",
           "log_log_slope", "hwm_reset_supported", "METHOD"]

IMPLS = ("naive", "tiled", "sdpa")
METHOD = ("resident-set high-water mark of a fresh process (reset per point with /proc/self/clear_refs), "
          "minus the resident size just before the call; glibc mmap threshold fixed at 32 KiB")

# The child: reads a JSON list of points on argv, prints one JSON line per point.
_CHILD = r"""
import gc, json, resource, sys, torch
import torch.nn.functional as F
from slm_lab.kernels import naive_attention, tiled_attention

def rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return None

def hwm():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

import os
PAGE = os.sysconf("SC_PAGE_SIZE")
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
for p in cfg["points"]:
    g = torch.Generator().manual_seed(0)
    shape = (p["batch"], p["heads"], p["n"], p["head_dim"])
    q, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    def run(q, k, v):
        if p["impl"] == "naive":
            return naive_attention(q, k, v, causal=p["causal"])
        if p["impl"] == "tiled":
            return tiled_attention(q, k, v, causal=p["causal"], block_q=p["block"], block_k=p["block"])
        return F.scaled_dot_product_attention(q, k, v, is_causal=p["causal"])
    tiny = [t[..., :8, :].contiguous() for t in (q, k, v)]
    run(*tiny); del tiny; gc.collect()
    base = rss()
    was_reset = reset_hwm()
    if not was_reset or base is None:
        base = hwm()
    out = run(q, k, v)
    peak = hwm()
    print(json.dumps({**p, "peak_bytes": max(0, peak - base), "reset": was_reset}), flush=True)
    del out, q, k, v, run; gc.collect()
"""


def hwm_reset_supported() -> bool:
    """True where the resident high-water mark can be reset (Linux), so points share one process."""
    return os.access("/proc/self/clear_refs", os.W_OK)


def measure_peak_memory(points: list[dict], threads: int = 1, timeout: float = 600.0) -> list[dict]:
    """Peak extra memory (bytes) of one attention call per point, measured in a fresh process.

    Each point: {"impl": "naive" | "tiled" | "sdpa", "n": tokens, and optionally "batch" (1),
    "heads" (1), "head_dim" (64), "causal" (False), "block" (128, tiled only)}. Returns the points
    with "peak_bytes" added (resident memory above the baseline, output included).
    """
    full = []
    for p in points:
        if p.get("impl") not in IMPLS:
            raise SLMLabError(f"measure_peak_memory: impl {p.get('impl')!r} is not one of {', '.join(IMPLS)}.")
        if not isinstance(p.get("n"), int) or p["n"] < 1:
            raise SLMLabError(f"measure_peak_memory: n={p.get('n')!r} must be a positive number of tokens.")
        full.append({"batch": 1, "heads": 1, "head_dim": 64, "causal": False, "block": 128, **p})
    groups = [full] if hwm_reset_supported() else [[p] for p in full]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "PYTHONHASHSEED": "0"}
    results = []
    for group in groups:
        arg = json.dumps({"threads": threads, "points": group})
        proc = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                              env=env, timeout=timeout)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SLMLabError(f"measure_peak_memory: the measuring process failed ({last}); "
                              "try smaller n or fewer heads.")
        results += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return results


def expected_bytes(impl: str, n: int, batch: int = 1, heads: int = 1, head_dim: int = 64,
                   block: int = 128, causal: bool = False) -> int:
    """Analytical peak of the tensors one call allocates (float32), output included.

    naive: the scores and their softmax live together — 2 · B·H·N² floats — plus the output (the
    causal mask, N² bools, is freed before the softmax allocates). tiled: the output and lse (linear
    in N) plus, for the current tile, ~3 (block × block) score/probability tensors and ~3
    (block × d) query/accumulator tensors (constant in N).
    """
    f32 = 4
    out = batch * heads * n * head_dim * f32
    if impl == "naive":
        return 2 * scores_bytes(batch, heads, n) + out
    if impl == "tiled":
        b = min(block, n)
        tiles = 3 * batch * heads * b * b * f32 + 3 * batch * heads * b * head_dim * f32
        return out + batch * heads * n * f32 + tiles
    raise SLMLabError(f"expected_bytes: no formula for impl {impl!r}; use 'naive' or 'tiled'.")



def cuda_median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 5) -> float:
    """Median GPU time (ms) of fn() with CUDA events, one event pair per run (GPU only)."""
    if not torch.cuda.is_available():
        raise SLMLabError("cuda_median_ms needs a CUDA GPU; on CPU use median_seconds.")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends, strict=True):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True))


def log_log_slope(ns: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(n): 2 for quadratic growth, 1 for linear."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if v > 0]
    if len(pts) < 2:
        raise SLMLabError("log_log_slope needs at least two points with positive values.")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
