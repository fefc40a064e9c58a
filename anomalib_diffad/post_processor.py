# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Post-processor that calibrates DiffAD's map fusion on validation normals before thresholding."""

from types import SimpleNamespace

import torch
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_diffad.anomaly_map import top_k_mean


class DiffADPostProcessor(PostProcessor):
    """anomalib ``PostProcessor`` whose validation pass first calibrates the KL/feature fusion.

    During validation it keeps the component maps that the torch model computed for each batch. At the end
    of the epoch it sets the fusion statistics (:meth:`AnomalyMapGenerator.calibrate`) from the anomaly-free
    images, re-fuses every cached batch with them, and only then feeds anomalib's adaptive thresholds and
    min-max normalization. Statistics, thresholds and min/max are all buffers, so they survive checkpoint
    reload and are constants of the exported graph; ``forward`` is anomalib's unchanged.

    Example:
        >>> post_processor = DiffADPostProcessor()
        >>> bool(post_processor.image_min.isnan())
        True
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._cache: list[tuple[torch.Tensor, ...]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Drop what a previous (possibly interrupted) validation left behind."""
        del trainer, pl_module
        self._cache = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        *args,
        **kwargs,
    ) -> None:
        """Keep the batch's component maps, labels and masks until the fusion is calibrated."""
        del trainer, args, kwargs
        kl_map, feature_map = pl_module.model.component_maps
        gt_mask = getattr(outputs, "gt_mask", None)
        self._cache.append((
            kl_map.cpu(),
            feature_map.cpu(),
            outputs.gt_label.cpu(),
            None if gt_mask is None else gt_mask.cpu(),
        ))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Calibrate the fusion on normal images, then compute thresholds and min/max on the fused maps."""
        if not self._cache:
            return
        kl_maps, feature_maps, labels, _ = zip(*self._cache, strict=True)
        labels_all = torch.cat(labels)
        normal = labels_all == 0 if bool((labels_all == 0).any()) else torch.ones_like(labels_all, dtype=torch.bool)
        generator = pl_module.model.anomaly_map_generator
        generator.calibrate(torch.cat(kl_maps)[normal], torch.cat(feature_maps)[normal])
        device = generator.kl_mean.device
        for kl_map, feature_map, gt_label, gt_mask in self._cache:
            anomaly_map = generator(kl_map.to(device), feature_map.to(device))
            fused = SimpleNamespace(
                anomaly_map=anomaly_map,
                pred_score=top_k_mean(anomaly_map, pl_module.model.top_k),
                gt_label=gt_label.to(device),
                gt_mask=None if gt_mask is None else gt_mask.to(device),
            )
            super().on_validation_batch_end(trainer, pl_module, fused)
        self._cache = []
        super().on_validation_epoch_end(trainer, pl_module)
