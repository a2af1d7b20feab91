"""Wall-clock timing for benchmarks and notebooks: the median over repeats, after warm-up runs.

The median, not the mean: this machine is shared, and one slow run (another process, a page fault)
should not move the number we report.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed calls (CPU; on a GPU,
    synchronise inside fn or use CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
