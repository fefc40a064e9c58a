# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: tiny texture datasets in MVTec AD layout (one category; three), the tiny DiffAD preset and a
model fitted on them."""

import os
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_diffad import DiffAD
from diffad_tools.textures import generate_texture_dataset
from tests.helpers.datasets import NAMES
from tests.helpers.presets import TINY_MODEL_ARGS

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # OMP_NUM_THREADS, else 2


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny built-in texture dataset (64 px, one category) for engine and CLI tests."""
    root = tmp_path_factory.mktemp("textures")
    return generate_texture_dataset(
        root,
        categories=("brick",),
        image_size=64,
        num_train=8,
        num_test_good=4,
        num_test_per_defect=1,
        seed=3,
    )


@pytest.fixture(scope="session")
def texture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three built-in texture categories at 64 px: 8 train, 4 good and 4 defect test images each."""
    return generate_texture_dataset(
        tmp_path_factory.mktemp("textures3"),
        categories=NAMES,
        image_size=64,
        num_train=8,
        num_test_good=4,
        num_test_per_defect=1,
        seed=5,
    )


@pytest.fixture
def tiny_model_args() -> dict:
    """Keyword arguments of the tiny DiffAD preset."""
    return dict(TINY_MODEL_ARGS)


@pytest.fixture(scope="session")
def tiny_project(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny preset fitted once per session (2 epochs, 4 steps, validated): ``root_dir``, ``ckpt``, ``model``.

    Tests read the checkpoint and copy it before changing it; runs that resume from it write new versions.
    """
    root_dir = tmp_path_factory.mktemp("project")
    model = DiffAD(**TINY_MODEL_ARGS)
    engine = Engine(
        logger=False,
        default_root_dir=root_dir,
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    datamodule = MVTecAD(root=dataset_root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine.fit(model=model, datamodule=datamodule)
    ckpt = root_dir / "DiffAD" / "MVTecAD" / "brick" / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"root_dir": root_dir, "ckpt": ckpt, "model": model}


@pytest.fixture
def mvtec_folder_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """anomalib's ``MVTecAD`` with the folder checks the ``anomalib`` CLI installs, for one test."""
    from anomalib.data.datamodules.image import mvtecad as datamodule
    from anomalib.data.datasets.image import mvtecad

    from diffad_tools.anomalib_cli import check_mvtec_folders

    monkeypatch.setattr(datamodule.MVTecAD, "prepare_data", datamodule.MVTecAD.prepare_data)
    monkeypatch.setattr(mvtecad, "make_mvtec_ad_dataset", mvtecad.make_mvtec_ad_dataset)
    check_mvtec_folders()
