# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Plain-text progress lines for runs whose output goes to a file (CI, ``nohup``, ``tee``).

Lightning's progress bar draws only on a terminal: redirected to a file, a long ``anomalib train`` prints
nothing between the model summary and the end. :class:`TextProgress` prints lines such as::

    17:27:16 DiffAD on MVTecAD/brick: training 120 steps (30 epochs x 4 batches)
    17:27:19 train step 1/120 (2.5 s/step, ~5.0 min left), loss 2.51
    17:27:51 train step 15/120 (2.3 s/step, ~4.0 min left), loss 1.191
    17:30:58 train step 120/120 (1.8 s/step, took 3.7 min), loss 0.9263
    17:30:58 validating: 1 batch
    17:31:05 validation done (1 batch in 7 s)
    17:31:05 testing: 4 batches
    17:31:13 test batch 1/4 (8.3 s/batch, ~25 s left)
    17:31:28 testing done (4 batches in 22 s)

The presets enable it; for any other run add ``--trainer.callbacks+=anomalib_diffad.callbacks.TextProgress``.

It is a plain ``Callback``, not a subclass of Lightning's ``ProgressBar``: a Trainer takes exactly one
``ProgressBar``, so a subclass would replace Lightning's bar on a terminal and make
``--trainer.enable_progress_bar false`` an error for every preset. As a callback it runs beside the bar, stays
silent where the bar draws, and counts optimizer steps over the whole run, where the bar counts one epoch's
batches.
"""

import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3.5 min"`` or ``"1.2 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_rate(per_second: float, noun: str) -> str:
    """``"2.1 step/s"``, or ``"4.2 s/step"`` below one per second."""
    if per_second < 1:
        return f"{1 / per_second:.1f} s/{noun}" if per_second > 0 else f"0 {noun}/s"
    return f"{per_second:.1f} {noun}/s" if per_second < 10 else f"{per_second:.0f} {noun}/s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}es" if noun.endswith("ch") else f"{count} {noun}s"


def _finite_total(*counts: float) -> int | None:
    """The sum of Lightning's batch counts, ``None`` when one is unknown (an iterable dataset)."""
    total = sum(counts)
    return int(total) if math.isfinite(total) else None


@dataclass
class _Stage:
    """Counting state of one running stage (training steps or evaluation batches)."""

    unit: str
    total: int | None
    line_at_end: bool  # evaluation stages end with their own summary line instead
    start_time: float
    start_count: int
    count: int
    printed_time: float
    printed_count: int


