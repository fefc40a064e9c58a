# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Post-processor of DiffAD: thresholds that work from normals alone, a normalization that never cuts a map."""

import logging
import math
from types import SimpleNamespace

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import F1AdaptiveThreshold, MinMax
from anomalib.post_processing import PostProcessor
from lightning.pytorch import LightningModule, Trainer

from anomalib_diffad.data.multi import select_images

logger = logging.getLogger(__name__)

CATEGORY_BUFFERS = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
"""Per-category buffers of a unified post-processor, each ``(num_classes,)`` and named ``category_<name>``."""
NORMALIZATION_SLOPE = 8.0
"""Slope of the logistic normalization: ``threshold +- (max - min) / 2`` maps to about 0.02 and 0.98."""


def upper_quantile(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """The ``quantile`` of all ``values`` (an order statistic, no size limit unlike ``torch.quantile``)."""
    flat = values.detach().flatten().float()
    return flat.kthvalue(min(flat.numel(), max(1, math.ceil(quantile * flat.numel())))).values


class DiffADPostProcessor(PostProcessor):
    """anomalib ``PostProcessor`` whose thresholds work from normal validation images and that never cuts maps.

    (The map fusion itself is calibrated on training normals by the model:
    :meth:`~anomalib_diffad.torch_model.DiffADModel.calibrate`.)

    - **Thresholds** come from validation, as in every anomalib model: anomalib's F1-adaptive thresholds when
      the validation images include anomalies; with normals only (a split taken from train) the F1 threshold
      would be the largest normal score, so the thresholds are the ``normal_quantile`` of the normal image
      scores and of the normal pixels instead.
    - **Normalization** is logistic, ``sigmoid(8 (x - threshold) / (max - min))``: the threshold maps to 0.5
      as in anomalib, but the mapping is strictly increasing, so no clamp cuts a map (anomalib's linear
      normalization clamps to [0, 1], which flattened whole maps to 0 with normals-only validation) and
      threshold-free metrics (AUROC, AUPRO) of the normalized outputs equal those of the raw maps.

    Statistics, thresholds and min/max are buffers, so they survive checkpoint reload and are constants of the
    exported graph. With ``num_classes`` (a unified model) every category gets its own thresholds and min/max
    (buffers ``category_<name>`` of shape ``(num_classes,)``, from that category's validation images); the
    scalar buffers of anomalib's ``PostProcessor`` then hold the values pooled over all categories.

    Args:
        num_classes: Categories with their own calibration (``None``: one set, as anomalib's).
        normal_quantile: Quantile of the normal validation scores and pixels used as thresholds when
            validation has no anomalous image.
        **kwargs: anomalib ``PostProcessor`` arguments.

    Example:
        >>> post_processor = DiffADPostProcessor()
        >>> bool(post_processor.image_min.isnan())
        True
        >>> DiffADPostProcessor(num_classes=3).category_image_threshold.shape
        torch.Size([3])
    """

    def __init__(
        self,
        num_classes: int | None = None,
        normal_quantile: float = 0.99,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < normal_quantile <= 1.0:
            msg = f"Need 0 < normal_quantile <= 1, got {normal_quantile}."
            raise ValueError(msg)
        self.num_classes = num_classes
        self.normal_quantile = normal_quantile
        if num_classes is not None:
            for name in CATEGORY_BUFFERS:
                self.register_buffer(f"category_{name}", torch.full((num_classes,), float("nan")))
        self._cache: list[SimpleNamespace] = []

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "normal_quantile")

    @staticmethod
    def _normalize(
        preds: torch.Tensor | None,
        norm_min: torch.Tensor,
        norm_max: torch.Tensor,
        threshold: torch.Tensor,
    ) -> torch.Tensor | None:
        """Strictly increasing logistic normalization around ``threshold``; raw values while uncalibrated."""
        if preds is None:
            return preds
        threshold = torch.where(torch.isnan(threshold), (norm_max + norm_min) / 2, threshold)
        value_range = norm_max - norm_min
        safe_range = torch.where(value_range > 0, value_range, torch.ones_like(value_range))
        normalized = torch.sigmoid(NORMALIZATION_SLOPE * (preds - threshold) / safe_range)
        has_range = ~torch.isnan(norm_min) & ~torch.isnan(norm_max)
        return torch.where(has_range, normalized, preds)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the outputs of an earlier validation run."""
        del trainer, pl_module
        self._cache = []

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args,
        **kwargs,
    ) -> None:
        """Feed anomalib's threshold and min/max metrics, and keep the batch for the normals-only thresholds."""
        super().on_validation_batch_end(trainer, pl_module, outputs, *args, **kwargs)
        categories = pl_module.categories.labels(outputs) if self.num_classes is not None else None
        gt_mask = getattr(outputs, "gt_mask", None)
        self._cache.append(
            SimpleNamespace(
                pred_score=outputs.pred_score.detach().cpu(),
                anomaly_map=outputs.anomaly_map.detach().cpu(),
                gt_label=outputs.gt_label.cpu(),
                gt_mask=None if gt_mask is None else gt_mask.cpu(),
                category=None if categories is None else categories.cpu(),
            ),
        )

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """anomalib's thresholds and min/max, normal quantiles where validation has no anomaly, per category."""
        normals_only = bool(self._cache) and not any(bool(batch.gt_label.any()) for batch in self._cache)
        if normals_only:  # anomalib's F1 threshold needs anomalies (it warns and returns the largest normal score)
            self._image_threshold_metric.reset()
            self._pixel_threshold_metric.reset()
        super().on_validation_epoch_end(trainer, pl_module)
        if not self._cache:
            return
        if self.enable_thresholding and normals_only:
            scores, maps = self._normal_outputs(self._cache)
            self._image_threshold.copy_(upper_quantile(scores, self.normal_quantile))
            self._pixel_threshold.copy_(upper_quantile(maps, self.normal_quantile))
        if self.num_classes is not None:
            self._calibrate_categories(self._cache)
        self._cache = []

    @staticmethod
    def _normal_outputs(batches: list[SimpleNamespace]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and maps of the normal images of ``batches``."""
        normal = [batch.gt_label == 0 for batch in batches]
        scores = torch.cat([batch.pred_score[mask] for batch, mask in zip(batches, normal, strict=True)])
        maps = torch.cat([batch.anomaly_map[mask] for batch, mask in zip(batches, normal, strict=True)])
        return scores, maps

    @torch.no_grad()
    def _calibrate_categories(self, batches: list[SimpleNamespace]) -> None:
        """Per-category thresholds (as the pooled ones) and min/max (anomalib's metrics) of the validation maps."""
        for index in range(self.num_classes):
            metrics = {
                "image_threshold": F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False),
                "pixel_threshold": F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False),
                "image": MinMax(fields=["pred_score"], strict=False),
                "pixel": MinMax(fields=["anomaly_map"], strict=False),
            }
            subsets = []
            for batch in batches:
                selected = batch.category == index
                if bool(selected.any()):
                    subsets.append(select_images(batch, ("pred_score", "anomaly_map", "gt_label", "gt_mask"), selected))
            for subset in subsets:
                for metric in metrics.values():
                    metric.update(subset)
            if not subsets:
                logger.warning("Category %d has no validation images: it keeps its previous calibration.", index)
                continue
            device = self.category_image_threshold.device
            if self.enable_thresholding:
                if any(bool(subset.gt_label.any()) for subset in subsets):
                    thresholds = [metrics[name].compute() for name in ("image_threshold", "pixel_threshold")]
                else:
                    scores, maps = self._normal_outputs(subsets)
                    thresholds = [upper_quantile(values, self.normal_quantile) for values in (scores, maps)]
                self.category_image_threshold[index] = thresholds[0].to(device)
                self.category_pixel_threshold[index] = thresholds[1].to(device)
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
            if preds is None:
                normalized.append(None)
                continue
            values = self.category_values(class_labels, preds.ndim)
            normalized.append(
                self._normalize(preds, values[f"{kind}_min"], values[f"{kind}_max"], values[f"{kind}_threshold"]),
            )
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
        self.post_process_batch(outputs, pl_module.categories.labels(outputs) if self.num_classes is not None else None)

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
