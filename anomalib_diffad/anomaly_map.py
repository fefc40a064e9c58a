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


def feature_distance_map(features: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Feature-space cue: ``1 - cos`` between each position's feature vector and its one-step estimate."""
    return 1.0 - F.cosine_similarity(features, estimate, dim=1).unsqueeze(1)


class AnomalyMapGenerator(nn.Module):
    """Put the KL and feature maps on one scale, fuse them with ``alpha``, optionally smooth and remove the normal map.

    ``A = alpha * (kl - mu_kl) / sd_kl + (1 - alpha) * (feat - mu_feat) / sd_feat``. The four statistics are
    buffers calibrated on normal training images by :class:`~anomalib_diffad.post_processor.DiffADPostProcessor`,
    so ``alpha`` weighs the two cues the same way on every dataset; they start at (0, 1) which reduces to the
    paper's unnormalized sum ``alpha * kl + (1 - alpha) * feat``.

    With ``normal_map_size`` the generator also subtracts a *normal map*: the mean fused (and smoothed) map of
    the calibration normals, a ``(H, W)`` buffer resized to each map, so that places every normal image scores
    high (image borders, an object's fixed parts) stop dominating the map and the top-k image score. It is
    calibrated with the statistics, from per-pixel sums (:meth:`pixel_sums`, :meth:`set_normal_map`).

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

    def _group_labels(self, count: int, class_labels: torch.Tensor | None) -> torch.Tensor:
        """Each map's calibration group on the CPU: its class label, or 0 without classes."""
        if self.num_classes is not None and class_labels is None:
            msg = f"A generator with num_classes={self.num_classes} calibrates per class: pass class_labels."
            raise ValueError(msg)
        return torch.zeros(count, dtype=torch.long) if class_labels is None else class_labels.long().cpu()

    def moments(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pixel count, sum and sum of squares of each map, per class: ``(G, 2, 3)`` float64, ``G`` = classes or 1.

        Moments of several batches (or ranks) add up; :meth:`set_moments` turns their sum into the statistics.
        """
        labels = self._group_labels(len(kl_maps), class_labels)
        result = torch.zeros(self.num_classes or 1, 2, 3, dtype=torch.float64)
        for component, maps in enumerate((kl_maps, feature_maps)):
            per_image = maps.detach().double().flatten(1).cpu()
            for group in labels.unique().tolist():
                values = per_image[labels == group]
                result[group, component] += torch.stack([values.new_tensor(values.numel()), values.sum(), (values**2).sum()])
        return result

    @torch.no_grad()
    def set_moments(self, moments: torch.Tensor) -> None:
        """Set the fusion statistics from summed :meth:`moments`; a class without pixels keeps its statistics."""
        count, total, total_sq = moments.unbind(-1)
        mean = total / count.clamp(min=1)
        std = (total_sq / count.clamp(min=1) - mean**2).clamp(min=0).sqrt().clamp(min=MIN_STD)
        seen = count[:, 0] > 0
        for name, values in (("kl_mean", mean[:, 0]), ("kl_std", std[:, 0]), ("feature_mean", mean[:, 1]), ("feature_std", std[:, 1])):
            buffer = getattr(self, name)
            if self.num_classes is None:
                if bool(seen[0]):
                    buffer.fill_(float(values[0]))
            else:
                buffer[seen.to(buffer.device)] = values[seen].to(buffer)

    def pixel_sums(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image count, per-pixel sum of the KL maps and of the feature maps, per class: ``(G, 3, H, W)`` float64.

        Sums of several batches (or ranks) add up; :meth:`set_normal_map` turns them into the normal map.
        """
        labels = self._group_labels(len(kl_maps), class_labels)
        maps = torch.cat([torch.ones_like(kl_maps), kl_maps, feature_maps], dim=1).detach().double().cpu()
        result = torch.zeros(self.num_classes or 1, 3, *maps.shape[-2:], dtype=torch.float64)
        return result.index_add_(0, labels, maps)

    @torch.no_grad()
    def set_normal_map(self, sums: torch.Tensor) -> None:
        """Set the normal map to the fused map of the mean KL and feature maps in summed :meth:`pixel_sums`.

        The fusion and the smoothing are linear, so this equals the mean fused map of the summed images; call
        it after :meth:`set_moments`. A class without images keeps its normal map.
        """
        count, kl, feature = (sums[:, index : index + 1] for index in range(3))
        seen = count[:, 0, 0, 0] > 0
        labels = None if self.num_classes is None else torch.arange(len(sums), device=self.normal_map.device)
        kl_mean, feature_mean = (values / count.clamp(min=1) for values in (kl, feature))
        fused = self.fuse(kl_mean.to(self.normal_map), feature_mean.to(self.normal_map), labels)
        resized = F.interpolate(fused, size=self.normal_map.shape[-2:], mode="bilinear", align_corners=False)
        self.normal_map[seen.to(self.normal_map.device)] = resized[seen.to(resized.device)]

    def calibrate(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> None:
        """Set the fusion statistics (and the normal map) from anomaly-free images' maps (per class)."""
        self.set_moments(self.moments(kl_maps, feature_maps, class_labels))
        if self.subtracts_normal_map:
            self.set_normal_map(self.pixel_sums(kl_maps, feature_maps, class_labels))

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
