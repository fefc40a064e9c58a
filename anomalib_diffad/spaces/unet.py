# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The UNet of the pixel and feature spaces: the diffusers UNet denoiser and the settings both spaces share.

The denoiser takes noisy data ``x_t`` ``(N, C, H, W)`` and integer timesteps ``t`` ``(N,)`` and returns a
:class:`~anomalib_diffad.diffusion.DenoiserOutput`: the predicted noise, the raw variance interpolation (improved
DDPM) and, for the pixel space's UNet, the predicted CNN features.
"""

from abc import ABC
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import UNet2DModel
from torch import nn

from anomalib_diffad.diffusion import DenoiserOutput
from anomalib_diffad.spaces.base import DiffusionSpace

TARGET_STRIDE = 4
"""The pixel space's feature targets (and the feature head's predictions) are at 1/4 of the image resolution."""


class Denoiser(nn.Module):
    """diffusers ``UNet2DModel`` predicting epsilon and the variance interpolation, with an optional 1x1 feature head.

    The feature head ``GroupNorm -> SiLU -> Conv1x1`` reads the output of one decoder (up) block, captured
    with a forward hook, and is resized to 1/4 of the input resolution like the paper's target features.
    With ``feature_channels=0`` there is no head (feature space: the data are the features).

    Args:
        block_out_channels: Channels of each UNet resolution level.
        layers_per_block: Residual blocks per level.
        attention_levels: Indices of the levels (0 = full resolution) that get self-attention.
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups.
        num_classes: Number of class embeddings (``None`` for an unconditional UNet).
        feature_channels: Channels of the predicted features (0: no feature head).
        feature_block: Index of the up block whose output feeds the head (``None``: the block at 1/4 resolution).
        data_channels: Channels of the diffused data (3 for RGB pixels).
    """

    def __init__(
        self,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        attention_levels: Sequence[int],
        attention_head_dim: int,
        norm_num_groups: int,
        num_classes: int | None,
        feature_channels: int,
        feature_block: int | None = None,
        data_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            in_channels=data_channels,
            out_channels=2 * data_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(
                "AttnDownBlock2D" if level in attention_levels else "DownBlock2D" for level in range(levels)
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if levels - 1 - index in attention_levels else "UpBlock2D" for index in range(levels)
            ),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            resnet_time_scale_shift="scale_shift",
            num_class_embeds=num_classes,
        )
        self.num_classes = num_classes
        self.feature_head: nn.Module | None = None
        self._decoder_features: torch.Tensor | None = None
        if feature_channels:
            self.feature_block = max(levels - 3, 0) if feature_block is None else feature_block
            block_channels = tuple(reversed(block_out_channels))[self.feature_block]
            self.feature_head = nn.Sequential(
                nn.GroupNorm(norm_num_groups, block_channels),
                nn.SiLU(),
                nn.Conv2d(block_channels, feature_channels, kernel_size=1),
            )
            self.unet.up_blocks[self.feature_block].register_forward_hook(self._capture_decoder_features)

    def _capture_decoder_features(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._decoder_features = output

    def forward(self, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> DenoiserOutput:
        """Predict noise, variance interpolation and features for noisy images ``xt`` at timesteps ``t``."""
        if self.num_classes is not None and class_labels is None:
            class_labels = torch.zeros_like(t)
        out = self.unet(xt, t, class_labels=class_labels).sample
        eps, v = out.chunk(2, dim=1)
        if self.feature_head is None:
            return DenoiserOutput(eps=eps, v=v, features=None)
        decoder_features = self._decoder_features
        self._decoder_features = None
        size = (xt.shape[-2] // TARGET_STRIDE, xt.shape[-1] // TARGET_STRIDE)
        decoder_features = F.interpolate(decoder_features, size=size, mode="bilinear", align_corners=False)
        return DenoiserOutput(eps=eps, v=v, features=self.feature_head(decoder_features))


class UNetSpace(DiffusionSpace, ABC):
    """A space whose denoiser is a :class:`Denoiser` UNet: its settings, validated.

    Args:
        block_out_channels: UNet channels per resolution level.
        layers_per_block: Residual blocks per level.
        attention_levels: Levels with self-attention (0 = full resolution).
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups of the UNet (and of the pixel space's feature head).

    Raises:
        ValueError: A setting out of range, naming it.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        attention_levels: Sequence[int],
        attention_head_dim: int,
        norm_num_groups: int,
    ) -> None:
        self.block_out_channels = tuple(int(channels) for channels in block_out_channels)
        self.layers_per_block = layers_per_block
        self.attention_levels = tuple(int(level) for level in attention_levels)
        self.attention_head_dim = attention_head_dim
        self.norm_num_groups = norm_num_groups
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            msg = f"block_out_channels must be one or more positive channel counts, got {list(block_out_channels)}."
            raise ValueError(msg)
        if layers_per_block < 1:
            msg = f"layers_per_block must be at least 1, got {layers_per_block}."
            raise ValueError(msg)
        if norm_num_groups < 1 or any(channels % norm_num_groups for channels in self.block_out_channels):
            msg = (
                f"norm_num_groups={norm_num_groups} must divide every level's channels "
                f"(block_out_channels={list(self.block_out_channels)})."
            )
            raise ValueError(msg)
        levels = len(self.block_out_channels)
        if any(not 0 <= level < levels for level in self.attention_levels):
            msg = f"attention_levels {list(self.attention_levels)} must lie in [0, {levels}) (the UNet's levels)."
            raise ValueError(msg)
        attended = [self.block_out_channels[level] for level in self.attention_levels]
        if attention_head_dim < 1 or any(channels % attention_head_dim for channels in attended):
            msg = (
                f"attention_head_dim={attention_head_dim} must divide the channels {attended} of the attention levels."
            )
            raise ValueError(msg)

    def unet_args(self) -> dict[str, Any]:
        """The UNet settings as plain data."""
        return {
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "attention_levels": list(self.attention_levels),
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
        }

    def build_unet(self, num_classes: int | None, feature_channels: int, data_channels: int) -> Denoiser:
        """A :class:`Denoiser` with these settings."""
        return Denoiser(
            self.block_out_channels,
            self.layers_per_block,
            self.attention_levels,
            self.attention_head_dim,
            self.norm_num_groups,
            num_classes=num_classes,
            feature_channels=feature_channels,
            data_channels=data_channels,
        )
