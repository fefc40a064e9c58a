# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD's pre-processor: anomalib's, with an exported resize that antialiases as training does.

anomalib exports a pre-processor's ``Resize`` with antialiasing switched off (ONNX opsets below 18 cannot
express it, and OpenVINO ignores ONNX's ``antialias`` attribute), so an exported model scored a downscaled raw
image differently from Lightning, which resizes with antialiasing. :class:`AntialiasedResize` computes the same
antialiased bilinear resize as ``torch.nn.functional.interpolate(..., antialias=True)`` with two matrix
products whose weights are built from the input size in the graph, so it exports at any input height and width.
"""

from collections.abc import Sequence
from typing import Any

import torch
from anomalib.pre_processing import PreProcessor
from anomalib.pre_processing.utils.transform import get_exportable_transform
from torch import nn
from torchvision.transforms.v2 import Compose, InterpolationMode, Resize, Transform


def antialiased_resize_weights(
    input_size: int,
    output_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Weights ``(output_size, input_size)`` of PyTorch's antialiased bilinear resize along one axis.

    Output pixel ``i`` averages the input pixels under a triangle filter centred at ``(i + 0.5) * scale`` that is
    ``max(scale, 1)`` pixels wide on each side (``scale = input_size / output_size``), normalized to sum to one:
    PyTorch's ``interpolate(mode="bilinear", align_corners=False, antialias=True)``, which equals plain bilinear
    interpolation when upsampling. ``input_size`` may be symbolic (``torch.export``).
    """
    scale = input_size / output_size
    centers = (torch.arange(output_size, dtype=dtype, device=device) + 0.5) * scale
    support = torch.full((), scale, dtype=dtype, device=device).clamp(min=1.0)
    sources = torch.arange(input_size, dtype=dtype, device=device) + 0.5
    weights = (1.0 - ((sources[None, :] - centers[:, None]) / support).abs()).clamp(min=0.0)
    return weights / weights.sum(dim=1, keepdim=True)


class AntialiasedResize(nn.Module):
    """Antialiased bilinear resize of ``(..., H, W)`` images to a fixed size, exportable at any ``H`` and ``W``.

    Args:
        size: Output ``(height, width)``.

    Example:
        >>> images = torch.rand(2, 3, 80, 72)
        >>> AntialiasedResize((64, 64))(images).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        height, width = size
        self.size = (int(height), int(width))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the last two dimensions of ``images`` to ``size``."""
        rows = antialiased_resize_weights(images.shape[-2], self.size[0], images.dtype, images.device)
        columns = antialiased_resize_weights(images.shape[-1], self.size[1], images.dtype, images.device)
        return rows @ images @ columns.T


def exportable_transform(transform: Transform | None) -> Transform | None:
    """anomalib's exportable version of ``transform``, keeping the antialiasing of each fixed-size bilinear resize.

    A ``Resize`` to an explicit ``(height, width)`` with bilinear antialiasing becomes :class:`AntialiasedResize`;
    every other transform is converted by anomalib's ``get_exportable_transform``.
    """
    if isinstance(transform, Compose):
        return Compose([exportable_transform(child) for child in transform.transforms])
    if (
        isinstance(transform, Resize)
        and transform.antialias
        and _interpolation(transform) == InterpolationMode.BILINEAR
        and transform.max_size is None
        and isinstance(transform.size, Sequence)
        and len(transform.size) == 2
    ):
        return AntialiasedResize(transform.size)
    return get_exportable_transform(transform)


def _interpolation(resize: Resize) -> InterpolationMode | int:
    """The resize's interpolation mode (a new ``Resize`` keeps it as given, e.g. ``"bilinear"``)."""
    mode = resize.interpolation
    return InterpolationMode(mode) if isinstance(mode, str) else mode


def resizes_to_fixed_size(transform: Transform | None) -> bool:
    """Whether ``transform`` (an exported transform) resizes every image to one fixed ``(height, width)``."""
    if isinstance(transform, Compose):
        return any(resizes_to_fixed_size(child) for child in transform.transforms)
    if isinstance(transform, Resize):
        return transform.max_size is None and isinstance(transform.size, Sequence) and len(transform.size) == 2
    return isinstance(transform, AntialiasedResize)


class DiffADPreProcessor(PreProcessor):
    """anomalib's ``PreProcessor`` whose exported transform (``forward``) resizes with antialiasing.

    Lightning applies ``transform`` as anomalib does; ``forward`` (the exported graph, ``TorchInferencer``)
    applies :func:`exportable_transform` of it, so raw images of any size score the same in both.

    Args:
        transform: Transform applied to the batches (see anomalib's ``PreProcessor``).

    Example:
        >>> from torchvision.transforms.v2 import Normalize
        >>> pre_processor = DiffADPreProcessor(Compose([Resize((64, 64)), Normalize([0.5] * 3, [0.5] * 3)]))
        >>> pre_processor(torch.rand(1, 3, 80, 72)).shape
        torch.Size([1, 3, 64, 64])
    """

    def __init__(self, transform: Transform | None = None) -> None:
        super().__init__(transform=transform)
        self.export_transform = exportable_transform(transform)

    def load_checkpoint_config(self, config: dict[str, Any]) -> None:
        """Restore the transform from a checkpoint, and its antialiased exported version."""
        super().load_checkpoint_config(config)
        self.export_transform = exportable_transform(self.transform)
