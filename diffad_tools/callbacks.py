# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Opt-in Lightning callbacks that manage the training process around a model: threads, memory, run folders.

The model computes; how the process shares its cores, hands memory back and cleans up after a failed start is
the run's choice. Each callback takes care of one concern, for any anomalib model:

- :class:`IdleCoreThreads`: torch threads fitted to the cores other processes leave idle, during a fit.
- :class:`ReleaseFreedMemory`: glibc returns freed tensor buffers to the system.
- :class:`CapWorkers`: no more DataLoader workers than CPUs.
- :class:`FailedRunCleanup`: a fit that fails before its first step leaves no result folder behind.

The CPU presets (``configs/diffad*.yaml``) list the ones that pay there; on the command line add them with
``--trainer.callbacks+=diffad_tools.callbacks.CapWorkers`` (and so on), in Python with
``Engine(callbacks=[...])``.

Example:
    >>> threads_for_idle_cores(threads=2, idle=0.3)
    1
    >>> from types import SimpleNamespace
    >>> datamodule = SimpleNamespace(num_workers=8)
    >>> cap_workers(datamodule, cpus=2)
    >>> datamodule.num_workers
    2
"""

import ctypes
import ctypes.util
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- #
# Threads
# --------------------------------------------------------------------------- #
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


class IdleCoreThreads(Callback):
    """Train with as many torch threads as there are idle cores; give the count back when the fit ends.

    PyTorch's OpenMP threads spin while they wait for each other. When other processes keep the cores busy, a
    thread that is not scheduled holds up all the others at every parallel region: on a 2-core machine
    (AVX-512 BF16) beside two busy processes, a training step of the feature preset at 128 px took 0.7 s with
    one thread, and with two threads four steps did not finish in a minute, in bf16 and in fp32 alike
    (benchmarks/speed/results/shared_cores.json). At the start of a fit, unless ``OMP_NUM_THREADS`` is set,
    this measures the idle cores of the process's CPU affinity over ``interval`` seconds and lowers torch's
    thread count to them (at least one), with a warning. When the fit ends (or fails), the count from before
    is restored: testing and scoring then sum floats as a new process would, so they give the same scores as
    ``anomalib test`` on the checkpoint.

    Args:
        interval: Seconds over which the idle cores are measured.
    """

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__()
        self.interval = interval
        self._threads_before: int | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Remember torch's thread count, then fit it to the idle cores."""
        del trainer, pl_module
        self._threads_before = torch.get_num_threads()
        fit_threads_to_idle_cores(self.interval)

    def _restore(self) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Give torch back the thread count it had before the fit."""
        del trainer, pl_module
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Give torch back its thread count after a failed fit too."""
        del trainer, pl_module, exception
        self._restore()


# --------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------- #
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


class ReleaseFreedMemory(Callback):
    """Keep the process near its live tensors: glibc hands every freed buffer of 1 MiB or more back at once.

    glibc raises its mmap threshold after every large free (up to 32 MiB), so the buffers of later tensors come
    from the heap and stay there when freed: the process grows to several times its live tensors. Worse, every
    DataLoader worker is forked from that heap, and each page the main process writes afterwards is copied, so
    workers alive during training and validation pin a copy of it (measured for ``anomalib train --model DiffAD``
    without a config, 16 DataLoader workers: about 5 GiB more). A fixed 1 MiB threshold maps
    each large buffer on its own and unmaps it when freed. It is what ``MALLOC_MMAP_THRESHOLD_=1048576`` does,
    set at the ``setup`` of every stage (before any DataLoader worker starts) for the rest of the process; no
    effect outside glibc.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Fix glibc's mmap threshold at 1 MiB."""
        del trainer, pl_module, stage
        release_freed_buffers()


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cap_workers(datamodule: object, cpus: int | None = None) -> None:
    """Lower a datamodule's ``num_workers`` to ``cpus`` (default: the CPUs available), with a log line."""
    workers = getattr(datamodule, "num_workers", None)
    cpus = available_cpus() if cpus is None else cpus
    if isinstance(workers, int) and workers > cpus:
        logger.info("DataLoader workers: %d -> %d, the CPUs available (each holds its own memory).", workers, cpus)
        datamodule.num_workers = cpus


class CapWorkers(Callback):
    """No more DataLoader workers than CPUs: lower the datamodule's ``num_workers`` when a stage is set up.

    anomalib's datamodules default to 8 workers; on a machine with fewer CPUs the extra workers add only
    memory (each is a process with its own copy of what it touches) and torch's warning about them.

    Args:
        max_workers: The most workers to keep (``None``: the CPUs this process may run on).
    """

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__()
        self.max_workers = max_workers

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Cap the Trainer's datamodule's workers, before its DataLoaders are built."""
        del pl_module, stage
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            cap_workers(datamodule, self.max_workers)


# --------------------------------------------------------------------------- #
# Result folders
# --------------------------------------------------------------------------- #
VERSION_PATTERN = re.compile(r"v\d+")


def remove_run_folder(folder: Path | str, model_name: str) -> bool:
    """Remove an anomalib version folder ``.../<model_name>/<dataset>/<category>/v<N>`` that holds no checkpoint.

    ``latest`` is pointed at the newest remaining version (or removed), and the empty parents up to the
    ``model_name`` folder are removed.

    Returns:
        Whether the folder was removed (``False``: not a version folder, or it holds a checkpoint).
    """
    version = Path(folder).resolve()
    if not VERSION_PATTERN.fullmatch(version.name) or model_name not in version.parts or any(version.rglob("*.ckpt")):
        return False
    parent = version.parent
    latest = parent / "latest"
    relink = latest.is_symlink() and latest.resolve() == version
    shutil.rmtree(version)
    if relink:
        latest.unlink()
        remaining = sorted(
            (path for path in parent.iterdir() if path.is_dir() and VERSION_PATTERN.fullmatch(path.name)),
            key=lambda path: int(path.name[1:]),
        )
        if remaining:
            latest.symlink_to(remaining[-1], target_is_directory=True)
    while not any(parent.iterdir()):
        parent.rmdir()
        if parent.name == model_name:
            break
        parent = parent.parent
    return True


class FailedRunCleanup(Callback):
    """Remove the result folder of a fit that fails before its first optimizer step.

    anomalib's ``Engine.fit``/``train`` creates ``<default_root_dir>/<model>/<dataset>/<category>/v<N>`` (and
    points ``latest`` at it) before Lightning checks the data, so every attempt that stops on a missing folder
    or a broken image leaves one more empty version behind. On an exception during a fit with no training step
    taken, this removes that folder (the Trainer's ``default_root_dir``) unless it holds a checkpoint, points
    ``latest`` back at the newest remaining version, and removes the category, dataset and model folders if
    they are left empty. A run that fails later (or a resumed one, which has taken steps) keeps its folder, and
    the log names it. Only global rank 0 removes.
    """

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Remove the folder of a fit that failed before its first step, or say where the partial output is."""
        del exception
        if trainer.state.fn != TrainerFn.FITTING or not trainer.is_global_zero:
            return
        folder = Path(trainer.default_root_dir)
        if trainer.global_step == 0 and remove_run_folder(folder, getattr(pl_module, "name", type(pl_module).__name__)):
            logger.info("The run failed before its first training step: removed its result folder %s.", folder)
        elif folder.is_dir():
            logger.info("The run failed; its partial output (checkpoints, images, logs) is in %s.", folder)
