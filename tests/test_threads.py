# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Torch threads fitted to the idle cores: /proc/stat arithmetic, the rounding rule, and who decides."""

import logging

import pytest
import torch

from anomalib_diffad import threads
from anomalib_diffad.threads import cpu_times, fit_threads_to_idle_cores, idle_between, threads_for_idle_cores

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
    monkeypatch.setattr(threads, "idle_cores", lambda interval=0.25: 1.8)
    assert fit_threads_to_idle_cores() == 2 and torch.get_num_threads() == 2
    monkeypatch.setattr(threads, "idle_cores", lambda interval=0.25: 0.3)
    with caplog.at_level(logging.WARNING, logger="anomalib_diffad.threads"):
        assert fit_threads_to_idle_cores() == 1
    assert torch.get_num_threads() == 1
    assert "training with 1 torch thread(s) instead of 2" in caplog.text
    assert "OMP_NUM_THREADS" in caplog.text
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert fit_threads_to_idle_cores() == 2 and torch.get_num_threads() == 2


def test_idle_cores_measures_this_machine() -> None:
    """On Linux the measurement is a number of cores between 0 and the affinity's size."""
    idle = threads.idle_cores(0.05)
    if idle is None:
        pytest.skip("no /proc/stat")
    assert 0.0 <= idle <= len(threads.os.sched_getaffinity(0)) + 1e-6


@pytest.mark.usefixtures("two_threads")
def test_training_start_fits_the_threads_and_its_end_restores_them(
    monkeypatch: pytest.MonkeyPatch, tiny_model_args: dict,
) -> None:
    """DiffAD.on_fit_start fits the threads to the idle cores; on_fit_end gives back the count it found, so
    testing after training sums floats as a new process would."""
    from types import SimpleNamespace

    from anomalib_diffad import DiffAD, lightning_model

    calls = []
    monkeypatch.setattr(lightning_model, "fit_threads_to_idle_cores", lambda: calls.append(torch.set_num_threads(1)))
    model = DiffAD(**(tiny_model_args | {"pretrained_weights": None}))
    model._trainer = SimpleNamespace(datamodule=None)  # noqa: SLF001
    model.on_fit_start()
    assert calls == [None]
    assert torch.get_num_threads() == 1
    model.on_fit_end()
    assert torch.get_num_threads() == 2
