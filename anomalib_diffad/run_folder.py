# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Remove the result folder of a training run that fails before its first step.

anomalib's ``Engine.fit``/``train`` creates ``<default_root_dir>/<model>/<dataset>/<category>/v<N>`` (and points
``latest`` at it) before Lightning checks the data, so every attempt that stops on a missing folder or a broken
image used to leave one more empty version behind. :class:`FailedRunCleanup` (one of DiffAD's callbacks) removes
that folder when a fit fails before its first optimizer step, points ``latest`` back at the newest remaining
version, and removes the category, dataset and model folders if they are left empty. A run that fails later
keeps its folder, and the log names it.

Example:
    >>> from anomalib_diffad.run_folder import FailedRunCleanup
    >>> FailedRunCleanup().state_key
    'FailedRunCleanup'
"""

import logging
import re
import shutil
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

logger = logging.getLogger(__name__)

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
    """On an exception during a fit: remove the run's new version folder if no training step was taken.

    The folder is the Trainer's ``default_root_dir``, which anomalib's Engine sets to the run's ``v<N>``; a fit
    resumed from a checkpoint has taken steps, so its folder stays. Only global rank 0 removes.
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
