# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``TextProgress``: which lines it prints, and when, on a simulated clock."""

from types import SimpleNamespace

import pytest
import torch

from anomalib_diffad import callbacks
from anomalib_diffad.callbacks import TextProgress, format_duration, format_rate


class DiffAD:
    """Stands in for the LightningModule: only its class name is printed."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A settable ``time.monotonic`` for the callback module."""
    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    return now


def _trainer(**kwargs: object) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=True, sanity_checking=False, global_step=0, **kwargs)


def _messages(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """Printed lines without their ``HH:MM:SS`` prefix."""
    return [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]


def _train(progress: TextProgress, trainer: SimpleNamespace, clock: list[float], steps: int, seconds: float) -> None:
    module = DiffAD()
    progress.on_train_start(trainer, module)
    clock[0] += 50.0  # set-up before the first batch (feature statistics) must not count in the rate
    for step in range(1, steps + 1):
        progress.on_train_batch_start(trainer, module, None, step - 1)
        clock[0] += seconds
        trainer.global_step = step
        progress.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.5)}, None, step - 1)


def test_training_lines_every_interval_with_rate_and_time_left(
    clock: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    """100 steps of 2 s with a 30 s interval: a line after step 1, then every 15 steps, then the last step."""
    trainer = _trainer(
        estimated_stepping_batches=100,
        num_training_batches=10,
        max_epochs=10,
        max_steps=-1,
        datamodule=SimpleNamespace(name="MVTecAD", category="brick"),
    )
    _train(TextProgress(interval=30), trainer, clock, steps=100, seconds=2.0)
    lines = _messages(capsys)
    assert lines[0] == "DiffAD on MVTecAD/brick: training 100 steps (10 epochs x 10 batches)"
    assert [int(line.split()[2].split("/")[0]) for line in lines[1:]] == [1, 16, 31, 46, 61, 76, 91, 100]
    assert lines[2] == "train step 16/100 (2.0 s/step, ~2.8 min left), loss 0.5"
    assert lines[-1] == "train step 100/100 (2.0 s/step, took 3.3 min), loss 0.5"


def test_every_n_steps_comes_before_the_interval(clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    """With ``every_n_steps=4`` and fast steps (4 step/s), the step count triggers the lines."""
    trainer = _trainer(estimated_stepping_batches=10, num_training_batches=5, max_epochs=-1, max_steps=10)
    _train(TextProgress(interval=30, every_n_steps=4), trainer, clock, steps=10, seconds=0.25)
    lines = _messages(capsys)
    assert lines[0] == "DiffAD on data: training 10 steps"
    assert lines[1:] == [
        "train step 1/10 (4.0 step/s, ~2 s left), loss 0.5",
        "train step 5/10 (4.0 step/s, ~1 s left), loss 0.5",
        "train step 9/10 (4.0 step/s, ~0 s left), loss 0.5",
        "train step 10/10 (4.0 step/s, took 2 s), loss 0.5",
    ]


def test_testing_lines_and_summary(clock: list[float], capsys: pytest.CaptureFixture[str]) -> None:
    """Testing is announced with its batches, reports after the first one and ends with a summary line."""
    trainer = _trainer(num_test_batches=[4, 1])
    progress, module = TextProgress(interval=30), DiffAD()
    progress.on_test_start(trainer, module)
    for index in range(5):
        clock[0] += 10.0
        progress.on_test_batch_end(trainer, module, None, None, index)
    progress.on_test_end(trainer, module)
    assert _messages(capsys) == [
        "testing: 5 batches",
        "test batch 1/5 (10.0 s/batch, ~40 s left)",
        "test batch 4/5 (10.0 s/batch, ~10 s left)",
        "testing done (5 batches in 50 s)",
    ]


def test_silent_on_a_terminal_or_during_the_sanity_check(
    clock: list[float], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal Lightning's bar shows progress; the sanity check is not a stage of its own."""
    del clock
    sanity = _trainer(num_val_batches=[2])
    sanity.sanity_checking = True
    TextProgress().on_validation_start(sanity, DiffAD())
    monkeypatch.setattr(callbacks.sys.stdout, "isatty", lambda: True)
    TextProgress().on_test_start(_trainer(num_test_batches=[2]), DiffAD())
    TextProgress(only_when_redirected=False).on_test_start(_trainer(num_test_batches=[2]), DiffAD())
    assert _messages(capsys) == ["testing: 2 batches"]


def test_formats() -> None:
    """Durations switch units at 90 s and 90 min; rates below 1/s are given as seconds per unit."""
    assert [format_duration(s) for s in (4.4, 89, 150, 5400)] == ["4 s", "89 s", "2.5 min", "1.5 h"]
    assert [format_rate(r, "step") for r in (0.25, 2.14, 37.4)] == ["4.0 s/step", "2.1 step/s", "37 step/s"]
