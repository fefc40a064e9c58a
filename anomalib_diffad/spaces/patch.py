# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The patch space: the DDPM diffuses locally pooled feature vectors, each denoised on its own by an MLP."""

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from anomalib_diffad.diffusion import DenoiserOutput
from anomalib_diffad.spaces.base import DiffusionSpace

PATCH_SPACE_STRIDE = 8
"""Resolution of the patch vectors: 1/8 of the image (32 x 32 at 256 px)."""


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

    def __init__(
        self,
        data_channels: int,
        width: int = 256,
        num_blocks: int = 3,
        num_classes: int | None = None,
    ) -> None:
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


class PatchSpace(DiffusionSpace):
    """The DDPM diffuses locally pooled patch vectors, each denoised on its own by a :class:`PatchDenoiser`.

    The frozen CNN's features are averaged over ``feature_pool`` x ``feature_pool`` neighbourhoods at each
    layer's own resolution (PatchCore's local aggregation), then resized to 1/8 and standardized. The denoiser
    sees one position at a time, so it cannot reconstruct a defect from its surroundings: the optimal denoiser of
    a finite set of normal vectors is a soft nearest-neighbour average over them, and its posterior KL at a small
    ``t`` grows with the distance to the normal vectors.

    Cues (as the feature space's): the channel-mean posterior KL (no ``x_0`` clipping, no per-image z-scoring)
    and ``1 - cos`` between each vector and its one-step ``x_0`` estimate.

    Args:
        mlp_width: Channels of the MLP denoiser's residual stream.
        mlp_blocks: Residual blocks of the MLP denoiser.
        feature_pool: Side of the average pooling of each feature layer (odd; 1: none; PatchCore's 3).

    Raises:
        ValueError: A setting out of range, naming it.

    Example:
        >>> PatchSpace(mlp_width=32).to_config()["init_args"]
        {'mlp_width': 32, 'mlp_blocks': 3, 'feature_pool': 3}
    """

    stride = PATCH_SPACE_STRIDE
    feature_stride = PATCH_SPACE_STRIDE

    def __init__(self, mlp_width: int = 256, mlp_blocks: int = 3, feature_pool: int = 3) -> None:
        if mlp_width < 1:
            msg = f"mlp_width must be at least 1, got {mlp_width}."
            raise ValueError(msg)
        if mlp_blocks < 0:
            msg = f"mlp_blocks must be at least 0, got {mlp_blocks}."
            raise ValueError(msg)
        if feature_pool < 1 or feature_pool % 2 == 0:
            msg = f"feature_pool must be an odd positive side, got {feature_pool}."
            raise ValueError(msg)
        self.mlp_width = mlp_width
        self.mlp_blocks = mlp_blocks
        self.feature_pool = feature_pool

    def init_args(self) -> dict[str, Any]:
        """``mlp_width``, ``mlp_blocks`` and ``feature_pool``."""
        return {"mlp_width": self.mlp_width, "mlp_blocks": self.mlp_blocks, "feature_pool": self.feature_pool}

    def build_denoiser(self, feature_channels: int, num_classes: int | None) -> nn.Module:
        """A per-position MLP on ``feature_channels``-vectors."""
        return PatchDenoiser(feature_channels, self.mlp_width, self.mlp_blocks, num_classes=num_classes)

    def training_data(
        self, images: torch.Tensor, features: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Every position's vector as its own sample ``(N * h * w, C, 1, 1)``, so each gets its own timestep.

        The denoiser is per-position, so this changes no prediction; it only spreads the timesteps of a step
        over all vectors instead of one per image.
        """
        del images
        positions = features.shape[-2] * features.shape[-1]
        vectors = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1], 1, 1)
        labels = None if class_labels is None else class_labels.repeat_interleave(positions)
        return vectors, None, labels
