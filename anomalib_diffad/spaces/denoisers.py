# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The denoisers of DiffAD's spaces: a diffusers UNet (pixel, feature) and a per-position MLP (patch).

Both take noisy data ``x_t`` ``(N, C, H, W)`` and integer timesteps ``t`` ``(N,)`` and return a
:class:`DenoiserOutput`: the predicted noise, the raw variance interpolation (improved DDPM) and, for the pixel
space's UNet, the predicted CNN features.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from diffusers import UNet2DModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

TARGET_STRIDE = 4
"""The pixel space's feature targets (and the feature head's predictions) are at 1/4 of the image resolution."""


class DenoiserOutput(NamedTuple):
    """Outputs of one denoiser pass."""

    eps: torch.Tensor
    """Predicted noise, shaped like ``x_t``."""
    v: torch.Tensor
    """Raw variance interpolation output in [-1, 1], shaped like ``x_t``."""
    features: torch.Tensor | None
    """Predicted pretrained-CNN features at 1/4 resolution ``(N, C_f, H/4, W/4)``; ``None`` without a head."""


class Denoiser(nn.Module):
    """diffusers ``UNet2DModel`` predicting epsilon and the variance interpolation, with an optional 1x1 feature head.

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


class ResidualMLPBlock(nn.Module):
    """``x + Linear(SiLU(Linear(SiLU(FiLM(LayerNorm(x))))))``, the FiLM scale and shift from the conditioning.

    The last linear layer starts at zero, so every block starts as the identity.

    Args:
        width: Channels of the residual stream and of the conditioning embedding.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = nn.Linear(width, 2 * width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., width)`` conditioned on ``embedding`` (broadcastable to ``x``)."""
        scale, shift = self.film(F.silu(embedding)).chunk(2, dim=-1)
        h = self.norm(x) * (1.0 + scale) + shift
        return x + self.out(F.silu(self.hidden(F.silu(h))))


class PatchDenoiser(nn.Module):
    """Per-position MLP denoiser: each position's vector is denoised on its own, with no spatial mixing.

    The network is a stack of :class:`ResidualMLPBlock` on one ``C``-vector, conditioned on the timestep
    (diffusers' sinusoidal ``Timesteps`` + ``TimestepEmbedding``) and, for a unified model, a class embedding.
    Every layer acts on the channel axis only, so changing one position's input changes no other position's
    output: the model has to learn the density of normal patch vectors rather than denoise from context.

    Args:
        data_channels: Channels ``C`` of each position's vector.
        width: Channels of the residual stream.
        num_blocks: Residual blocks.
        num_classes: Number of class embeddings (``None`` for an unconditional denoiser).

    Example:
        >>> denoiser = PatchDenoiser(data_channels=8, width=32, num_blocks=2)
        >>> denoiser(torch.zeros(2, 8, 4, 4), torch.tensor([1, 500])).eps.shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, data_channels: int, width: int = 256, num_blocks: int = 3, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width, width)
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes, width)
        self.input = nn.Linear(data_channels, width)
        self.blocks = nn.ModuleList(ResidualMLPBlock(width) for _ in range(num_blocks))
        self.output_norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, 2 * data_channels)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> DenoiserOutput:
        """Predict noise and variance interpolation ``(N, C, H, W)`` for each position of ``xt``."""
        embedding = self.time_embedding(self.time_proj(t).to(xt.dtype))
        if self.class_embedding is not None:
            labels = torch.zeros_like(t) if class_labels is None else class_labels
            embedding = embedding + self.class_embedding(labels)
        embedding = embedding[:, None, None, :]
        h = self.input(xt.permute(0, 2, 3, 1))
        for block in self.blocks:
            h = block(h, embedding)
        eps, v = self.output(F.silu(self.output_norm(h))).permute(0, 3, 1, 2).chunk(2, dim=1)
        return DenoiserOutput(eps=eps, v=v, features=None)
