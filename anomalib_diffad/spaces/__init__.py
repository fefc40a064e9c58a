# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD's spaces: what the DDPM diffuses (pixels, feature maps, patch vectors), its denoiser and its cues.

Each space is a configured object chosen by ``class_path``, e.g. in a config file::

    model:
      class_path: anomalib_diffad.DiffAD
      init_args:
        space:
          class_path: anomalib_diffad.spaces.PatchSpace
          init_args: {mlp_width: 256, mlp_blocks: 3, feature_pool: 3}
"""

from anomalib_diffad.diffusion import DenoiserOutput
from anomalib_diffad.spaces.base import DiffusionSpace, space_from_config
from anomalib_diffad.spaces.patch import PatchDenoiser, PatchSpace
from anomalib_diffad.spaces.unet import FEATURE_SPACE_STRIDE, Denoiser, FeatureSpace, PixelSpace

__all__ = [
    "FEATURE_SPACE_STRIDE",
    "Denoiser",
    "DenoiserOutput",
    "DiffusionSpace",
    "FeatureSpace",
    "PatchDenoiser",
    "PatchSpace",
    "PixelSpace",
    "space_from_config",
]
