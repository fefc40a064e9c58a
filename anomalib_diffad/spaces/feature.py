# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The feature space: the DDPM diffuses the frozen CNN's standardized features at 1/8 of the image with a UNet."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anomalib_diffad.diffusion import DenoiserOutput, DiffusionSchedule
from anomalib_diffad.spaces.base import feature_cues
from anomalib_diffad.spaces.unet import UNetSpace

FEATURE_SPACE_STRIDE = 8
"""Resolution of the diffused features: 1/8 of the image (32 x 32 at 256 px)."""


class FeatureSpace(UNetSpace):
    """The DDPM diffuses the standardized CNN features (e.g. 152 channels at 32 x 32 for 256 px) with a UNet.

    The UNet denoises the whole feature map (it mixes neighbouring positions); whole images per training step.
    Cues: the posterior KL averaged over channels (no ``x_0`` clipping: features are not bounded; no per-image
    z-scoring, so that images keep their level) and ``1 - cos`` between each position's features and the
    one-step ``x_0`` estimate.

    Args:
        block_out_channels: UNet channels per resolution level.
        layers_per_block: Residual blocks per level.
        attention_levels: Levels with self-attention (0 = full resolution).
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups.

    Raises:
        ValueError: A setting out of range, naming it.

    Example:
        >>> FeatureSpace(block_out_channels=(64, 128, 128), attention_levels=()).to_config()["class_path"]
        'anomalib_diffad.spaces.FeatureSpace'
    """

    stride = FEATURE_SPACE_STRIDE
    feature_stride = FEATURE_SPACE_STRIDE

    def __init__(
        self,
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (3,),
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
    ) -> None:
        super().__init__(block_out_channels, layers_per_block, attention_levels, attention_head_dim, norm_num_groups)

    def init_args(self) -> dict[str, Any]:
        """The UNet settings."""
        return self.unet_args()

    def build_denoiser(self, feature_channels: int, num_classes: int | None) -> nn.Module:
        """A UNet on the ``feature_channels``-channel feature map, without a head."""
        return self.build_unet(num_classes, feature_channels=0, data_channels=feature_channels)

    def training_data(
        self, images: torch.Tensor, features: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The whole feature maps, no head targets."""
        del images
        return features, None, class_labels

    def diffused_data(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The standardized features."""
        del images
        return features

    def cues(
        self,
        schedule: DiffusionSchedule,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        prediction: DenoiserOutput,
        target_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel-mean posterior KL and ``1 - cos(x_0, x_0 estimate)`` at the features' resolution."""
        del target_features  # they are x0
        return feature_cues(schedule, x0, xt, t, prediction)
