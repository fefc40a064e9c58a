# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""PyTorch model of DiffAD: a DDPM with learned variance in one of three spaces, and its scoring pipeline.

In train mode :class:`DiffADModel` returns the tensors the loss needs; in eval mode it scores images
(the space's two cues at a few noise levels, fused) and returns an ``InferenceBatch``.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn
from torch.utils.checkpoint import checkpoint

from anomalib_diffad.anomaly_map import AnomalyMapGenerator, top_k_mean
from anomalib_diffad.backbone import load_pretrained_weights
from anomalib_diffad.diffusion import DenoiserOutput, DiffusionSchedule, q_sample
from anomalib_diffad.metrics import GroupedMoments
from anomalib_diffad.spaces import DiffusionSpace, PixelSpace

# ImageNet statistics, not timm's 0.5 / 0.5 config of Lite0: the same pixel AUROC (see backbone.py)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TRAIN_PIXELS_PER_CHUNK = 2 * 256 * 256
"""Diffused pixels (images x pixels each) of one training chunk: two whole 256 px images, 32 64 px crops.

With the default UNet a 256 px image costs about 0.73 GiB of activations in a training step."""
SCORE_PIXELS_PER_CHUNK = 2 * 3 * 256 * 256
"""Diffused pixels of one scoring chunk (images x scoring timesteps x pixels each): two 256 px images at three
timesteps (about 0.47 GiB per image with the default UNet)."""
TIMESTEP_FUSIONS = ("mean", "scaled_mean", "gaussian", "scaled_mean_and_gaussian")
"""How the scoring passes' cues are combined (``timestep_fusion`` of :class:`DiffADModel`)."""
SCALED_FUSIONS = ("scaled_mean", "scaled_mean_and_gaussian")
GAUSSIAN_FUSIONS = ("gaussian", "scaled_mean_and_gaussian")
GAUSSIAN_SHRINKAGE = 0.1
"""Weight of its diagonal in the covariance of ``timestep_fusion="gaussian"`` (a stable inverse from few images)."""
LOG_FLOOR = 1e-12
"""Smallest KL whose logarithm ``timestep_fusion="gaussian"`` takes."""


class TrainOutput(NamedTuple):
    """Tensors of one training step, consumed by :class:`~anomalib_diffad.loss.DiffADLoss`."""

    x0: torch.Tensor
    xt: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    prediction: DenoiserOutput
    target_features: torch.Tensor | None
    """Targets of the feature head (``None`` in the feature and patch spaces, where the features are the data)."""


class ComponentMaps(NamedTuple):
    """DiffAD's two anomaly cues of a batch, each ``(N, 1, H, W)`` and averaged over the scoring timesteps."""

    kl: torch.Tensor
    """Posterior KL (pixel space: z-scored per image), upsampled to the image."""
    feature: torch.Tensor
    """The space's second cue (pixel: feature-prediction error; feature, patch: ``1 - cos``), upsampled."""


class DiffADModel(nn.Module):
    """DiffAD torch model: DDPM denoiser with an EMA copy, frozen feature extractor and scoring pipeline.

    Three spaces (:mod:`anomalib_diffad.spaces`) share the diffusion math (:mod:`anomalib_diffad.diffusion`),
    the fixed scoring noise, the averaging over passes and the fusion; each space says what is diffused, builds
    the denoiser that denoises it and says which two cues one reverse step gives:

    - :class:`~anomalib_diffad.spaces.PixelSpace` (the paper): RGB images, a UNet with a feature head; the
      per-image z-scored posterior KL and the feature-prediction error.
    - :class:`~anomalib_diffad.spaces.FeatureSpace`: the frozen CNN's standardized features at 1/8 resolution
      (152 channels at 32 x 32 for 256 px with Lite0 ``blocks.2`` + ``blocks.4``), a UNet; the channel-mean
      posterior KL (standardized by the training normals, not per image) and ``1 - cos`` between the features
      and the one-step ``x_0`` estimate.
    - :class:`~anomalib_diffad.spaces.PatchSpace`: the same features averaged over ``feature_pool``
      neighbourhoods, each position's vector denoised on its own by an MLP; the same cues as the feature space.

    Args:
        space: The configured space (``None``: ``PixelSpace()``, the paper's).
        image_size: ``(H, W)`` of the pre-processed images; sizes the fixed scoring noise.
        num_classes: Class embeddings of the denoiser (``None``: unconditional).
        backbone: timm backbone of the frozen feature extractor.
        layers: Backbone layers whose features the head predicts (paper: strides 2 to 16), or that are diffused.
        num_timesteps: Diffusion steps ``T``.
        train_timesteps: Training draws each timestep uniformly below this (``None``: all ``T``, the paper's);
            a lower bound spends the denoiser's capacity on the small timesteps that scoring uses, which must
            lie below it. The schedule stays that of ``T`` steps.
        score_timesteps: Timesteps at which images are noised for scoring (paper: 20, 201, 401); a repeated
            timestep gets its own fixed noise draw.
        alpha: Weight of the KL map in the fused map.
        top_k: Pixels averaged into the image score.
        smoothing_sigma: Gaussian smoothing of the fused map (0: off).
        subtract_normal_map: Subtract the calibration normals' mean fused map (see
            :class:`~anomalib_diffad.anomaly_map.AnomalyMapGenerator`).
        timestep_fusion: How the scoring passes' cues are combined (fitted by :meth:`calibrate`). ``"mean"``: their
            mean, where the KL's own scale (larger at small ``t``) weighs the passes; ``"scaled_mean"``: each
            pass divided by its mean over the calibration normals first, so that every timestep weighs the
            same; ``"gaussian"``: the KL map is each position's Mahalanobis distance between the vector of its
            passes' log KLs and a Gaussian fitted on the calibration normals' positions (MSMA's second stage,
            Mahmood et al., ICLR 2021): a position is anomalous where the KL's profile over the noise levels
            is unusual, whatever its level; ``"scaled_mean_and_gaussian"``: the sum of the scaled mean (the KL's
            level) and the Mahalanobis distance (its profile), each standardized by its mean and standard
            deviation over the calibration normals' positions. The second cue is averaged as with ``"mean"``
            or ``"scaled_mean"``. The pixel space takes ``"mean"`` only (its KL is z-scored per image).
        standardize_features: Use per-channel standardized features (statistics of the training images, see
            :meth:`fit_feature_statistics`) instead of the raw ones.
        noise_seed: Seed of the fixed scoring noise.

    Example:
        >>> space = PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8)
        >>> model = DiffADModel(space, image_size=(32, 32), layers=("blocks.0", "blocks.1"), score_timesteps=(20,))
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).anomaly_map.shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        space: DiffusionSpace | None = None,
        image_size: tuple[int, int] = (256, 256),
        num_classes: int | None = None,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] = ("blocks.0", "blocks.1", "blocks.2", "blocks.4"),
        num_timesteps: int = 1000,
        train_timesteps: int | None = None,
        score_timesteps: Sequence[int] = (20, 201, 401),
        alpha: float = 0.5,
        top_k: int = 64,
        smoothing_sigma: float = 0.0,
        subtract_normal_map: bool = False,
        timestep_fusion: str = "mean",
        standardize_features: bool = True,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        self.diffusion_space = PixelSpace() if space is None else space
        self.image_size = tuple(image_size)
        if timestep_fusion not in TIMESTEP_FUSIONS:
            msg = f"timestep_fusion must be one of {TIMESTEP_FUSIONS}, got {timestep_fusion!r}."
            raise ValueError(msg)
        self.diffusion_space.check(self.image_size, timestep_fusion)
        self.train_timesteps = num_timesteps if train_timesteps is None else train_timesteps
        if not 1 <= self.train_timesteps <= num_timesteps:
            msg = f"train_timesteps must lie in [1, num_timesteps = {num_timesteps}], got {train_timesteps}."
            raise ValueError(msg)
        if any(not 0 <= t < self.train_timesteps for t in score_timesteps):
            msg = f"score_timesteps {tuple(score_timesteps)} must lie in [0, {self.train_timesteps})."
            raise ValueError(msg)
        self.score_timesteps = tuple(int(t) for t in score_timesteps)
        self.top_k = top_k
        self.schedule = DiffusionSchedule(num_timesteps)
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=layers, pre_trained=False)
        self.feature_extractor.requires_grad_(False)  # frozen; DDP rejects trainable parameters without gradients
        channels = sum(self.feature_extractor.out_dims)
        self.denoiser = self.diffusion_space.build_denoiser(channels, num_classes)
        self.ema_denoiser = self.diffusion_space.build_denoiser(channels, num_classes)
        self.ema_denoiser.load_state_dict(self.denoiser.state_dict())
        self.ema_denoiser.requires_grad_(False)
        self.register_buffer("ema_updates", torch.tensor(0, dtype=torch.long))
        self.standardize_features = standardize_features
        self.register_buffer("feature_channel_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_channel_std", torch.ones(1, channels, 1, 1))
        self.register_buffer("feature_statistics_fitted", torch.tensor(False))
        self.num_classes = num_classes
        self.anomaly_map_generator = AnomalyMapGenerator(
            alpha=alpha,
            sigma=smoothing_sigma,
            num_classes=num_classes,
            normal_map_size=self.image_size if subtract_normal_map else None,
        )
        self.timestep_fusion = timestep_fusion
        groups, steps = num_classes or 1, len(self.score_timesteps)
        if timestep_fusion in SCALED_FUSIONS:  # a checkpoint has the buffers of its fusion only
            self.register_buffer("pass_scale", torch.ones(groups, 2, steps))
        if timestep_fusion in GAUSSIAN_FUSIONS:
            self.register_buffer("pass_mean", torch.zeros(groups, steps))
            self.register_buffer("pass_covariance", torch.eye(steps).repeat(groups, 1, 1))
            self.register_buffer("pass_precision", torch.eye(steps).repeat(groups, 1, 1))
        if timestep_fusion == "scaled_mean_and_gaussian":  # mean and standard deviation of the level and distance
            self.register_buffer("fusion_statistics", torch.tensor([[0.0, 1.0], [0.0, 1.0]]).repeat(groups, 1, 1))
        generator = torch.Generator().manual_seed(noise_seed)
        data_shape = self.diffusion_space.data_shape(channels, self.image_size)
        noise = torch.randn(len(self.score_timesteps), 1, *data_shape, generator=generator)
        self.register_buffer("score_noise", noise, persistent=False)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def train_crop_size(self) -> int | None:
        """Side of the space's random training crops (``None``: whole images)."""
        return self.diffusion_space.train_crop_size

    @property
    def feature_stride(self) -> int:
        """Stride of the features ``target_features`` returns: 4 (pixel-space targets) or 8 (diffused features)."""
        return self.diffusion_space.feature_stride

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CNN features of ``[-1, 1]`` images, each layer pooled (patch space), resized to
        1/``feature_stride``, concatenated (and standardized).

        Pixel space: the feature head's targets (1/4); feature and patch spaces: the diffused data ``x_0`` (1/8).
        """
        size = (images.shape[-2] // self.feature_stride, images.shape[-1] // self.feature_stride)
        normalized = ((images + 1.0) / 2.0 - self.imagenet_mean) / self.imagenet_std
        features = self.feature_extractor(normalized).values()
        pool = self.diffusion_space.feature_pool
        if pool > 1:
            features = [F.avg_pool2d(f, pool, stride=1, padding=pool // 2) for f in features]
        features = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], 1)
        if self.standardize_features:
            return (features - self.feature_channel_mean) / self.feature_channel_std
        return features

    def load_pretrained_weights(self, pretrained_weights: str | None) -> None:
        """Fill the frozen feature extractor with pretrained weights
        (:func:`~anomalib_diffad.backbone.load_pretrained_weights`)."""
        load_pretrained_weights(self.feature_extractor, pretrained_weights)

    @torch.no_grad()
    def fit_feature_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-channel mean and standard deviation of the target features over ``[-1, 1]`` image batches.

        Under ``torch.distributed`` the moments are summed over the ranks (:class:`GroupedMoments`): every rank
        gets the statistics of all ranks' images.
        """
        standardize, self.standardize_features = self.standardize_features, False
        moments = GroupedMoments(shape=self.feature_channel_mean.shape[1:2]).to(self.feature_channel_mean.device)
        for images in batches:
            moments.update(self.target_features(images))
        self.standardize_features = standardize
        count, mean, variance = moments.compute()[0]
        if count[0] == 0:
            msg = "Cannot fit feature statistics: no training images."
            raise ValueError(msg)
        self.feature_channel_mean.copy_(mean.view_as(self.feature_channel_mean))
        self.feature_channel_std.copy_(variance.sqrt().clamp(min=1e-3).view_as(self.feature_channel_std))
        self.feature_statistics_fitted.fill_(True)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Move the EMA weights towards the trained ones, with the warm-up ``min(decay, (1+n)/(10+n))``."""
        self.ema_updates += 1
        rate = min(decay, (1.0 + self.ema_updates.item()) / (10.0 + self.ema_updates.item()))
        ema = list(self.ema_denoiser.parameters())
        torch._foreach_lerp_(ema, list(self.denoiser.parameters()), 1.0 - rate)

    def forward(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> TrainOutput | InferenceBatch:
        """Return the loss inputs in train mode, or scores and anomaly maps (``InferenceBatch``) in eval mode."""
        if self.training:
            return self.training_outputs(images, class_labels)
        return self.score(images, class_labels)

    def training_outputs(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> TrainOutput:
        """Noise the space's data of a batch at timesteps uniform below ``train_timesteps``; predict noise,
        variance (and features)."""
        with torch.no_grad():
            features = self.target_features(images)
        x0, target, class_labels = self.diffusion_space.training_data(images, features, class_labels)
        t = torch.randint(0, self.train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        xt = q_sample(self.schedule, x0, t, noise)
        prediction = self.denoiser(xt, t, class_labels)
        return TrainOutput(x0=x0, xt=xt, t=t, noise=noise, prediction=prediction, target_features=target)

    def scoring_noise(self, indices: Sequence[int], batch_size: int, height: int, width: int) -> torch.Tensor:
        """Fixed noise ``(S * N, C, H, W)`` of the scoring timesteps ``indices``, tiled past its stored size."""
        noise = self.score_noise[list(indices)]
        reps_h, reps_w = -(-height // noise.shape[-2]), -(-width // noise.shape[-1])
        noise = noise.repeat(1, 1, 1, reps_h, reps_w)[..., :height, :width]
        return noise.expand(-1, batch_size, -1, -1, -1).reshape(-1, noise.shape[2], height, width)

    def pass_maps(
        self,
        images: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        step_indices: Sequence[int] | None = None,
    ) -> ComponentMaps:
        """Each scoring pass's two cues ``(S, N, 1, h, w)`` of ``[-1, 1]`` images, at the data's resolution.

        All passes go through the EMA denoiser in one batch. ``step_indices`` selects a subset of
        ``score_timesteps`` (default: all); a repeated timestep is a pass with its own fixed noise draw.
        """
        indices = list(range(len(self.score_timesteps))) if step_indices is None else list(step_indices)
        features = self.target_features(images)
        data = self.diffusion_space.diffused_data(images, features)
        batch, _, height, width = data.shape
        steps = len(indices)
        x0 = data.repeat(steps, 1, 1, 1)
        # expand + reshape rather than repeat_interleave(batch), which torch.export fixes to the example batch
        timesteps = torch.tensor([self.score_timesteps[i] for i in indices], device=images.device)
        t = timesteps[:, None].expand(steps, batch).reshape(-1)
        noise = self.scoring_noise(indices, batch, height, width).to(images.dtype)
        xt = q_sample(self.schedule, x0, t, noise)
        labels = None if class_labels is None else class_labels.repeat(steps)
        prediction = self.diffusion_space.denoise(self.ema_denoiser, xt, t, labels)
        cues = self.diffusion_space.cues(self.schedule, x0, xt, t, prediction, features)
        return ComponentMaps(*(cue.view(steps, batch, 1, height, width) for cue in cues))

    def fused_passes(
        self,
        images: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        step_indices: Sequence[int] | None = None,
    ) -> tuple[ComponentMaps, torch.Tensor | None]:
        """The passes' mean cues (each pass scaled first with a scaled fusion) and the Mahalanobis distance of the
        log KLs (``None`` without a Gaussian fusion), ``(N, 1, h, w)`` each, at the data's resolution."""
        indices = list(range(len(self.score_timesteps))) if step_indices is None else list(step_indices)
        maps = self.pass_maps(images, class_labels, indices)
        fusion = self.timestep_fusion
        distance = self.pass_distance(maps.kl, class_labels, indices) if fusion in GAUSSIAN_FUSIONS else None
        if fusion in SCALED_FUSIONS:
            scale = self.pass_scale[0 if class_labels is None else class_labels][..., indices]  # (N, 2, S) or (2, S)
            scale = scale.movedim(-1, 0).reshape(len(indices), -1, 2, 1, 1, 1)  # (S, N or 1, cue, 1, 1, 1)
            maps = ComponentMaps(maps.kl / scale[:, :, 0], maps.feature / scale[:, :, 1])
        return ComponentMaps(maps.kl.mean(dim=0), maps.feature.mean(dim=0)), distance

    def component_scores(
        self,
        images: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        step_indices: Sequence[int] | None = None,
    ) -> ComponentMaps:
        """KL map and second cue ``(N, 1, H, W)`` of ``[-1, 1]`` images, each combined over the scoring passes
        (:meth:`fused_passes`) as ``timestep_fusion`` says and upsampled to the image."""
        means, distance = self.fused_passes(images, class_labels, step_indices)
        kl_map = distance if self.timestep_fusion == "gaussian" else means.kl
        if self.timestep_fusion == "scaled_mean_and_gaussian":
            statistics = self.fusion_statistics[0 if class_labels is None else class_labels]  # (2, 2) or (N, 2, 2)
            mean, std = statistics.reshape(-1, 2, 2).unbind(dim=-1)  # (N or 1, 2) each
            parts = torch.cat([means.kl, distance], dim=1)  # (N, 2, h, w): level and distance
            kl_map = ((parts - mean[..., None, None]) / std[..., None, None]).sum(dim=1, keepdim=True)
        feature_map = means.feature
        if self.diffusion_space.stride > 1:
            kl_map, feature_map = (
                F.interpolate(cue, size=images.shape[-2:], mode="bilinear", align_corners=False)
                for cue in (kl_map, feature_map)
            )
        return ComponentMaps(kl=kl_map, feature=feature_map)

    def pass_distance(
        self, kl: torch.Tensor, class_labels: torch.Tensor | None, indices: Sequence[int],
    ) -> torch.Tensor:
        """Mahalanobis distance ``(N, 1, h, w)`` of each position's log KLs ``(S, N, 1, h, w)`` from the calibrated
        Gaussian of its category (``timestep_fusion="gaussian"``); a subset of the passes (``indices``) uses the
        marginal Gaussian of those passes."""
        group = 0 if class_labels is None else class_labels
        mean = self.pass_mean[group][..., indices]  # (S,) or (N, S)
        if list(indices) == list(range(len(self.score_timesteps))):
            precision = self.pass_precision[group]
        else:
            precision = torch.linalg.inv(self.pass_covariance[group][..., indices, :][..., indices])
        batch = kl.shape[1]
        centred = kl.float().clamp(min=LOG_FLOOR).log().movedim(0, -1).reshape(batch, -1, len(indices))
        centred = centred - mean.reshape(-1, 1, len(indices))  # (N, h * w, S)
        precision = precision.reshape(-1, len(indices), len(indices)).expand(batch, -1, -1)
        squared = ((centred @ precision) * centred).sum(dim=-1).clamp(min=0)
        return squared.sqrt().view(batch, 1, *kl.shape[-2:])

    def score(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> InferenceBatch:
        """Anomaly maps and top-k image scores.

        A class-conditional model (``num_classes``) needs ``class_labels``: they select the UNet's class
        embedding and the category's fusion statistics.
        """
        if self.num_classes is not None and class_labels is None:
            msg = (
                f"This DiffAD is class-conditional (num_classes={self.num_classes}): scoring needs each image's "
                "category index (class_labels)."
            )
            raise ValueError(msg)
        maps = self.component_scores(images, class_labels)
        anomaly_map = self.anomaly_map_generator(maps.kl, maps.feature, class_labels)
        return InferenceBatch(pred_score=top_k_mean(anomaly_map, self.top_k), anomaly_map=anomaly_map)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Calibrate the scoring on normal images: the timestep fusion (the Gaussian of the log KLs, the pass
        scales, the level's and distance's statistics, as ``timestep_fusion`` needs them), then the map fusion's
        statistics and normal map (:meth:`AnomalyMapGenerator.calibrate_batches`).

        A pass's scale is the mean of its cues over the images. The Gaussian's mean and covariance are those of
        every position's vector of log KLs, the covariance shrunk toward its diagonal by
        :data:`GAUSSIAN_SHRINKAGE`. A class without images keeps what it had. Under ``torch.distributed`` the
        sums of all ranks' images count (:class:`GroupedMoments`).

        Args:
            batches: ``[-1, 1]`` images and their class labels (``None`` unless class-conditional); iterated once
                per fitted part (e.g. a list or a DataLoader).
        """
        if self.timestep_fusion != "mean":
            self.fit_pass_statistics(batches)
        if self.timestep_fusion == "scaled_mean_and_gaussian":
            self.fit_fusion_statistics(batches)
        self.anomaly_map_generator.calibrate_batches(
            (*self.component_scores(images, labels), labels) for images, labels in batches
        )

    def fit_fusion_statistics(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Fit the mean and standard deviation of the level and the distance of
        ``timestep_fusion="scaled_mean_and_gaussian"`` per class, over every position (see :meth:`calibrate`)."""
        moments = GroupedMoments(self.num_classes or 1, (2,))
        for images, labels in batches:
            means, distance = self.fused_passes(images, labels)
            moments.update(torch.cat([means.kl, distance], dim=1), labels)
        count, mean, variance = moments.to(self.fusion_statistics.device).compute().unbind(1)
        seen = count[:, 0] > 0
        std = variance.sqrt().clamp(min=1e-12)
        self.fusion_statistics[seen] = torch.stack([mean, std], dim=-1)[seen].to(self.fusion_statistics)

    def fit_pass_statistics(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Fit, per class and in one pass over the images' pass maps, what ``timestep_fusion`` needs: the pass
        scales and the Gaussian of the log KLs (see :meth:`calibrate`)."""
        groups, steps, fusion = self.num_classes or 1, len(self.score_timesteps), self.timestep_fusion
        scales = GroupedMoments(groups, (2, steps)) if fusion in SCALED_FUSIONS else None
        gaussian = GroupedMoments(groups, (steps + steps * steps,)) if fusion in GAUSSIAN_FUSIONS else None
        for images, labels in batches:
            maps = self.pass_maps(images, labels)
            if scales is not None:
                means = torch.stack([maps.kl.mean(dim=(2, 3, 4)), maps.feature.mean(dim=(2, 3, 4))])  # (2, S, N)
                scales.update(means.permute(2, 0, 1), labels)
            if gaussian is not None:
                vectors = maps.kl.float().clamp(min=LOG_FLOOR).log()[:, :, 0].movedim(0, 1).flatten(2)  # (N, S, h*w)
                products = (vectors[:, :, None] * vectors[:, None]).flatten(1, 2)
                gaussian.update(torch.cat([vectors, products], dim=1), labels)
        if scales is not None:
            count, mean, _ = scales.to(self.pass_scale.device).compute().unbind(1)
            seen = count[:, 0, 0] > 0
            self.pass_scale[seen] = mean[seen].abs().clamp(min=1e-12).to(self.pass_scale)
        if gaussian is not None:
            count, mean, _ = gaussian.to(self.pass_mean.device).compute().unbind(1)
            seen = count[:, 0] > 0
            first, second = mean[:, :steps], mean[:, steps:].view(-1, steps, steps)
            covariance = second - first[:, :, None] * first[:, None]
            diagonal = torch.diag_embed(torch.diagonal(covariance, dim1=-2, dim2=-1))
            covariance = (1 - GAUSSIAN_SHRINKAGE) * covariance + GAUSSIAN_SHRINKAGE * diagonal
            self.pass_mean[seen] = first[seen].to(self.pass_mean)
            self.pass_covariance[seen] = covariance[seen].to(self.pass_covariance)
            self.pass_precision[seen] = torch.linalg.inv(covariance[seen]).to(self.pass_precision)


def images_per_chunk(model: "DiffADModel", image_shape: Sequence[int], training: bool) -> int:
    """Most images of one denoiser call: :data:`TRAIN_PIXELS_PER_CHUNK` or :data:`SCORE_PIXELS_PER_CHUNK` divided
    by the positions the denoiser sees per image (at least one image).

    The datamodule sets the batch (anomalib's ``MVTecAD`` defaults to 32 whole images: about 23 GiB of
    activations in one training step of the default UNet at 256 px), so ``DiffAD`` trains
    (:func:`losses_in_chunks`) and scores (:func:`score_in_chunks`) a larger batch in chunks. Every preset's
    batch fits one chunk.

    Args:
        model: The torch model.
        image_shape: ``(..., H, W)`` of the pre-processed images.
        training: A training chunk (the crop, or the whole image, once) or a scoring one (the whole image, or a
            tile, at every scoring timestep).
    """
    space = model.diffusion_space
    height, width = image_shape[-2] // space.stride, image_shape[-1] // space.stride
    side = space.train_crop_size if training else space.score_tile_size
    if side is not None:
        height, width = min(height, side), min(width, side)
    pixels = height * width * (1 if training else len(model.score_timesteps))
    return max(1, (TRAIN_PIXELS_PER_CHUNK if training else SCORE_PIXELS_PER_CHUNK) // pixels)


def losses_in_chunks(
    model: DiffADModel,
    loss: Callable[[TrainOutput], dict[str, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms of a training batch in chunks of at most :func:`images_per_chunk` images: the batch means.

    Each chunk's forward is recomputed during backward (activation checkpointing, the same random draws), so
    memory is one chunk's whatever the batch, at the cost of a second forward; one optimizer step takes the
    whole batch's gradient.
    """
    size = images_per_chunk(model, images.shape, training=True)
    if images.shape[0] <= size:
        return loss(model(images, labels))
    totals: dict[str, torch.Tensor] = {}
    for start in range(0, images.shape[0], size):
        chunk, part = images[start : start + size], None if labels is None else labels[start : start + size]
        losses = checkpoint(lambda x, y: loss(model(x, y)), chunk, part, use_reentrant=False)
        for name, value in losses.items():  # chunk means weighted by the chunks' sizes
            weighted = chunk.shape[0] / images.shape[0] * value
            totals[name] = totals[name] + weighted if name in totals else weighted
    return totals


def score_in_chunks(model: DiffADModel, images: torch.Tensor, labels: torch.Tensor | None = None) -> InferenceBatch:
    """Scores and maps of pre-processed images in chunks of at most :func:`images_per_chunk` images (each image is
    scored on its own: the chunks change no value)."""
    size = images_per_chunk(model, images.shape, training=False)
    chunks = [
        model(images[i : i + size], None if labels is None else labels[i : i + size])
        for i in range(0, images.shape[0], size)
    ]
    return InferenceBatch(*(None if part[0] is None else torch.cat(part) for part in zip(*chunks, strict=True)))
