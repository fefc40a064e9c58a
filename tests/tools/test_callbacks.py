# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The process callbacks of ``diffad_tools.callbacks``: threads fitted to the idle cores (/proc/stat arithmetic,
the rounding rule, who decides, restoring), freed buffers returned to the system, capped DataLoader workers,
and the removal of a failed run's result folder."""

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from diffad_tools import callbacks
from diffad_tools.callbacks import (
    CapWorkers,
    FailedRunCleanup,
    IdleCoreThreads,
    cpu_times,
    fit_threads_to_idle_cores,
    idle_between,
    remove_run_folder,
    threads_for_idle_cores,
)

STAT_BEFORE = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 300 0 0 0 0 0 0
cpu1 200 0 50 300 0 0 0 0 0 0
cpu2 0 0 0 1000 0 0 0 0 0 0
intr 12345
"""
# over the interval, cpu0: 100 busy + 0 idle jiffies, cpu1: 50 busy + 40 idle + 10 iowait, cpu2: all idle
STAT_AFTER = """cpu  450 0 100 740 10 0 0 0 0 0
cpu0 180 0 70 300 0 0 0 0 0 0
cpu1 230 0 70 340 10 0 0 0 0 0
cpu2 0 0 0 1100 0 0 0 0 0 0
"""


def test_idle_cores_of_the_affinity_from_proc_stat() -> None:
    """Each CPU's idle fraction (idle + iowait jiffies over all jiffies) summed over the chosen CPUs only."""
    before, after = cpu_times(STAT_BEFORE, [0, 1]), cpu_times(STAT_AFTER, [0, 1])
    assert before == {0: (300, 450), 1: (300, 550)}
    assert idle_between(before, after) == pytest.approx(0.0 + 0.5)
    assert idle_between(cpu_times(STAT_BEFORE, [0, 1, 2]), cpu_times(STAT_AFTER, [0, 1, 2])) == pytest.approx(1.5)


@pytest.mark.parametrize(("idle", "expected"), [(0.0, 1), (0.4, 1), (1.6, 2), (2.0, 2), (7.5, 2)])
def test_threads_follow_the_idle_cores(idle: float, expected: int) -> None:
    """Two threads drop to one when less than about one and a half cores are idle; never above the request."""
    assert threads_for_idle_cores(2, idle) == expected


@pytest.fixture
def two_threads() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("two_threads")
def test_busy_cores_lower_the_threads_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without OMP_NUM_THREADS, busy cores lower torch's threads and say how to choose them; with it, the
    user's count stays; idle cores keep it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(callbacks, "idle_cores", lambda interval=0.25: 1.8)
    assert fit_threads_to_idle_cores() == 2
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(callbacks, "idle_cores", lambda interval=0.25: 0.3)
    with caplog.at_level(logging.WARNING, logger="diffad_tools.callbacks"):
        assert fit_threads_to_idle_cores() == 1
    assert torch.get_num_threads() == 1
    assert "training with 1 torch thread(s) instead of 2" in caplog.text
    assert "OMP_NUM_THREADS" in caplog.text
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fit_threads_to_idle_cores() == 2
    assert torch.get_num_threads() == 2


def test_idle_cores_measures_this_machine() -> None:
    """On Linux the measurement is a number of cores between 0 and the affinity's size."""
    idle = callbacks.idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat")
    assert 0.0 <= idle <= len(callbacks.os.sched_getaffinity(0)) + 1e-6


@pytest.mark.usefixtures("two_threads")
def test_idle_core_threads_fits_the_threads_for_the_fit_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """``IdleCoreThreads`` lowers the threads at the fit's start, measuring over its ``interval``; the fit's end,
    or its failure, gives back the count it found, so testing after training sums floats as a new process
    would."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    intervals = []
    monkeypatch.setattr(callbacks, "idle_cores", lambda interval: intervals.append(interval) or 0.3)
    callback, trainer = IdleCoreThreads(interval=0.1), SimpleNamespace()
    callback.on_fit_start(trainer, None)
    assert intervals == [0.1]
    assert torch.get_num_threads() == 1
    callback.on_fit_end(trainer, None)
    assert torch.get_num_threads() == 2
    callback.on_fit_start(trainer, None)
    assert torch.get_num_threads() == 1
    callback.on_exception(trainer, None, RuntimeError("failed"))
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    callback.on_exception(trainer, None, RuntimeError("after the fit"))  # nothing to restore any more
    assert torch.get_num_threads() == 1


RELEASED_MIB = """
import ctypes, ctypes.util, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "callback":  # the default needs no import (of torch and Lightning)
    from diffad_tools.callbacks import ReleaseFreedMemory
    ReleaseFreedMemory().setup(None, None, "fit")
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
def touched(size):
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)
    return pointer
