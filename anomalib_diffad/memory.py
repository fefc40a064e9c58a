# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Keep a run's memory near its live tensors: return freed buffers to the system, and no more DataLoader
workers than CPUs.

- glibc raises its mmap threshold after every large free (up to 32 MiB), so the buffers of later tensors come
  from the heap and stay there when freed: the process grows to several times its live tensors. Worse, every
  DataLoader worker is forked from that heap, and each page the main process writes afterwards is copied, so
  workers alive during training and validation pin a copy of it (measured without a config: 16 workers,
  about 5 GiB more). A fixed 1 MiB threshold (what ``MALLOC_MMAP_THRESHOLD_=1048576`` does, set at run time)
  maps each large buffer on its own and unmaps it when freed.
- anomalib's datamodules default to 8 workers; on a machine with fewer CPUs the extra workers only add
  memory (and torch's warning).

Example:
    >>> from anomalib_diffad.memory import cap_workers
    >>> from types import SimpleNamespace
    >>> datamodule = SimpleNamespace(num_workers=8)
    >>> cap_workers(datamodule, cpus=2)
    >>> datamodule.num_workers
    2
"""

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold."""
MMAP_THRESHOLD = 1 << 20


def release_freed_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB (no effect outside glibc); return whether it was set."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cap_workers(datamodule: object, cpus: int | None = None) -> None:
    """Lower a datamodule's ``num_workers`` to the available CPUs (``cpus``), with a log line."""
    workers = getattr(datamodule, "num_workers", None)
    cpus = available_cpus() if cpus is None else cpus
    if isinstance(workers, int) and workers > cpus:
        logger.info("DataLoader workers: %d -> %d, the CPUs available (each holds its own memory).", workers, cpus)
        datamodule.num_workers = cpus
