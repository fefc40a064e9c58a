# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The UNet spaces: the paper's pixel space and the feature space, and the diffusers UNet denoiser they share.

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

from anomalib_diffad.anomaly_map import feature_error_map
from anomalib_diffad.diffusion import (
    DenoiserOutput,
    DiffusionSchedule,
    posterior_kl_map,
    standardize_per_image,
)
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


def aligned_crop_offsets(
    batch_size: int,
    image_size: tuple[int, int],
    crop_size: int,
    grid: int,
) -> tuple[list[int], list[int]]:
    """Random top-left corners of ``crop_size`` windows, one per image, on multiples of ``grid``.

    On the grid of the feature targets, a crop's targets can be cut from the whole image's target map.
    """
    height, width = image_size
    tops = grid * torch.randint(0, (height - crop_size) // grid + 1, (batch_size,))
    lefts = grid * torch.randint(0, (width - crop_size) // grid + 1, (batch_size,))
    return tops.tolist(), lefts.tolist()


def crop_at(
    tensors: torch.Tensor,
    tops: Sequence[int],
    lefts: Sequence[int],
    size: int,
    scale: int = 1,
) -> torch.Tensor:
    """The ``size // scale`` windows at ``(top // scale, left // scale)`` of each tensor of a batch."""
    side = size // scale
    return torch.stack([
        tensor[:, top // scale : top // scale + side, left // scale : left // scale + side]
        for tensor, top, left in zip(tensors, tops, lefts, strict=True)
    ])


def tile_offsets(length: int, tile: int) -> list[int]:
    """Start offsets of ``tile``-long windows at stride ``tile // 2`` that cover ``length``, the last one flush."""
    offsets = list(range(0, length - tile + 1, tile // 2))
    return offsets if offsets[-1] == length - tile else [*offsets, length - tile]


class PixelSpace(UNetSpace):
    """The DDPM diffuses ``[-1, 1]`` RGB images with a UNet; a 1x1 head predicts the frozen CNN's features at 1/4.

    Cues: the posterior KL, with the model's ``x_0`` estimate clipped to [-1, 1] and z-scored per image (the
    paper's code), and the feature-prediction squared error.

    Args:
        block_out_channels: UNet channels per resolution level (it downsamples ``2 ** (levels - 1)`` times).
        layers_per_block: Residual blocks per level.
        attention_levels: Levels with self-attention (0 = full resolution).
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups of the UNet and the feature head.
        train_crop_size: Side of the random training crops (``None``: whole images). Their feature targets are
            cut from the whole image's target map (crops lie on its grid), so training predicts exactly the
            targets that scoring compares against.
        score_tile_size: Score overlapping tiles of this side (stride half a tile), so that the UNet's
            GroupNorm and attention see inputs of the training crops' size; overlaps are averaged.

    Raises:
        ValueError: A setting out of range or off the UNet's grid, naming it.

    Example:
        >>> PixelSpace(block_out_channels=(16, 32), attention_levels=(), train_crop_size=32).crop_grid
        4
    """

    stride = 1
    feature_stride = TARGET_STRIDE
    discrete = True

    def __init__(
        self,
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (3,),
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
        train_crop_size: int | None = None,
        score_tile_size: int | None = None,
    ) -> None:
        super().__init__(block_out_channels, layers_per_block, attention_levels, attention_head_dim, norm_num_groups)
        self.crop_grid = max(TARGET_STRIDE, 2 ** (len(self.block_out_channels) - 1))
        if train_crop_size is not None and (train_crop_size < 1 or train_crop_size % self.crop_grid):
            msg = (
                f"train_crop_size={train_crop_size} must be a positive multiple of {self.crop_grid} (the feature "
                "targets' stride and the UNet's downsampling)."
            )
            raise ValueError(msg)
        if score_tile_size is not None and (score_tile_size < 1 or score_tile_size % (2 * self.crop_grid)):
            msg = (
                f"score_tile_size={score_tile_size} must be a positive multiple of {2 * self.crop_grid} (twice the "
                "UNet grid)."
            )
            raise ValueError(msg)
        self.train_crop_size = train_crop_size
        self.score_tile_size = score_tile_size

    def init_args(self) -> dict[str, Any]:
        """The UNet settings, ``train_crop_size`` and ``score_tile_size``."""
        return self.unet_args() | {"train_crop_size": self.train_crop_size, "score_tile_size": self.score_tile_size}

    def check(self, image_size: tuple[int, int], timestep_fusion: str) -> None:
        """Tiles must lie within the image; the passes' mean only (the KL is z-scored per image, mean 0)."""
        if timestep_fusion != "mean":
            msg = (
                f"timestep_fusion={timestep_fusion!r} needs positive cues: the pixel space's KL is z-scored per image "
                "(mean 0); use timestep_fusion='mean'."
            )
            raise ValueError(msg)
        if self.score_tile_size is not None and self.score_tile_size > min(image_size):
            msg = f"score_tile_size={self.score_tile_size} needs at most the image size {image_size}."
            raise ValueError(msg)

    def data_shape(self, feature_channels: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """RGB at the image size."""
        del feature_channels
        return (3, *image_size)

    def build_denoiser(self, feature_channels: int, num_classes: int | None) -> nn.Module:
        """A UNet on RGB with a feature head of ``feature_channels``."""
        return self.build_unet(num_classes, feature_channels=feature_channels, data_channels=3)

    def training_data(
        self, images: torch.Tensor, features: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Images (or random crops of them) and their feature targets, computed on the whole images as in scoring."""
        size = self.train_crop_size
        if size is None or (size >= images.shape[-2] and size >= images.shape[-1]):
            return images, features, class_labels
        tops, lefts = aligned_crop_offsets(images.shape[0], images.shape[-2:], size, self.crop_grid)
        crops = crop_at(images, tops, lefts, size), crop_at(features, tops, lefts, size, scale=TARGET_STRIDE)
        return *crops, class_labels

    def diffused_data(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The images themselves."""
        del features
        return images

    def denoise(
        self, denoiser: nn.Module, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> DenoiserOutput:
        """``denoiser`` on the whole images, or on overlapping tiles when ``score_tile_size`` is set."""
        if self.score_tile_size is None:
            return denoiser(xt, t, class_labels)
        return self.tiled_denoise(denoiser, xt, t, class_labels)

    def tiled_denoise(
        self, denoiser: nn.Module, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> DenoiserOutput:
        """``denoiser`` on overlapping ``score_tile_size`` tiles (stride half a tile), overlaps averaged."""
        tile, stride, (height, width) = self.score_tile_size, TARGET_STRIDE, xt.shape[-2:]
        eps, v, counts = torch.zeros_like(xt), torch.zeros_like(xt), xt.new_zeros(1, 1, height, width)
        feature_channels = denoiser.feature_head[-1].out_channels  # the pixel space always has the head
        features = xt.new_zeros(xt.shape[0], feature_channels, height // stride, width // stride)
        for top in tile_offsets(height, tile):
            for left in tile_offsets(width, tile):
                window = (..., slice(top, top + tile), slice(left, left + tile))
                small = (..., *(slice(start // stride, (start + tile) // stride) for start in (top, left)))
                prediction = denoiser(xt[window], t, class_labels)
                eps[window] += prediction.eps
                v[window] += prediction.v
                features[small] += prediction.features
                counts[window] += 1
        return DenoiserOutput(eps=eps / counts, v=v / counts, features=features / counts[..., ::stride, ::stride])

    def cues(
        self,
        schedule: DiffusionSchedule,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        prediction: DenoiserOutput,
        target_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image z-scored KL (``x_0`` clipped) and the feature-prediction error upsampled to the image."""
        kl = standardize_per_image(posterior_kl_map(schedule, x0, xt, t, prediction.eps, prediction.v, clip_x0=True))
        target = target_features.repeat(x0.shape[0] // target_features.shape[0], 1, 1, 1)
        return kl.mean(dim=1, keepdim=True), feature_error_map(prediction.features, target, tuple(x0.shape[-2:]))


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
