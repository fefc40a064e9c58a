# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Bounded denoiser passes: a batch larger than a memory budget is trained and scored in parts.

The datamodule sets the batch (anomalib's ``MVTecAD`` defaults to 32 whole images: about 23 GiB of activations
in one training pass of the default UNet at 256 px), so :class:`BoundedPassesMixin` splits what exceeds the
budget. Every preset's batch fits one pass, so presets run exactly as without it.
"""

from collections.abc import Sequence

import torch
from anomalib.data import InferenceBatch
from torch.utils.checkpoint import checkpoint

TRAIN_PIXELS_PER_PASS = 2 * 256 * 256
"""Diffused pixels (images x pixels each) of one training pass: two whole 256 px images, 32 64 px crops.

With the default UNet a 256 px image costs about 0.73 GiB of activations in a training step."""
SCORE_PIXELS_PER_PASS = 2 * 3 * 256 * 256
"""Diffused pixels of one scoring pass (images x scoring timesteps x pixels each): two 256 px images at three
timesteps (about 0.47 GiB per image with the default UNet)."""


class BoundedPassesMixin:
    """``DiffAD``'s training and scoring in passes of at most :meth:`images_per_pass` images.

    Expects ``model`` (a :class:`~anomalib_diffad.torch_model.DiffADModel`) and ``loss``.
    """

    def images_per_pass(self, training: bool, image_shape: Sequence[int] | None = None) -> int:
        """Most images one denoiser pass takes: :data:`TRAIN_PIXELS_PER_PASS` or :data:`SCORE_PIXELS_PER_PASS`
        divided by the positions the denoiser sees per image (at least one image).

        Args:
            training: A training pass (the crop, or the whole image, once) or a scoring pass (the whole image,
                or a tile, at every scoring timestep).
            image_shape: ``(H, W)`` of the pre-processed images (default: the model's ``image_size``).
        """
        space = self.model.diffusion_space
        height, width = (image_shape or self.model.image_size)[-2:]
        height, width = height // space.stride, width // space.stride
        side = space.train_crop_size if training else space.score_tile_size
        if side is not None:
            height, width = min(height, side), min(width, side)
        pixels = height * width * (1 if training else len(self.model.score_timesteps))
        return max(1, (TRAIN_PIXELS_PER_PASS if training else SCORE_PIXELS_PER_PASS) // pixels)

    def training_losses(
        self,
        images: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of a batch, computed in passes of at most :meth:`images_per_pass` images.

        Each part's forward runs under activation checkpointing (only its inputs are kept, and its forward is
        recomputed, with the same random timesteps, noise and crops, during backward), so memory is that of
        one part whatever the batch size, at the cost of a second forward. Each part draws its own timesteps,
        noise and crops from the same distributions; the terms are the parts' means weighted by their sizes,
        i.e. the batch means, and one optimizer step takes the whole batch's gradient.
        """
        size = self.images_per_pass(training=True, image_shape=images.shape)
        if images.shape[0] <= size:
            return self.loss(self.model(images, class_labels))
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, images.shape[0], size):
            part = slice(start, start + size)
            labels = None if class_labels is None else class_labels[part]
            losses = checkpoint(self._part_losses, images[part], labels, use_reentrant=False)
            weight = images[part].shape[0] / images.shape[0]
            for name, value in losses.items():
                totals[name] = totals[name] + weight * value if name in totals else weight * value
        return totals

    def _part_losses(self, images: torch.Tensor, class_labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return self.loss(self.model(images, class_labels))

    def score_images(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> InferenceBatch:
        """Scores and maps of pre-processed images, in passes of at most :meth:`images_per_pass` images.

        Every image is scored on its own (fixed noise, per-image statistics), so the passes change no value;
        they bound memory whatever the eval batch size.
        """
        size = self.images_per_pass(training=False, image_shape=images.shape)
        if images.shape[0] <= size:
            return self.model(images, class_labels)
        parts = [
            self.model(images[part], None if class_labels is None else class_labels[part])
            for part in (slice(start, start + size) for start in range(0, images.shape[0], size))
        ]
        return InferenceBatch(*(
            None if values[0] is None else torch.cat(values) for values in zip(*parts, strict=True)
        ))  # fmt: skip
