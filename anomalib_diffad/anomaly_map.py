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
    """Put the KL and feature maps on one scale, fuse them with ``alpha`` and optionally smooth.

    ``A = alpha * (kl - mu_kl) / sd_kl + (1 - alpha) * (feat - mu_feat) / sd_feat``. The four statistics are
    buffers calibrated on normal training images by :class:`~anomalib_diffad.post_processor.DiffADPostProcessor`,
    so ``alpha`` weighs the two cues the same way on every dataset; they start at (0, 1) which reduces to the
    paper's unnormalized sum ``alpha * kl + (1 - alpha) * feat``.

    A unified (class-conditional) model has one set of statistics per category: the buffers then have shape
    ``(num_classes,)`` and :meth:`forward` picks each image's row by its class label.

    Args:
        alpha: Weight of the KL map (paper: 0.5).
        sigma: Standard deviation of the Gaussian smoothing in pixels; 0 disables it (paper: off).
        num_classes: Categories with their own statistics (``None``: one set, scalar buffers).

    Example:
        >>> generator = AnomalyMapGenerator(alpha=0.5)
        >>> generator(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, alpha: float = 0.5, sigma: float = 0.0, num_classes: int | None = None) -> None:
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

    def moments(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pixel count, sum and sum of squares of each map, per class: ``(G, 2, 3)`` float64, ``G`` = classes or 1.

        Moments of several batches (or ranks) add up; :meth:`set_moments` turns their sum into the statistics.
        """
        groups = 1 if self.num_classes is None else self.num_classes
        if self.num_classes is not None and class_labels is None:
            msg = f"A generator with num_classes={self.num_classes} calibrates per class: pass class_labels."
            raise ValueError(msg)
        labels = torch.zeros(len(kl_maps), dtype=torch.long) if class_labels is None else class_labels.long().cpu()
        result = torch.zeros(groups, 2, 3, dtype=torch.float64)
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

    def calibrate(
        self,
        kl_maps: torch.Tensor,
        feature_maps: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> None:
        """Set the fusion statistics from the maps of anomaly-free images (per class when ``num_classes``)."""
        self.set_moments(self.moments(kl_maps, feature_maps, class_labels))

    def statistics(self, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(kl_mean, kl_std, feature_mean, feature_std)``; per image ``(N, 1, 1, 1)`` for a per-class generator."""
        values = (self.kl_mean, self.kl_std, self.feature_mean, self.feature_std)
        if self.num_classes is None:
            return values
        if class_labels is None:
            msg = f"A generator with num_classes={self.num_classes} needs each image's class label."
            raise ValueError(msg)
        return tuple(value[class_labels].view(-1, 1, 1, 1) for value in values)

    def forward(
        self,
        kl_map: torch.Tensor,
        feature_map: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse ``(N, 1, H, W)`` KL and feature maps into one ``(N, 1, H, W)`` anomaly map."""
        kl_mean, kl_std, feature_mean, feature_std = self.statistics(class_labels)
        kl = (kl_map - kl_mean) / kl_std
        feature = (feature_map - feature_mean) / feature_std
        fused = self.alpha * kl + (1.0 - self.alpha) * feature
        if self.sigma > 0:
            kernel = 2 * int(4.0 * self.sigma + 0.5) + 1
            fused = gaussian_blur2d(fused, (kernel, kernel), (self.sigma, self.sigma), border_type="replicate")
        return fused
