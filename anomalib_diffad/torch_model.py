# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""PyTorch model of DiffAD: a pixel-space DDPM with learned variance and a feature-prediction head.

In train mode :class:`DiffADModel` returns the tensors the loss needs; in eval mode it scores images
(KL map + feature map at a few noise levels, fused) and returns an ``InferenceBatch``.
"""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from diffusers import UNet2DModel
from torch import nn

from anomalib_diffad.anomaly_map import AnomalyMapGenerator, feature_distance_map, feature_error_map, top_k_mean
from anomalib_diffad.diffusion import (
    DiffusionSchedule,
    posterior_kl_map,
    predict_x0_from_eps,
    q_sample,
    standardize_per_image,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGET_STRIDE = 4
"""The feature targets (and the feature head's predictions) are at 1/4 of the image resolution."""
FEATURE_SPACE_STRIDE = 8
"""Resolution of the diffused features in feature space: 1/8 of the image (32 x 32 at 256 px)."""
SPACES = ("pixel", "feature")


class DenoiserOutput(NamedTuple):
    """Outputs of one denoiser pass."""

    eps: torch.Tensor
    """Predicted noise ``(N, 3, H, W)``."""
    v: torch.Tensor
    """Raw variance interpolation output in [-1, 1] ``(N, 3, H, W)``."""
    features: torch.Tensor | None
    """Predicted pretrained-CNN features at 1/4 resolution ``(N, C_f, H/4, W/4)``; ``None`` without a head."""


class TrainOutput(NamedTuple):
    """Tensors of one training step, consumed by :class:`~anomalib_diffad.loss.DiffADLoss`."""

    x0: torch.Tensor
    xt: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    prediction: DenoiserOutput
    target_features: torch.Tensor | None
    """Targets of the feature head (``None`` in feature space, where the features are the diffused data)."""


class Denoiser(nn.Module):
    """diffusers ``UNet2DModel`` predicting epsilon and the variance interpolation, with a 1x1 feature head.

    The feature head ``GroupNorm -> SiLU -> Conv1x1`` reads the output of one decoder (up) block, captured
    with a forward hook, and is resized to 1/4 of the input resolution like the paper's target features.
    With ``feature_channels=0`` there is no head (feature space: the data are the features).

    Args:
        block_out_channels: Channels of each UNet resolution level.
        layers_per_block: Residual blocks per level.
        attention_levels: Indices of the levels (0 = full resolution) that get self-attention.
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups.
        num_classes: Number of class embeddings (``None`` for an unconditional UNet).
        feature_channels: Channels of the predicted features (0: no feature head).
        feature_block: Index of the up block whose output feeds the head (``None``: the block at 1/4 resolution).
        data_channels: Channels of the diffused data (3 for RGB pixels).
    """

    def __init__(
        self,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        attention_levels: Sequence[int],
        attention_head_dim: int,
        norm_num_groups: int,
        num_classes: int | None,
        feature_channels: int,
        feature_block: int | None = None,
        data_channels: int = 3,
    ) -> None:
        super().__init__()
        levels = len(block_out_channels)
        self.unet = UNet2DModel(
            in_channels=data_channels,
            out_channels=2 * data_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(
                "AttnDownBlock2D" if level in attention_levels else "DownBlock2D" for level in range(levels)
            ),
            up_block_types=tuple(
                "AttnUpBlock2D" if levels - 1 - index in attention_levels else "UpBlock2D" for index in range(levels)
            ),
            layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            resnet_time_scale_shift="scale_shift",
            num_class_embeds=num_classes,
        )
        self.num_classes = num_classes
        self.feature_head: nn.Module | None = None
        self._decoder_features: torch.Tensor | None = None
        if feature_channels:
            self.feature_block = max(levels - 3, 0) if feature_block is None else feature_block
            block_channels = tuple(reversed(block_out_channels))[self.feature_block]
            self.feature_head = nn.Sequential(
                nn.GroupNorm(norm_num_groups, block_channels),
                nn.SiLU(),
                nn.Conv2d(block_channels, feature_channels, kernel_size=1),
            )
            self.unet.up_blocks[self.feature_block].register_forward_hook(self._capture_decoder_features)

    def _capture_decoder_features(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._decoder_features = output

    def forward(self, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> DenoiserOutput:
        """Predict noise, variance interpolation and features for noisy images ``xt`` at timesteps ``t``."""
        if self.num_classes is not None and class_labels is None:
            class_labels = torch.zeros_like(t)
        out = self.unet(xt, t, class_labels=class_labels).sample
        eps, v = out.chunk(2, dim=1)
        if self.feature_head is None:
            return DenoiserOutput(eps=eps, v=v, features=None)
        decoder_features = self._decoder_features
        self._decoder_features = None
        size = (xt.shape[-2] // TARGET_STRIDE, xt.shape[-1] // TARGET_STRIDE)
        decoder_features = F.interpolate(decoder_features, size=size, mode="bilinear", align_corners=False)
        return DenoiserOutput(eps=eps, v=v, features=self.feature_head(decoder_features))


def aligned_crop_offsets(
    batch_size: int,
    image_size: tuple[int, int],
    crop_size: int,
    grid: int,
) -> tuple[list[int], list[int]]:
    """Random top-left corners of ``crop_size`` windows, one per image, on multiples of ``grid``.

    On the grid of the feature targets, a crop's targets can be cut from the whole image's target map.
    """
    height, width = image_size
    tops = grid * torch.randint(0, (height - crop_size) // grid + 1, (batch_size,))
    lefts = grid * torch.randint(0, (width - crop_size) // grid + 1, (batch_size,))
    return tops.tolist(), lefts.tolist()


def crop_at(tensors: torch.Tensor, tops: Sequence[int], lefts: Sequence[int], size: int, scale: int = 1) -> torch.Tensor:
    """The ``size // scale`` windows at ``(top // scale, left // scale)`` of each tensor of a batch."""
    side = size // scale
    return torch.stack([
        tensor[:, top // scale : top // scale + side, left // scale : left // scale + side]
        for tensor, top, left in zip(tensors, tops, lefts, strict=True)
    ])


def tile_offsets(length: int, tile: int) -> list[int]:
    """Start offsets of ``tile``-long windows at stride ``tile // 2`` that cover ``length``, the last one flush."""
    offsets = list(range(0, length - tile + 1, tile // 2))
    return offsets if offsets[-1] == length - tile else [*offsets, length - tile]


class ComponentMaps(NamedTuple):
    """DiffAD's two anomaly cues of a batch, each ``(N, 1, H, W)`` and averaged over the scoring timesteps."""

    kl: torch.Tensor
    """Per-image standardized posterior KL (pixel level)."""
    feature: torch.Tensor
    """Feature-prediction squared error, upsampled to the image (feature level)."""


class DiffADModel(nn.Module):
    """DiffAD torch model: DDPM denoiser with an EMA copy, frozen feature extractor and scoring pipeline.

    Two spaces share the diffusion math (:mod:`anomalib_diffad.diffusion`), the KL map and the fusion:

    - ``pixel`` (the paper): the DDPM diffuses RGB images; a head predicts the frozen CNN's features at 1/4
      resolution; cues: the per-image z-scored posterior KL and the feature-prediction error.
    - ``feature``: the DDPM diffuses the frozen CNN's standardized features at 1/8 resolution (a 32 x 32,
      152-channel "image" at 256 px with Lite0 ``blocks.2`` + ``blocks.4``), on whole images; cues: the
      posterior KL (averaged over channels, standardized by the training normals' statistics rather than per
      image, so that images keep their level) and ``1 - cos`` between the features and the one-step ``x_0``
      estimate; both upsampled to the image. No ``x_0`` clipping (features are not bounded to [-1, 1]).

    Args:
        space: ``"pixel"`` or ``"feature"`` (see above).
        image_size: ``(H, W)`` of the pre-processed images; sizes the fixed scoring noise.
        block_out_channels: UNet channels per resolution level.
        layers_per_block: UNet residual blocks per level.
        attention_levels: UNet levels with self-attention (0 = full resolution).
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups of the UNet and the head.
        num_classes: Class embeddings of the UNet (``None``: unconditional).
        backbone: timm backbone of the frozen feature extractor.
        layers: Backbone layers whose features the head predicts (paper: strides 2 to 16), or that are diffused.
        num_timesteps: Diffusion steps ``T``.
        score_timesteps: Timesteps at which images are noised for scoring (paper: 20, 201, 401).
        alpha: Weight of the KL map in the fused map.
        top_k: Pixels averaged into the image score.
        smoothing_sigma: Gaussian smoothing of the fused map (0: off).
        subtract_normal_map: Subtract the calibration normals' mean fused map (see
            :class:`~anomalib_diffad.anomaly_map.AnomalyMapGenerator`).
        train_crop_size: Side of the random training crops (``None``: full images). Their feature targets are
            cut from the whole image's target map (crops lie on its 4-pixel grid), so training predicts exactly
            the targets that scoring compares against.
        score_tile_size: Pixel space: the denoiser scores overlapping tiles of this side (stride half a tile),
            so that its GroupNorm and attention see inputs of the training crops' size; overlapping predictions
            are averaged. ``None``: whole images.
        standardize_features: Predict per-channel standardized features (statistics of the training images,
            see :meth:`fit_feature_statistics`) instead of the raw ones.
        noise_seed: Seed of the fixed scoring noise.

    Example:
        >>> model = DiffADModel(image_size=(32, 32), block_out_channels=(16, 32), attention_levels=(),
        ...                     norm_num_groups=8, layers=("blocks.0", "blocks.1"), score_timesteps=(20,))
        >>> model.eval()(torch.zeros(1, 3, 32, 32)).anomaly_map.shape
        torch.Size([1, 1, 32, 32])
    """

    def __init__(
        self,
        space: str = "pixel",
        image_size: tuple[int, int] = (256, 256),
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: Sequence[int] = (3,),
        attention_head_dim: int = 32,
        norm_num_groups: int = 16,
        num_classes: int | None = None,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] = ("blocks.0", "blocks.1", "blocks.2", "blocks.4"),
        num_timesteps: int = 1000,
        score_timesteps: Sequence[int] = (20, 201, 401),
        alpha: float = 0.5,
        top_k: int = 64,
        smoothing_sigma: float = 0.0,
        subtract_normal_map: bool = False,
        train_crop_size: int | None = None,
        score_tile_size: int | None = None,
        standardize_features: bool = True,
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        if space not in SPACES:
            msg = f"space must be one of {SPACES}, got {space!r}."
            raise ValueError(msg)
        if score_tile_size is not None and (space != "pixel" or score_tile_size > min(image_size)):
            msg = f"score_tile_size={score_tile_size} needs the pixel space and at most the image size {image_size}."
            raise ValueError(msg)
        if space == "feature" and train_crop_size is not None:
            msg = "The feature space trains on whole images: train_crop_size must be None."
            raise ValueError(msg)
        self.space = space
        self.feature_stride = TARGET_STRIDE if space == "pixel" else FEATURE_SPACE_STRIDE
        if any(not 0 <= t < num_timesteps for t in score_timesteps):
            msg = f"score_timesteps {tuple(score_timesteps)} must lie in [0, {num_timesteps})."
            raise ValueError(msg)
        self.image_size = tuple(image_size)
        self.score_timesteps = tuple(int(t) for t in score_timesteps)
        self.top_k = top_k
        self.train_crop_size = train_crop_size
        self.score_tile_size = score_tile_size
        self.schedule = DiffusionSchedule(num_timesteps)
        self.feature_extractor = TimmFeatureExtractor(backbone=backbone, layers=layers, pre_trained=False)
        self.feature_extractor.requires_grad_(False)  # frozen; DDP rejects trainable parameters without gradients
        denoiser_args = {
            "block_out_channels": tuple(block_out_channels),
            "layers_per_block": layers_per_block,
            "attention_levels": tuple(attention_levels),
            "attention_head_dim": attention_head_dim,
            "norm_num_groups": norm_num_groups,
            "num_classes": num_classes,
            "feature_channels": sum(self.feature_extractor.out_dims) if space == "pixel" else 0,
            "data_channels": 3 if space == "pixel" else sum(self.feature_extractor.out_dims),
        }
        self.crop_grid = max(TARGET_STRIDE, 2 ** (len(block_out_channels) - 1))
        if train_crop_size is not None and train_crop_size % self.crop_grid:
            msg = (
                f"train_crop_size={train_crop_size} must be a multiple of {self.crop_grid} (the feature targets' "
                "stride and the UNet's downsampling)."
            )
            raise ValueError(msg)
        if score_tile_size is not None and score_tile_size % (2 * self.crop_grid):
            msg = f"score_tile_size={score_tile_size} must be a multiple of {2 * self.crop_grid} (twice the UNet grid)."
            raise ValueError(msg)
        self.denoiser = Denoiser(**denoiser_args)
        self.ema_denoiser = Denoiser(**denoiser_args)
        self.ema_denoiser.load_state_dict(self.denoiser.state_dict())
        self.ema_denoiser.requires_grad_(False)
        self.register_buffer("ema_updates", torch.tensor(0, dtype=torch.long))
        self.standardize_features = standardize_features
        channels = sum(self.feature_extractor.out_dims)
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
        generator = torch.Generator().manual_seed(noise_seed)
        data_shape = (denoiser_args["data_channels"], *(side // self.feature_stride if space == "feature" else side for side in self.image_size))
        noise = torch.randn(len(self.score_timesteps), 1, *data_shape, generator=generator)
        self.register_buffer("score_noise", noise, persistent=False)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CNN features of ``[-1, 1]`` images, each layer resized to 1/``feature_stride``, concatenated.

        Pixel space: the feature head's targets (1/4); feature space: the diffused data ``x_0`` (1/8).
        """
        size = (images.shape[-2] // self.feature_stride, images.shape[-1] // self.feature_stride)
        normalized = ((images + 1.0) / 2.0 - self.imagenet_mean) / self.imagenet_std
        features = self.feature_extractor(normalized).values()
        features = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], 1)
        if self.standardize_features:
            return (features - self.feature_channel_mean) / self.feature_channel_std
        return features

    @torch.no_grad()
    def fit_feature_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-channel mean and standard deviation of the target features over ``[-1, 1]`` image batches.

        Under ``torch.distributed`` the sums are all-reduced: every rank gets the statistics of all ranks' images.
        """
        standardize, self.standardize_features = self.standardize_features, False
        total, total_sq, count = 0.0, 0.0, 0
        for images in batches:
            features = self.target_features(images).double()
            total = total + features.sum(dim=(0, 2, 3))
            total_sq = total_sq + (features**2).sum(dim=(0, 2, 3))
            count += features.numel() // features.shape[1]
        self.standardize_features = standardize
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # each rank saw its shard of the training set: sum over all ranks so every rank gets the same statistics
            channels = self.feature_channel_mean.shape[1]
            sums = torch.zeros(2 * channels + 1, dtype=torch.float64, device=self.feature_channel_mean.device)
            if count:
                sums[:channels], sums[channels:-1] = total, total_sq
            sums[-1] = count
            torch.distributed.all_reduce(sums)
            total, total_sq, count = sums[:channels], sums[channels:-1], int(sums[-1].item())
        if count == 0:
            msg = "Cannot fit feature statistics: no training images."
            raise ValueError(msg)
        mean = total / count
        std = (total_sq / count - mean**2).clamp(min=0).sqrt().clamp(min=1e-3)
        self.feature_channel_mean.copy_(mean.view_as(self.feature_channel_mean))
        self.feature_channel_std.copy_(std.view_as(self.feature_channel_std))
        self.feature_statistics_fitted.fill_(True)

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """Move the EMA weights towards the trained ones, with the warm-up ``min(decay, (1+n)/(10+n))``."""
        self.ema_updates += 1
        rate = min(decay, (1.0 + self.ema_updates.item()) / (10.0 + self.ema_updates.item()))
        ema = list(self.ema_denoiser.parameters())
        torch._foreach_lerp_(ema, list(self.denoiser.parameters()), 1.0 - rate)  # noqa: SLF001

    def forward(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> TrainOutput | InferenceBatch:
        """Return the loss inputs in train mode, or scores and anomaly maps (``InferenceBatch``) in eval mode."""
        if self.training:
            return self.training_outputs(images, class_labels)
        return self.score(images, class_labels)

    def training_outputs(self, images: torch.Tensor, class_labels: torch.Tensor | None = None) -> TrainOutput:
        """Noise (crops of) images, or their features, at uniform timesteps; predict noise, variance, features.

        The feature targets are computed on the whole images, as in scoring, then cut at each crop's place.
        """
        with torch.no_grad():
            target = self.target_features(images)
        if self.space == "feature":
            x0, target = target, None
        else:
            x0 = images
        size = self.train_crop_size
        if target is not None and size is not None and (size < images.shape[-2] or size < images.shape[-1]):
            tops, lefts = aligned_crop_offsets(images.shape[0], images.shape[-2:], size, self.crop_grid)
            x0 = crop_at(images, tops, lefts, size)
            target = crop_at(target, tops, lefts, size, scale=TARGET_STRIDE)
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
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

    def component_scores(
        self,
        images: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        step_indices: Sequence[int] | None = None,
    ) -> ComponentMaps:
        """KL map and feature map ``(N, 1, H, W)`` of ``[-1, 1]`` images, each averaged over the score timesteps.

        All timesteps go through the EMA denoiser in one batched pass. ``step_indices`` selects a subset of
        ``score_timesteps`` (default: all).
        """
        indices = list(range(len(self.score_timesteps))) if step_indices is None else list(step_indices)
        size = images.shape[-2:]
        data = self.target_features(images) if self.space == "feature" else images
        batch, _, height, width = data.shape
        steps = len(indices)
        x0 = data.repeat(steps, 1, 1, 1)
        # expand + reshape rather than repeat_interleave(batch), which torch.export fixes to the example batch
        timesteps = torch.tensor([self.score_timesteps[i] for i in indices], device=images.device)
        t = timesteps[:, None].expand(steps, batch).reshape(-1)
        noise = self.scoring_noise(indices, batch, height, width).to(images.dtype)
        xt = q_sample(self.schedule, x0, t, noise)
        labels = None if class_labels is None else class_labels.repeat(steps)
        tiled = self.score_tile_size is not None
        prediction = self.tiled_denoise(xt, t, labels) if tiled else self.ema_denoiser(xt, t, labels)
        pixel = self.space == "pixel"
        kl = posterior_kl_map(self.schedule, x0, xt, t, prediction.eps, prediction.v, clip_x0=pixel)
        kl = standardize_per_image(kl) if pixel else kl
        kl_map = kl.mean(dim=1, keepdim=True).view(steps, batch, 1, height, width).mean(dim=0)
        if pixel:
            target = self.target_features(images).repeat(steps, 1, 1, 1)
            feature_map = feature_error_map(prediction.features, target, (height, width))
        else:
            x0_estimate = predict_x0_from_eps(self.schedule, xt, t, prediction.eps, clip=False)
            feature_map = feature_distance_map(x0, x0_estimate)
        feature_map = feature_map.view(steps, batch, 1, height, width).mean(dim=0)
        if not pixel:
            kl_map = F.interpolate(kl_map, size=size, mode="bilinear", align_corners=False)
            feature_map = F.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)
        return ComponentMaps(kl=kl_map, feature=feature_map)

    def tiled_denoise(self, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> DenoiserOutput:
        """The EMA denoiser on overlapping ``score_tile_size`` tiles (stride half a tile), overlaps averaged."""
        tile, stride, (height, width) = self.score_tile_size, TARGET_STRIDE, xt.shape[-2:]
        eps, v, counts = torch.zeros_like(xt), torch.zeros_like(xt), xt.new_zeros(1, 1, height, width)
        feature_channels = self.ema_denoiser.feature_head[-1].out_channels  # pixel space always has the head
        features = xt.new_zeros(xt.shape[0], feature_channels, height // stride, width // stride)
        for top in tile_offsets(height, tile):
            for left in tile_offsets(width, tile):
                window = (..., slice(top, top + tile), slice(left, left + tile))
                small = (..., *(slice(start // stride, (start + tile) // stride) for start in (top, left)))
                prediction = self.ema_denoiser(xt[window], t, class_labels)
                eps[window] += prediction.eps
                v[window] += prediction.v
                features[small] += prediction.features
                counts[window] += 1
        return DenoiserOutput(eps=eps / counts, v=v / counts, features=features / counts[..., ::stride, ::stride])

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
