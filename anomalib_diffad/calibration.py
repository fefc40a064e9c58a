# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Fusion calibration: DiffAD's statistics fitted on normal training images at the start of every validation.

The fused map z-scores each cue with statistics of normal images, and may subtract their mean map and divide
each scoring pass by its mean (``normalize_passes``). :class:`FusionCalibrationMixin` fits all of them on the
first ``calibration_images`` training images, in the module's own ``on_validation_epoch_start`` hook, so no
validation or test image fits any part of the model, whatever the datamodule's validation split is.
"""

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Subset

from anomalib_diffad.data.multi import CATEGORY_COLUMN

logger = logging.getLogger(__name__)


def calibration_indices(dataset: object, count: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The first ``count`` images of a training set (per category of a unified set), this rank's share of them.

    Deterministic (dataset order, no shuffling), so every validation calibrates on the same images; rank ``r``
    of ``world_size`` takes every ``world_size``-th of them, and the ranks' moments are summed.
    """
    samples = getattr(dataset, "samples", None)
    if samples is not None and CATEGORY_COLUMN in samples:
        categories = samples[CATEGORY_COLUMN].to_numpy()
        chosen = [i for c in sorted(set(categories.tolist())) for i in (categories == c).nonzero()[0][:count].tolist()]
    else:
        chosen = list(range(min(count, len(dataset))))
    return chosen[rank::world_size]


def _all_reduce(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum of ``values`` over the DDP ranks (``values`` itself without DDP), on the CPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.to(device)
        torch.distributed.all_reduce(values)
    return values.cpu()


class FusionCalibrationMixin:
    """``DiffAD``'s fusion statistics, normal map and pass scales, fitted on normal training images.

    Expects ``model`` (a :class:`~anomalib_diffad.torch_model.DiffADModel`), ``pre_processor``,
    ``calibration_images``, :meth:`class_labels` and :meth:`images_per_pass`. Every rank scores its share of
    the images and the sums are all-reduced, so DDP calibrates on the same images as one process.
    """

    def on_validation_epoch_start(self) -> None:
        """Calibrate the fusion on training normals before any validation image is scored."""
        self.calibrate_fusion()

    @torch.no_grad()
    def calibrate_fusion(self) -> None:
        """Set the pass scales (with ``normalize_passes``), then the fusion statistics (and the normal map when
        the generator subtracts one) from the first ``calibration_images`` training images' component maps."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_data", None)
        if dataset is None or len(dataset) == 0:
            logger.warning("No training images to calibrate the map fusion on: it keeps its stored statistics.")
            return
        indices = calibration_indices(dataset, self.calibration_images, trainer.global_rank, trainer.world_size)
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=min(getattr(datamodule, "eval_batch_size", 8), self.images_per_pass(training=False)),
            collate_fn=dataset.collate_fn,
        )
        model, generator = self.model, self.model.anomaly_map_generator
        if model.normalize_passes:
            groups, cues, passes = model.pass_scale.shape
            sums = torch.zeros(groups, cues, passes + 1, dtype=torch.float64)
            for images, labels in self._calibration_batches(loader):
                sums += model.pass_sums(images, labels)
            model.set_pass_scale(_all_reduce(sums, self.device))
        moments = torch.zeros(generator.num_classes or 1, 2, 3, dtype=torch.float64)
        pixel_sums = torch.zeros(generator.num_classes or 1, 3, *model.image_size, dtype=torch.float64)
        for images, labels in self._calibration_batches(loader):
            maps = model.component_scores(images, labels)
            moments += generator.moments(maps.kl, maps.feature, labels)
            if generator.subtracts_normal_map:
                pixel_sums += generator.pixel_sums(maps.kl, maps.feature, labels)
        generator.set_moments(_all_reduce(moments, self.device))
        if generator.subtracts_normal_map:
            generator.set_normal_map(_all_reduce(pixel_sums, self.device))
        logger.info("Map fusion calibrated on %d normal training images (this rank's share).", len(indices))

    def _calibration_batches(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Pre-processed images and category indices (``None`` unless unified) of each calibration batch."""
        transform = getattr(self.pre_processor, "transform", None)
        for batch in loader:
            images = batch.image.to(self.device)
            labels = None if self.model.num_classes is None else self.class_labels(batch).to(self.device)
            yield (transform(images) if transform else images), labels
