"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def _median_time(fn: Callable[[], object], repeat: int) -> float:
    return _median_times(fn, repeat)[0]


def _median_times(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds). CPU time barely moves when other processes load
    the machine, so it is the steadier number on a shared 2-core box; wall time is what users see."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)