libc.free(touched(8 << 20))  # a large free: glibc raises its mmap threshold above the next buffers
buffers = [touched(4 << 20) for _ in range(40)]
before = rss_mib()
for pointer in buffers[:-1]:  # the last one stays: the heap cannot shrink from its top
    libc.free(pointer)
print(before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_release_freed_memory_returns_freed_buffers_to_the_system() -> None:
    """After a large free, glibc keeps 39 freed 4 MiB buffers (156 MiB) in the process; once
    ``ReleaseFreedMemory`` has set up a stage, they go back to the system when freed."""

    def released(mode: str) -> float:
        command = [sys.executable, "-c", RELEASED_MIB, mode]
        return float(subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout)

    assert released("default") < 40
    assert released("callback") > 120


def test_cap_workers_lowers_the_datamodule_workers_to_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 workers on 2 CPUs become 2 (or ``max_workers``); fewer stay; no datamodule, nothing to do."""
    monkeypatch.setattr(callbacks, "available_cpus", lambda: 2)
    datamodule = SimpleNamespace(num_workers=8)
    CapWorkers().setup(SimpleNamespace(datamodule=datamodule), None, "fit")
    assert datamodule.num_workers == 2
    datamodule = SimpleNamespace(num_workers=8)
    CapWorkers(max_workers=3).setup(SimpleNamespace(datamodule=datamodule), None, "test")
    assert datamodule.num_workers == 3
    datamodule = SimpleNamespace(num_workers=1)
    CapWorkers().setup(SimpleNamespace(datamodule=datamodule), None, "fit")
    assert datamodule.num_workers == 1
    CapWorkers().setup(SimpleNamespace(datamodule=None), None, "predict")


def _versions(tmp_path: Path, *names: str) -> Path:
    category = tmp_path / "results" / "DiffAD" / "MVTecAD" / "brick"
    for name in names:
        (category / name).mkdir(parents=True)
    return category


def test_remove_run_folder_relinks_latest_and_keeps_checkpoints(tmp_path: Path) -> None:
    """The failed run's ``v1`` goes, ``latest`` points at ``v0`` again; a version with a checkpoint stays."""
    category = _versions(tmp_path, "v0/weights/lightning", "v1")
    (category / "v0" / "weights" / "lightning" / "model.ckpt").write_bytes(b"weights")
    (category / "v1" / "config.yaml").write_text("model: DiffAD\n")
    (category / "latest").symlink_to(category / "v1", target_is_directory=True)
    assert remove_run_folder(category / "latest", "DiffAD")
    assert sorted(path.name for path in category.iterdir()) == ["latest", "v0"]
    assert (category / "latest").resolve() == category / "v0"
    assert not remove_run_folder(category / "v0", "DiffAD")  # holds a checkpoint
    assert (category / "v0" / "weights" / "lightning" / "model.ckpt").exists()


def test_remove_only_run_folder_removes_its_empty_parents_up_to_the_model(tmp_path: Path) -> None:
    """The only version goes with ``latest`` and the empty category, dataset and model folders; the root stays.
    A folder outside anomalib's version layout is never removed."""
    category = _versions(tmp_path, "v0")
    (category / "latest").symlink_to(category / "v0", target_is_directory=True)
    assert remove_run_folder(category / "v0", "DiffAD")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "results"]
    mine = tmp_path / "my_output"
    mine.mkdir()
    assert not remove_run_folder(mine, "DiffAD")
    assert mine.is_dir()


def test_failed_run_cleanup_removes_only_a_fit_without_steps(tmp_path: Path) -> None:
    """A fit that fails at step 0 loses its version folder; one that fails after a step, or a failed test,
    keeps it."""
    category = _versions(tmp_path, "v0", "v1")
    module = SimpleNamespace(name="DiffAD")

    def trainer(version: str, step: int, fn: TrainerFn = TrainerFn.FITTING) -> SimpleNamespace:
        state = SimpleNamespace(fn=fn)
        return SimpleNamespace(state=state, is_global_zero=True, default_root_dir=category / version, global_step=step)

    error = RuntimeError("failed")
    FailedRunCleanup().on_exception(trainer("v1", 3), module, error)
    FailedRunCleanup().on_exception(trainer("v1", 0, TrainerFn.TESTING), module, error)
    assert sorted(path.name for path in category.iterdir()) == ["v0", "v1"]
    FailedRunCleanup().on_exception(trainer("v1", 0), module, error)
    assert sorted(path.name for path in category.iterdir()) == ["v0"]
