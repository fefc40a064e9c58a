# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Post-processor that calibrates DiffAD's map fusion on validation normals before thresholding."""

import logging
from types import SimpleNamespace

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold, MinMax
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_diffad.anomaly_map import top_k_mean
from anomalib_diffad.data.multi import select_images

logger = logging.getLogger(__name__)

CATEGORY_BUFFERS = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
"""Per-category buffers of a unified post-processor, each ``(num_classes,)`` and named ``category_<name>``."""


class DiffADPostProcessor(PostProcessor):
    """anomalib ``PostProcessor`` whose validation pass first calibrates the KL/feature fusion.

    During validation it keeps the component maps that the torch model computed for each batch. At the end
    of the epoch it sets the fusion statistics (:meth:`AnomalyMapGenerator.calibrate`) from the anomaly-free
    images, re-fuses every cached batch with them, and only then feeds anomalib's adaptive thresholds and
    min-max normalization. Statistics, thresholds and min/max are all buffers, so they survive checkpoint
    reload and are constants of the exported graph; ``forward`` is anomalib's unchanged.

    With ``num_classes`` (a unified model) every category gets its own fusion statistics, F1-adaptive
    thresholds and min/max (buffers ``category_<name>`` of shape ``(num_classes,)``, computed with anomalib's
    metrics on that category's validation images); images are normalized with their own category's values.
    The scalar buffers of anomalib's ``PostProcessor`` then hold the values pooled over all categories.

    Args:
        num_classes: Categories with their own calibration (``None``: one set, as anomalib's).
        **kwargs: anomalib ``PostProcessor`` arguments.

    Example:
        >>> post_processor = DiffADPostProcessor()
        >>> bool(post_processor.image_min.isnan())
        True
        >>> DiffADPostProcessor(num_classes=3).category_image_threshold.shape
        torch.Size([3])
    """

    def __init__(self, num_classes: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        if num_classes is not None:
            for name in CATEGORY_BUFFERS:
                self.register_buffer(f"category_{name}", torch.full((num_classes,), float("nan")))
        self._cache: list[tuple[torch.Tensor | None, ...]] = []

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
        """Keep the batch's component maps, labels, masks and categories until the fusion is calibrated."""
        del trainer, args, kwargs
        kl_map, feature_map = pl_module.model.component_maps
        gt_mask = getattr(outputs, "gt_mask", None)
        categories = pl_module.class_labels(outputs) if self.num_classes is not None else None
        self._cache.append((
            kl_map.cpu(),
            feature_map.cpu(),
            outputs.gt_label.cpu(),
            None if gt_mask is None else gt_mask.cpu(),
            None if categories is None else categories.cpu(),
        ))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Calibrate the fusion on normal images, then compute thresholds and min/max on the fused maps."""
        if not self._cache:
            return
        kl_maps, feature_maps, labels, _, categories = zip(*self._cache, strict=True)
        labels_all = torch.cat(labels)
        categories_all = None if self.num_classes is None else torch.cat(categories)
        normal = _normal_images(labels_all, categories_all)
        generator = pl_module.model.anomaly_map_generator
        generator.calibrate(
            torch.cat(kl_maps)[normal],
            torch.cat(feature_maps)[normal],
            None if categories_all is None else categories_all[normal],
        )
        device = generator.kl_mean.device
        fused_batches = []
        for kl_map, feature_map, gt_label, gt_mask, category in self._cache:
            category = None if category is None else category.to(device)
            anomaly_map = generator(kl_map.to(device), feature_map.to(device), category)
            fused = SimpleNamespace(
                anomaly_map=anomaly_map,
                pred_score=top_k_mean(anomaly_map, pl_module.model.top_k),
                gt_label=gt_label.to(device),
                gt_mask=None if gt_mask is None else gt_mask.to(device),
            )
            fused_batches.append((fused, category))
            super().on_validation_batch_end(trainer, pl_module, fused)
        self._cache = []
        super().on_validation_epoch_end(trainer, pl_module)
        if self.num_classes is not None:
            self._calibrate_categories(fused_batches)

    @torch.no_grad()
    def _calibrate_categories(self, batches: list[tuple[SimpleNamespace, torch.Tensor]]) -> None:
        """Per-category F1-adaptive thresholds and min/max (anomalib's metrics) of the fused validation maps."""
        for index in range(self.num_classes):
            metrics = {
                "image_threshold": F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False),
                "pixel_threshold": F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False),
                "image": MinMax(fields=["pred_score"], strict=False),
                "pixel": MinMax(fields=["anomaly_map"], strict=False),
            }
            for fused, category in batches:
                selected = category == index
                if not bool(selected.any()):
                    continue
                subset = select_images(fused, vars(fused), selected)
                for metric in metrics.values():
                    metric.to(fused.anomaly_map.device).update(subset)
            if not metrics["image"].update_called:
                logger.warning("Category %d has no validation images: it keeps its previous calibration.", index)
                continue
            device = self.category_image_threshold.device
            if self.enable_thresholding:
                for name in ("image_threshold", "pixel_threshold"):
                    getattr(self, f"category_{name}")[index] = metrics[name].compute().to(device)
            if self.enable_normalization:
                for kind in ("image", "pixel"):
                    minimum, maximum = metrics[kind].compute()
                    getattr(self, f"category_{kind}_min")[index] = minimum.to(device)
                    getattr(self, f"category_{kind}_max")[index] = maximum.to(device)

    def category_values(self, class_labels: torch.Tensor, ndim: int) -> dict[str, torch.Tensor]:
        """Each image's category thresholds and min/max, shaped ``(N, 1, ...)`` to broadcast over ``ndim`` dims.

        Thresholds fall back to the other level's where missing, as anomalib's ``image_threshold`` does.
        """
        shape = (-1,) + (1,) * (ndim - 1)
        values = {name: getattr(self, f"category_{name}")[class_labels].reshape(shape) for name in CATEGORY_BUFFERS}
        if self.enable_threshold_matching:
            image, pixel = values["image_threshold"], values["pixel_threshold"]
            values["image_threshold"] = torch.where(torch.isnan(image), pixel, image)
            values["pixel_threshold"] = torch.where(torch.isnan(pixel), image, pixel)
        return values

    def _normalize_categories(
        self,
        pred_score: torch.Tensor | None,
        anomaly_map: torch.Tensor | None,
        class_labels: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Scores and maps min-max normalized around each image's category thresholds."""
        normalized = []
        for preds, kind in ((pred_score, "image"), (anomaly_map, "pixel")):
            if preds is not None:
                values = self.category_values(class_labels, preds.ndim)
                preds = self._normalize(preds, values[f"{kind}_min"], values[f"{kind}_max"], values[f"{kind}_threshold"])
            normalized.append(preds)
        return normalized[0], normalized[1]

    def forward(self, predictions: InferenceBatch, class_labels: torch.Tensor | None = None) -> InferenceBatch:
        """anomalib's post-processing, with each image's category calibration when ``num_classes`` is set."""
        if self.num_classes is None:
            return super().forward(predictions)
        _require_labels(class_labels, self.num_classes)
        pred_score, anomaly_map = predictions.pred_score, predictions.anomaly_map
        if self.enable_normalization:
            pred_score, anomaly_map = self._normalize_categories(pred_score, anomaly_map, class_labels)
        pred_label = pred_mask = None
        if self.enable_thresholding:
            pred_label = self._apply_threshold(pred_score, self.normalized_image_threshold)
            pred_mask = self._apply_threshold(anomaly_map, self.normalized_pixel_threshold)
        return InferenceBatch(
            pred_label=pred_label,
            pred_score=pred_score,
            pred_mask=pred_mask,
            anomaly_map=anomaly_map,
        )

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Batch, *args, **kwargs) -> None:
        """Normalize and threshold the batch (with each image's category calibration when unified)."""
        del trainer, args, kwargs
        self.post_process_batch(outputs, pl_module.class_labels(outputs) if self.num_classes is not None else None)

    on_predict_batch_end = on_test_batch_end

    def post_process_batch(self, batch: Batch, class_labels: torch.Tensor | None = None) -> None:
        """anomalib's in-place post-processing, per category when ``num_classes`` is set."""
        if self.num_classes is None:
            super().post_process_batch(batch)
            return
        _require_labels(class_labels, self.num_classes)
        if self.enable_normalization:
            batch.pred_score, batch.anomaly_map = self._normalize_categories(
                batch.pred_score,
                batch.anomaly_map,
                class_labels,
            )
        if self.enable_thresholding:
            self.threshold_batch(batch)


def _require_labels(class_labels: torch.Tensor | None, num_classes: int) -> None:
    if class_labels is None:
        msg = f"A unified post-processor (num_classes={num_classes}) needs each image's category index."
        raise ValueError(msg)


def _normal_images(labels: torch.Tensor, categories: torch.Tensor | None) -> torch.Tensor:
    """Mask of the normal images; a category (or the whole set) without normals uses all its images."""
    normal = labels == 0
    groups = [torch.ones_like(normal)] if categories is None else [categories == c for c in categories.unique()]
    for group in groups:
        if not bool((normal & group).any()):
            normal = normal | group
    return normal
