# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The paper's pixel space: the DDPM diffuses RGB images; a head predicts the frozen CNN's features."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from anomalib_diffad.anomaly_map import feature_error_map
from anomalib_diffad.diffusion import DenoiserOutput, DiffusionSchedule, posterior_kl_map, standardize_per_image
from anomalib_diffad.spaces.unet import TARGET_STRIDE, UNetSpace


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

    def check(self, image_size: tuple[int, int], normalize_passes: bool) -> None:
        """Tiles must lie within the image; no pass normalization (the KL is z-scored per image, mean 0)."""
        if normalize_passes:
            msg = "normalize_passes needs positive cues: the pixel space's KL is z-scored per image (mean 0)."
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
