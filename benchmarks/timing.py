"""Shared by the benchmark scripts: median wall time of a call."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeat: int = 7, warmup: int = 1) -> float:
    """Median seconds of `repeat` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
