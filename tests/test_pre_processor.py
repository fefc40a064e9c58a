# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The exported pre-processor resizes as Lightning's does, at any input size, also after a checkpoint reload."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_diffad import DiffAD
from anomalib_diffad.pre_processor import (
    AntialiasedResize,
    DiffADPreProcessor,
    exportable_transform,
    resizes_to_fixed_size,
)


@pytest.mark.parametrize("size", [(64, 64), (40, 48), (72, 80), (300, 400), (1024, 1024), (65, 63), (1, 2)])
def test_antialiased_resize_matches_torch(size: tuple[int, int]) -> None:
    """Up- and downscaling, square or not, equal ``interpolate(bilinear, antialias=True)`` within float32 rounding."""
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(images, size=(64, 56), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(AntialiasedResize((64, 56))(images), expected, rtol=0, atol=1e-6)


def test_antialiased_resize_exports_with_symbolic_size() -> None:
    """``torch.export`` with dynamic height and width: one program that resizes every input size correctly."""
    height, width = torch.export.Dim("height", min=2), torch.export.Dim("width", min=2)
    program = torch.export.export(
        AntialiasedResize((32, 32)),
        (torch.rand(1, 3, 8, 8),),
        dynamic_shapes=({2: height, 3: width},),
    )
    for size in ((20, 28), (96, 50)):
        images = torch.rand(1, 3, *size)
        expected = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(program.module()(images), expected, rtol=0, atol=1e-6)


def test_exportable_transform_keeps_antialiasing_only_where_lightning_has_it() -> None:
    """Antialiased bilinear resizes to a fixed size become ``AntialiasedResize``; the rest is anomalib's."""
    transform = Compose([Resize((64, 64)), Resize((32, 32), antialias=False), Normalize([0.5] * 3, [0.5] * 3)])
    converted = exportable_transform(transform).transforms
    assert isinstance(converted[0], AntialiasedResize)
    assert converted[0].size == (64, 64)
    assert isinstance(converted[1], Resize)
    assert converted[1].antialias is False
    assert isinstance(converted[2], Normalize)
    assert resizes_to_fixed_size(exportable_transform(transform))
    assert not resizes_to_fixed_size(Compose([Resize(64), Normalize([0.5] * 3, [0.5] * 3)]))


@pytest.mark.parametrize("reloaded", [False, True])
def test_pre_processor_exports_the_lightning_transform(reloaded: bool) -> None:
    """DiffAD's pre-processor: ``forward`` (the exported graph) applies what Lightning's batch callbacks apply,
    when built (a ``Resize`` keeps its interpolation as the string ``"bilinear"``) and after
    ``load_checkpoint_config`` (checkpoint reload, ``anomalib export --ckpt_path``; then an ``InterpolationMode``)."""
    pre_processor = DiffAD.configure_pre_processor((64, 64))
    if reloaded:
        config = pre_processor.checkpoint_config()
        pre_processor = DiffADPreProcessor()
        pre_processor.load_checkpoint_config(config)
    images = torch.rand(1, 3, 90, 70, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pre_processor(images), pre_processor.transform(images), rtol=0, atol=1e-6)
