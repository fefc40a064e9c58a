# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Feature spaces: the DDPM diffuses the frozen CNN's standardized features at 1/8 of the image.

- ``feature``: a UNet denoises the whole feature map (it mixes neighbouring positions).
- ``patch``: a per-position MLP denoises each locally pooled patch vector on its own.
"""

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from anomalib_diffad.anomaly_map import feature_distance_map
from anomalib_diffad.diffusion import posterior_kl_map, predict_x0_from_eps
from anomalib_diffad.spaces.base import DiffusionSpace
from anomalib_diffad.spaces.denoisers import Denoiser, DenoiserOutput, PatchDenoiser

if TYPE_CHECKING:
    from anomalib_diffad.torch_model import DiffADModel

FEATURE_SPACE_STRIDE = 8
"""Resolution of the diffused features: 1/8 of the image (32 x 32 at 256 px)."""


class FeatureSpace(DiffusionSpace):
    """The DDPM diffuses the standardized CNN features (e.g. 152 channels at 32 x 32 for 256 px) with a UNet.

    Cues: the posterior KL averaged over channels (no ``x_0`` clipping: features are not bounded; no per-image
    z-scoring, so that images keep their level) and ``1 - cos`` between each position's features and the
    one-step ``x_0`` estimate.
    """

    name = "feature"
    stride = FEATURE_SPACE_STRIDE
    feature_stride = FEATURE_SPACE_STRIDE

    def build_denoiser(self, feature_channels: int, num_classes: int | None, settings: dict[str, Any]) -> nn.Module:
        """A UNet on the ``feature_channels``-channel feature map, without a head."""
        return Denoiser(**settings["unet"], num_classes=num_classes, feature_channels=0, data_channels=feature_channels)

    def cues(
        self,
        model: "DiffADModel",
        images: torch.Tensor,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        prediction: DenoiserOutput,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel-mean posterior KL and ``1 - cos(x_0, x_0 estimate)`` at the features' resolution."""
        del images
        kl = posterior_kl_map(model.schedule, x0, xt, t, prediction.eps, prediction.v, clip_x0=False)
        x0_estimate = predict_x0_from_eps(model.schedule, xt, t, prediction.eps, clip=False)
        return kl.mean(dim=1, keepdim=True), feature_distance_map(x0, x0_estimate)


class PatchSpace(FeatureSpace):
    """The DDPM diffuses locally pooled patch vectors, each denoised on its own by a :class:`PatchDenoiser`.

    The features are averaged over ``feature_pool`` x ``feature_pool`` neighbourhoods at each layer's own
    resolution (PatchCore's local aggregation), then resized and standardized like the feature space's. The
    denoiser sees one position at a time, so it cannot reconstruct a defect from its surroundings: the
    optimal denoiser of a finite set of normal vectors is a soft nearest-neighbour average over them, and
    its posterior KL at a small ``t`` grows with the distance to the normal vectors. Same schedule, learned
    variance, loss and cues as the feature space.

    Args:
        feature_pool: Side of the average pooling (1: none).
    """

    name = "patch"

    def __init__(self, feature_pool: int = 3) -> None:
        if feature_pool < 1 or feature_pool % 2 == 0:
            msg = f"feature_pool must be an odd positive side, got {feature_pool}."
            raise ValueError(msg)
        self.feature_pool = feature_pool

    def build_denoiser(self, feature_channels: int, num_classes: int | None, settings: dict[str, Any]) -> nn.Module:
        """A per-position MLP on ``feature_channels``-vectors."""
        return PatchDenoiser(feature_channels, **settings["mlp"], num_classes=num_classes)

    def training_data(
        self, model: "DiffADModel", images: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Every position's vector as its own sample ``(N * h * w, C, 1, 1)``, so each gets its own timestep.

        The denoiser is per-position, so this changes no prediction; it only spreads the timesteps of a step
        over all vectors instead of one per image.
        """
        x0, _, _ = super().training_data(model, images, class_labels)
        positions = x0.shape[-2] * x0.shape[-1]
        vectors = x0.permute(0, 2, 3, 1).reshape(-1, x0.shape[1], 1, 1)
        labels = None if class_labels is None else class_labels.repeat_interleave(positions)
        return vectors, None, labels
