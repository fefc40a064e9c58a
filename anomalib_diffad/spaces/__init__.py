# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD's spaces: what the DDPM diffuses (pixels, feature maps, patch vectors), its denoiser and its cues."""

from anomalib_diffad.spaces.base import DiffusionSpace
from anomalib_diffad.spaces.denoisers import Denoiser, DenoiserOutput, PatchDenoiser
from anomalib_diffad.spaces.feature import FEATURE_SPACE_STRIDE, FeatureSpace, PatchSpace
from anomalib_diffad.spaces.pixel import PixelSpace

SPACES = ("pixel", "feature", "patch")


def build_space(
    name: str,
    levels: int,
    train_crop_size: int | None = None,
    score_tile_size: int | None = None,
    feature_pool: int = 3,
) -> DiffusionSpace:
    """The space called ``name`` with its settings (each space takes the ones it uses).

    Raises:
        ValueError: If ``name`` is not one of :data:`SPACES`.
    """
    if name == "pixel":
        return PixelSpace(levels, train_crop_size, score_tile_size)
    if name == "feature":
        return FeatureSpace()
    if name == "patch":
        return PatchSpace(feature_pool)
    msg = f"space must be one of {SPACES}, got {name!r}."
    raise ValueError(msg)


__all__ = [
    "FEATURE_SPACE_STRIDE",
    "SPACES",
    "Denoiser",
    "DenoiserOutput",
    "DiffusionSpace",
    "FeatureSpace",
    "PatchDenoiser",
    "PatchSpace",
    "PixelSpace",
    "build_space",
]
