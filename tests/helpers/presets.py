# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The tiny DiffAD preset of ``configs/diffad_tiny.yaml`` as keyword arguments, and a smaller torch model."""

from pathlib import Path

import yaml

from anomalib_diffad.spaces import PixelSpace
from anomalib_diffad.torch_model import DiffADModel

CONFIG = Path(__file__).parents[2] / "configs" / "diffad_tiny.yaml"
TINY_MODEL_ARGS: dict = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
"""``DiffAD`` arguments of the tiny preset; ``space`` is the pixel space's ``to_config()`` dict."""

TINY_UNET = {"block_out_channels": (16, 32), "attention_levels": (1,), "attention_head_dim": 16, "norm_num_groups": 8}
"""Settings of a 2-level ``PixelSpace`` UNet."""


def with_space_settings(arguments: dict, **settings: object) -> dict:
    """``DiffAD`` ``arguments`` whose ``space`` dict has ``settings`` added to its ``init_args``."""
    space = arguments["space"]
    return arguments | {"space": space | {"init_args": space.get("init_args", {}) | settings}}


def tiny_model(space_settings: dict | None = None, **arguments: object) -> DiffADModel:
    """A pixel-space ``DiffADModel`` with the :data:`TINY_UNET` at 32 px (``space_settings``: more ``PixelSpace``
    settings; ``arguments``: the model's)."""
    defaults = {"image_size": (32, 32), "layers": ("blocks.0", "blocks.1")}
    return DiffADModel(PixelSpace(**TINY_UNET | (space_settings or {})), **defaults | arguments)
