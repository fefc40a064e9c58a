# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The shape every DiffAD space has: the data it diffuses, its denoiser and its two anomaly cues.

A space holds no weights: :class:`~anomalib_diffad.torch_model.DiffADModel` owns the denoiser (and its EMA
copy), the frozen feature extractor and the schedule, and asks its space what to diffuse, which denoiser to
build and how to turn one reverse step into maps. The diffusion math itself is shared by all spaces
(:mod:`anomalib_diffad.diffusion`).
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anomalib_diffad.spaces.denoisers import DenoiserOutput

if TYPE_CHECKING:
    from anomalib_diffad.torch_model import DiffADModel


class DiffusionSpace(ABC):
    """Where a DiffAD's DDPM runs.

    Attributes:
        name: The ``space`` setting that selects it.
        stride: Image pixels per position of the diffused data (1: pixels).
        feature_stride: Image pixels per position of the frozen CNN's features that the space uses.
        discrete: The data are 8-bit images: ``L_vb``'s decoder term at ``t = 0`` is the discretized likelihood.
        feature_pool: Side of the average pooling of the frozen CNN's features (1: none).
    """

    name: str
    stride: int
    feature_stride: int
    discrete: bool = False
    feature_pool: int = 1

    def check(
        self,
        image_size: tuple[int, int],
        train_crop_size: int | None,
        score_tile_size: int | None,
        normalize_passes: bool = False,
    ) -> None:
        """Refuse settings that this space does not support (a clear ``ValueError`` naming the setting)."""
        del normalize_passes  # the feature cues are positive: their means scale the passes
        if train_crop_size is not None:
            msg = f"The {self.name} space trains on whole images: train_crop_size must be None."
            raise ValueError(msg)
        if score_tile_size is not None:
            msg = f"score_tile_size={score_tile_size} needs the pixel space (this DiffAD uses space={self.name!r})."
            raise ValueError(msg)
        del image_size

    def data_shape(self, feature_channels: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the diffused data of one image of ``image_size``."""
        return (feature_channels, image_size[0] // self.stride, image_size[1] // self.stride)

    @abstractmethod
    def build_denoiser(self, feature_channels: int, num_classes: int | None, settings: dict[str, Any]) -> nn.Module:
        """A new denoiser for this space (``settings``: the model's denoiser arguments)."""

    def diffused_data(self, model: "DiffADModel", images: torch.Tensor) -> torch.Tensor:
        """The data ``x_0`` that the DDPM diffuses for ``[-1, 1]`` images (default: the standardized features)."""
        return model.target_features(images)

    def training_data(
        self, model: "DiffADModel", images: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x_0`` of a training batch, the feature head's targets (``None``: no head) and ``x_0``'s class labels."""
        with torch.no_grad():
            return self.diffused_data(model, images), None, class_labels

    def denoise(
        self, model: "DiffADModel", xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> DenoiserOutput:
        """One pass of the model's EMA denoiser (the pixel space may tile it)."""
        return model.ema_denoiser(xt, t, class_labels)

    @abstractmethod
    def cues(
        self,
        model: "DiffADModel",
        images: torch.Tensor,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        prediction: DenoiserOutput,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The KL cue and the second cue ``(B, 1, h, w)`` of a batch of passes, at the data's resolution.

        ``x0``, ``xt``, ``t`` and ``prediction`` hold every pass of every image (``B`` = passes x images);
        ``images`` are the ``N`` input images, in the same order as the passes' images.
        """