class TextProgress(Callback):
    """Print what the run is doing as plain, flushed lines that reach a log file.

    Each stage (training, validation, test, prediction) is announced with its number of steps or batches.
    Within it, a line is printed after the first step or batch, then whenever ``interval`` seconds or
    ``every_n_steps`` steps have passed since the last line (whichever comes first): the count done of the
    total, the rate and the estimated time left (training lines also give the step's loss). Training ends
    with a line for its last step, an evaluation with its number of batches and duration. Only rank 0 prints.

    Args:
        interval: Seconds between two lines within a stage.
        every_n_steps: Also print every this many training steps or evaluation batches (``0``: by time only).
        only_when_redirected: Print nothing when stdout is a terminal, where Lightning's progress bar shows.
    """

    def __init__(self, interval: float = 30.0, every_n_steps: int = 0, only_when_redirected: bool = True) -> None:
        super().__init__()
        self.interval = interval
        self.every_n_steps = every_n_steps
        self.only_when_redirected = only_when_redirected
        self._stage: _Stage | None = None
        self._training_stage: _Stage | None = None  # kept while a validation inside ``fit`` runs

    def _active(self, trainer: Trainer) -> bool:
        redirected = not sys.stdout.isatty()
        return trainer.is_global_zero and not trainer.sanity_checking and (redirected or not self.only_when_redirected)

    @staticmethod
    def _print(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)  # noqa: T201

    def _begin(self, unit: str, total: int | None, line_at_end: bool, count: int = 0) -> None:
        now = time.monotonic()
        self._stage = _Stage(unit, total, line_at_end, now, count, count, now, count)

    def _advance(self, count: int, suffix: str = "") -> None:
        """Print a progress line for ``count`` steps/batches done if one is due."""
        stage = self._stage
        if stage is None or count == stage.count:
            return
        stage.count = count
        now = time.monotonic()
        last = count == stage.total
        if last and not stage.line_at_end:
            return
        first = stage.printed_count == stage.start_count
        by_steps = self.every_n_steps > 0 and count - stage.printed_count >= self.every_n_steps
        if not (first or last or by_steps or now - stage.printed_time >= self.interval):
            return
        elapsed = max(now - stage.start_time, 1e-9)
        rate = (count - stage.start_count) / elapsed
        of_total = f"{count}/{stage.total}" if stage.total is not None else str(count)
        if last:
            timing = f"took {format_duration(elapsed)}"
        elif stage.total is not None:
            timing = f"~{format_duration((stage.total - count) / rate)} left"
        else:
            timing = "total unknown"
        self._print(f"{stage.unit} {of_total} ({format_rate(rate, stage.unit.split()[-1])}, {timing}){suffix}")
        stage.printed_time, stage.printed_count = now, count

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Announce the run (model, data, category) and its number of optimizer steps."""
        if not self._active(trainer):
            return
        datamodule = getattr(trainer, "datamodule", None)
        data = getattr(datamodule, "name", type(datamodule).__name__) if datamodule is not None else "data"
        category = getattr(datamodule, "category", None)
        where = f"{data}/{category}" if category else data
        total = _finite_total(trainer.estimated_stepping_batches)
        batches = _finite_total(trainer.num_training_batches)
        plan = f"{total} steps" if total is not None else "an unknown number of steps"
        if batches and trainer.max_epochs and trainer.max_epochs > 0 and trainer.max_steps == -1:
            plan += f" ({trainer.max_epochs} epochs x {_plural(batches, 'batch')})"
        self._print(f"{type(pl_module).__name__} on {where}: training {plan}")
        self._stage = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        """Start the clock at the first batch, so that set-up work before it does not lower the rate."""
        del pl_module, batch, batch_idx
        if self._active(trainer) and self._stage is None:
            self._begin("train step", _finite_total(trainer.estimated_stepping_batches), True, trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        """Print a line with the optimizer steps done, if one is due."""
        del pl_module, batch, batch_idx
        if not self._active(trainer):
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        suffix = f", loss {float(loss):.4g}" if isinstance(loss, torch.Tensor) and loss.numel() == 1 else ""
        self._advance(trainer.global_step, suffix)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the training stage (a later ``fit`` starts its own)."""
        del trainer, pl_module
        self._stage = None

    def _evaluation_start(self, trainer: Trainer, verb: str, unit: str, counts: list[float]) -> None:
        if not self._active(trainer):
            return
        total = _finite_total(*counts)
        self._print(f"{verb}: {_plural(total, 'batch') if total is not None else 'unknown number of batches'}")
        self._training_stage, self._stage = self._stage, None
        self._begin(unit, total, line_at_end=False)

    def _evaluation_batch_end(self, trainer: Trainer) -> None:
        if self._active(trainer) and self._stage is not None:
            self._advance(self._stage.count + 1)

    def _evaluation_end(self, trainer: Trainer, noun: str) -> None:
        if not self._active(trainer) or self._stage is None:
            return
        stage = self._stage
        took = format_duration(time.monotonic() - stage.start_time)
        self._print(f"{noun} done ({_plural(stage.count, 'batch')} in {took})")
        self._stage = self._training_stage
        self._training_stage = None

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Announce validation (calibration of the fusion and the thresholds) and its batches."""
        del pl_module
        self._evaluation_start(trainer, "validating", "validation batch", trainer.num_val_batches)

    def on_validation_batch_end(self, trainer: Trainer, *args: object, **kwargs: object) -> None:
        """Count one validation batch."""
        del args, kwargs
        self._evaluation_batch_end(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Report the validation's duration."""
        del pl_module
        self._evaluation_end(trainer, "validation")

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Announce testing and its batches."""
        del pl_module
        self._evaluation_start(trainer, "testing", "test batch", trainer.num_test_batches)

    def on_test_batch_end(self, trainer: Trainer, *args: object, **kwargs: object) -> None:
        """Count one test batch."""
        del args, kwargs
        self._evaluation_batch_end(trainer)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Report the test's duration."""
        del pl_module
        self._evaluation_end(trainer, "testing")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Announce prediction and its batches."""
        del pl_module
        self._evaluation_start(trainer, "predicting", "predict batch", trainer.num_predict_batches)

    def on_predict_batch_end(self, trainer: Trainer, *args: object, **kwargs: object) -> None:
        """Count one prediction batch."""
        del args, kwargs
        self._evaluation_batch_end(trainer)

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Report the prediction's duration."""
        del pl_module
        self._evaluation_end(trainer, "prediction")
