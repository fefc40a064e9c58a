# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Fusion of DiffAD's pixel-level (KL) and feature-level maps into one anomaly map and an image score."""

import torch
import torch.nn.functional as F  # noqa: N812
from kornia.filters import gaussian_blur2d
from torch import nn

MIN_STD = 1e-6
"""Floor of the calibrated standard deviations, so a constant calibration map cannot blow up the fusion."""


def top_k_mean(anomaly_map: torch.Tensor, k: int) -> torch.Tensor:
    """Image score: mean of the ``k`` largest pixels of each map (the paper uses k = 64)."""
    flat = anomaly_map.flatten(start_dim=1)
    return torch.topk(flat, min(k, flat.shape[1]), dim=1).values.mean(dim=1)


def feature_error_map(predicted: torch.Tensor, target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Feature-level score ``s^f``: channel-mean squared error, bilinearly upsampled to the image ``size``."""
    error = ((predicted - target) ** 2).mean(dim=1, keepdim=True)
    return F.interpolate(error, size=size, mode="bilinear", align_corners=False)


class AnomalyMapGenerator(nn.Module):
    """Put the KL and feature maps on one scale, fuse them with ``alpha`` and optionally smooth.

    ``A = alpha * (kl - mu_kl) / sd_kl + (1 - alpha) * (feat - mu_feat) / sd_feat``. The four statistics are
    buffers calibrated on validation normals by :class:`~anomalib_diffad.post_processor.DiffADPostProcessor`,
    so ``alpha`` weighs the two cues the same way on every dataset; they start at (0, 1) which reduces to the
    paper's unnormalized sum ``alpha * kl + (1 - alpha) * feat``.

    Args:
        alpha: Weight of the KL map (paper: 0.5).
        sigma: Standard deviation of the Gaussian smoothing in pixels; 0 disables it (paper: off).

    Example:
        >>> generator = AnomalyMapGenerator(alpha=0.5)
        >>> generator(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, alpha: float = 0.5, sigma: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            msg = f"alpha must lie in [0, 1], got {alpha}."
            raise ValueError(msg)
        self.alpha = alpha
        self.sigma = sigma
        self.register_buffer("kl_mean", torch.tensor(0.0))
        self.register_buffer("kl_std", torch.tensor(1.0))
        self.register_buffer("feature_mean", torch.tensor(0.0))
        self.register_buffer("feature_std", torch.tensor(1.0))

    @torch.no_grad()
    def calibrate(self, kl_maps: torch.Tensor, feature_maps: torch.Tensor) -> None:
        """Set the fusion statistics from the maps of anomaly-free images."""
        kl_maps, feature_maps = kl_maps.double(), feature_maps.double()
        self.kl_mean.copy_(kl_maps.mean())
        self.kl_std.copy_(kl_maps.std().clamp(min=MIN_STD))
        self.feature_mean.copy_(feature_maps.mean())
        self.feature_std.copy_(feature_maps.std().clamp(min=MIN_STD))

    def forward(self, kl_map: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
        """Fuse ``(N, 1, H, W)`` KL and feature maps into one ``(N, 1, H, W)`` anomaly map."""
        kl = (kl_map - self.kl_mean) / self.kl_std
        feature = (feature_map - self.feature_mean) / self.feature_std
        fused = self.alpha * kl + (1.0 - self.alpha) * feature
        if self.sigma > 0:
            kernel = 2 * int(4.0 * self.sigma + 0.5) + 1
            fused = gaussian_blur2d(fused, (kernel, kernel), (self.sigma, self.sigma), border_type="replicate")
        return fused
