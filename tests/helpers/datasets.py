# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Edited copies of the tiny texture dataset (the ``dataset_root`` fixture) and their brick datamodule; the
three-category datamodule of the ``texture_root`` fixture."""

import shutil
from collections.abc import Callable
from pathlib import Path

from anomalib.data import MVTecAD

from anomalib_diffad import MultiCategory

NAMES = ("brick", "grass", "gravel")
"""The categories of the ``texture_root`` fixture."""
FIRST = Path("train") / "good" / "000.png"
"""The first training image of a category folder."""


def copy_dataset(dataset_root: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    """A copy of ``dataset_root`` under ``tmp_path`` whose brick folder ``edit`` has changed."""
    root = tmp_path / "data"
    shutil.copytree(dataset_root, root)
    edit(root / "brick")
    return root


def brick_datamodule(root: Path) -> MVTecAD:
    """The set-up ``MVTecAD`` datamodule of the brick category under ``root``."""
    datamodule = MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    datamodule.setup()
    return datamodule


def multi_category(root: Path, names: tuple[str, ...] = NAMES) -> MultiCategory:
    """``MultiCategory`` over the ``MVTecAD`` categories ``names`` under ``root``."""
    return MultiCategory(
        [MVTecAD(root=root, category=name, num_workers=0) for name in names],
        train_batch_size=8,
        eval_batch_size=12,
        num_workers=0,
    )
