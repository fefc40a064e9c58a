# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Fusion of DiffAD's pixel-level (KL) and feature-level maps into one anomaly map and an image score."""

from collections.abc import Iterable

import torch
import torch.nn.functional as F  # noqa: N812
from kornia.filters import gaussian_blur2d
from torch import nn

from anomalib_diffad.metrics import GroupedMoments

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


def feature_distance_map(features: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Feature-space cue: ``1 - cos`` between each position's feature vector and its one-step estimate."""
    return 1.0 - F.cosine_similarity(features, estimate, dim=1).unsqueeze(1)


class AnomalyMapGenerator(nn.Module):
    """Put the KL and feature maps on one scale, fuse them with ``alpha``, optionally smooth and remove the normal map.

    ``A = alpha * (kl - mu_kl) / sd_kl + (1 - alpha) * (feat - mu_feat) / sd_feat``. The four statistics are
    buffers calibrated on normal training images (:meth:`calibrate_batches`, fed by
    :meth:`~anomalib_diffad.torch_model.DiffADModel.calibrate`), so ``alpha`` weighs the two cues the same way on
    every dataset; they start at (0, 1) which reduces to the paper's unnormalized sum
    ``alpha * kl + (1 - alpha) * feat``.

    With ``normal_map_size`` the generator also subtracts a *normal map*: the mean fused (and smoothed) map of
    the calibration normals, a ``(H, W)`` buffer resized to each map, so that places every normal image scores
    high (image borders, an object's fixed parts) stop dominating the map and the top-k image score. It is
    calibrated with the statistics, from per-pixel sums.

    A unified (class-conditional) model has one set of statistics per category: the buffers then have shape
    ``(num_classes,)`` (normal map ``(num_classes, 1, H, W)``) and :meth:`forward` picks each image's row by
    its class label.

    Args:
        alpha: Weight of the KL map (paper: 0.5).
        sigma: Standard deviation of the Gaussian smoothing in pixels; 0 disables it (paper: off).
        num_classes: Categories with their own statistics (``None``: one set, scalar buffers).
        normal_map_size: ``(H, W)`` of the normal map to subtract (the pre-processed image size); ``None``: off
            (the paper).

    Example:
        >>> generator = AnomalyMapGenerator(alpha=0.5)
        >>> generator(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(
        self,
        alpha: float = 0.5,
        sigma: float = 0.0,
        num_classes: int | None = None,
        normal_map_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            msg = f"alpha must lie in [0, 1], got {alpha}."
            raise ValueError(msg)
        self.alpha = alpha
        self.sigma = sigma
        self.num_classes = num_classes
        shape = () if num_classes is None else (num_classes,)
        self.register_buffer("kl_mean", torch.zeros(shape))
        self.register_buffer("kl_std", torch.ones(shape))
        self.register_buffer("feature_mean", torch.zeros(shape))
        self.register_buffer("feature_std", torch.ones(shape))
        self.subtracts_normal_map = normal_map_size is not None
        if normal_map_size is not None:
            self.register_buffer("normal_map", torch.zeros(num_classes or 1, 1, *normal_map_size))

    @torch.no_grad()
    def calibrate(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> None:
        """Set the fusion statistics (and the normal map) from anomaly-free images' maps (per class)."""
        self.calibrate_batches([(kl_maps, feature_maps, class_labels)])

    @torch.no_grad()
    def calibrate_batches(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> None:
        """Set the fusion statistics (and the normal map) from batches of anomaly-free images' maps.

        Each batch is ``(kl_maps, feature_maps, class_labels)``, maps ``(N, 1, H, W)`` (at the normal map's size
        when one is subtracted). The moments are float64 sums on the CPU (:class:`GroupedMoments`, summed over
        DDP ranks); a class without maps keeps its statistics and normal map. The normal map is the fused map of
        the mean KL and feature maps: the fusion and the smoothing are linear, so it equals the mean fused map.

        Raises:
            ValueError: If a per-class generator gets no class labels.
        """
        groups, device = self.num_classes or 1, self.kl_mean.device
        cues = (GroupedMoments(groups), GroupedMoments(groups))
        pixels = GroupedMoments(groups, (2, *self.normal_map.shape[-2:])) if self.subtracts_normal_map else None
        for kl_maps, feature_maps, class_labels in batches:
            if self.num_classes is not None and class_labels is None:
                msg = f"A generator with num_classes={self.num_classes} calibrates per class: pass class_labels."
                raise ValueError(msg)
            for moments, maps in zip(cues, (kl_maps, feature_maps), strict=True):
                moments.update(maps, class_labels)
            if pixels is not None:
                pixels.update(torch.cat([kl_maps, feature_maps], dim=1), class_labels)
        for cue, moments in zip(("kl", "feature"), cues, strict=True):
            count, mean, variance = moments.to(device).compute().unbind(1)
            seen = count > 0
            for name, values in ((f"{cue}_mean", mean), (f"{cue}_std", variance.sqrt().clamp(min=MIN_STD))):
                buffer = getattr(self, name)
                if self.num_classes is None:
                    if bool(seen[0]):
                        buffer.fill_(float(values[0]))
                else:
                    buffer[seen] = values[seen].to(buffer)
        if pixels is not None:
            moments = pixels.to(device).compute()
            seen, mean = moments[:, 0, 0, 0, 0] > 0, moments[:, 1].to(self.normal_map)
            labels = None if self.num_classes is None else torch.arange(len(mean), device=device)
            fused = self.fuse(mean[:, :1], mean[:, 1:], labels)
            resized = F.interpolate(fused, size=self.normal_map.shape[-2:], mode="bilinear", align_corners=False)
            self.normal_map[seen] = resized[seen]

    def statistics(self, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(kl_mean, kl_std, feature_mean, feature_std)``; per image ``(N, 1, 1, 1)`` for a per-class generator."""
        values = (self.kl_mean, self.kl_std, self.feature_mean, self.feature_std)
        if self.num_classes is None:
            return values
        if class_labels is None:
            msg = f"A generator with num_classes={self.num_classes} needs each image's class label."
            raise ValueError(msg)
        return tuple(value[class_labels].view(-1, 1, 1, 1) for value in values)

    def fuse(
        self,
        kl_map: torch.Tensor,
        feature_map: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Standardized KL and feature maps weighed by ``alpha``, smoothed when ``sigma > 0``."""
        kl_mean, kl_std, feature_mean, feature_std = self.statistics(class_labels)
        kl = (kl_map - kl_mean) / kl_std
        feature = (feature_map - feature_mean) / feature_std
        fused = self.alpha * kl + (1.0 - self.alpha) * feature
        if self.sigma > 0:
            kernel = 2 * int(4.0 * self.sigma + 0.5) + 1
            fused = gaussian_blur2d(fused, (kernel, kernel), (self.sigma, self.sigma), border_type="replicate")
        return fused

    def forward(
        self,
        kl_map: torch.Tensor,
        feature_map: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``(N, 1, H, W)`` KL and feature maps into one ``(N, 1, H, W)`` anomaly map."""
        fused = self.fuse(kl_map, feature_map, class_labels)
        if not self.subtracts_normal_map:
            return fused
        normal_map = self.normal_map if self.num_classes is None else self.normal_map[class_labels]
        return fused - F.interpolate(normal_map, size=fused.shape[-2:], mode="bilinear", align_corners=False)
