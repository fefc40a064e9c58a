# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: a tiny texture dataset in MVTec AD layout and the tiny DiffAD preset."""

import os
from pathlib import Path

import pytest
import torch

from anomalib_diffad.data import generate_texture_dataset
from tests.helpers.presets import TINY_MODEL_ARGS

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # CI: 2 cores; 1 when sharing them


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


@pytest.fixture
def tiny_model_args() -> dict:
    """Keyword arguments of the tiny DiffAD preset."""
    return dict(TINY_MODEL_ARGS)
