# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Torch threads that fit the cores other processes leave idle, so that shared cores slow training gracefully.

PyTorch's OpenMP threads spin while they wait for each other. When other processes keep the cores busy, a
thread that is not scheduled holds up all the others at every parallel region: on a 2-core machine (AVX-512
BF16) beside two busy processes, a training step of the feature preset at 128 px took 0.7 s with one thread,
and with two threads four steps did not finish in a minute, in bf16 and in fp32 alike
(benchmarks/speed/results/shared_cores.json). :func:`fit_threads_to_idle_cores` runs at the start of training:
unless ``OMP_NUM_THREADS`` is set, it measures the idle cores of this process's CPU affinity over a fraction of
a second and lowers torch's thread count to them (at least one), with a warning.

Example:
    >>> threads_for_idle_cores(threads=2, idle=0.3)
    1
    >>> threads_for_idle_cores(threads=2, idle=1.9)
    2
"""

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
IDLE_FIELDS = (3, 4)
"""Indices of ``idle`` and ``iowait`` among a ``cpuN`` line's times in ``/proc/stat``."""


def cpu_times(stat_text: str, cpus: Iterable[int]) -> dict[int, tuple[int, int]]:
    """``{cpu: (idle, total)}`` jiffies of the ``cpuN`` lines of ``/proc/stat`` text for the given CPUs."""
    wanted = {f"cpu{index}": index for index in cpus}
    times = {}
    for line in stat_text.splitlines():
        name, *values = line.split()
        if name in wanted:
            numbers = [int(value) for value in values[:8]]  # guest times are already counted in user and nice
            times[wanted[name]] = (sum(numbers[i] for i in IDLE_FIELDS), sum(numbers))
    return times


def idle_between(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Number of cores idle between two :func:`cpu_times` snapshots (each CPU's idle fraction, summed)."""
    idle = 0.0
    for cpu, (idle_after, total_after) in after.items():
        idle_before, total_before = before.get(cpu, (idle_after, total_after))
        elapsed = total_after - total_before
        idle += (idle_after - idle_before) / elapsed if elapsed > 0 else 1.0
    return idle


def idle_cores(interval: float = 0.25) -> float | None:
    """Cores of this process's affinity that stayed idle over ``interval`` seconds; ``None`` without ``/proc/stat``."""
    if not PROC_STAT.is_file() or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    before = cpu_times(PROC_STAT.read_text(), cpus)
    time.sleep(interval)
    return idle_between(before, cpu_times(PROC_STAT.read_text(), cpus))


def threads_for_idle_cores(threads: int, idle: float) -> int:
    """``threads``, lowered to the idle cores rounded to the nearest whole core, at least 1."""
    return max(1, min(threads, math.floor(idle + 0.5)))


def fit_threads_to_idle_cores(interval: float = 0.25) -> int:
    """Lower torch's intra-op threads to the idle cores, unless ``OMP_NUM_THREADS`` chose them; return the count."""
    threads = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS") or threads == 1:
        return threads
    idle = idle_cores(interval)
    if idle is None:
        return threads
    chosen = threads_for_idle_cores(threads, idle)
    if chosen < threads:
        torch.set_num_threads(chosen)
        logger.warning(
            "Only %.1f of this process's cores are idle (other processes share them): training with %d torch "
            "thread(s) instead of %d, because waiting threads on busy cores slow every step many times over. "
            "Set OMP_NUM_THREADS to choose the count yourself.",
            idle,
            chosen,
            threads,
        )
    return chosen
