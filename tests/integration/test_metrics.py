# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Known answers of the test metrics through DiffAD's test path (post-processor, evaluator, AUPRO).

The checkpoint's calibration normalizes whatever the model outputs; here the model outputs maps whose
metrics are known exactly: the ground-truth mask itself (every metric 1), and a constant (AUROC 0.5, AUPRO
0.15, F1 of predicting every image and pixel defective).
"""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from anomalib.data import Batch, MVTecAD
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from anomalib_diffad import DiffAD

FAR = 1e6
"""Raw map value far outside any calibrated range: normalizes to exactly 0 or 1."""


def _test_with_maps(
    anomaly_map: Callable[[Batch], torch.Tensor],
    tiny_project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> dict[str, float]:
    """``Engine.test`` of the tiny checkpoint with the model's maps replaced; image score = map maximum."""
    model = DiffAD(**tiny_model_args)

    def scores(batch: Batch, *args, **kwargs) -> Batch:
        del args, kwargs
        maps = anomaly_map(batch)
        return batch.update(anomaly_map=maps, pred_score=maps.amax(dim=(1, 2, 3)))

    model.validation_step = scores  # test_step scores through validation_step
    engine = Engine(logger=False, default_root_dir=tmp_path, accelerator="cpu", devices=1, enable_progress_bar=False)
    datamodule = MVTecAD(root=dataset_root, category="brick", eval_batch_size=3, num_workers=0)
    return engine.test(model=model, datamodule=datamodule, ckpt_path=tiny_project["ckpt"], verbose=False)[0]


def _defect_fractions(dataset_root: Path) -> tuple[float, float]:
    """Share of defective test images, and of defective pixels over all test pixels."""
    test = dataset_root / "brick" / "test"
    images = sorted(test.glob("*/*.png"))
    defective = [path for path in images if path.parent.name != "good"]
    masks = sorted((dataset_root / "brick" / "ground_truth").glob("*/*.png"))
    pixels = sum(int((read_image(path, as_tensor=False).mean(axis=-1) > 0.5).sum()) for path in masks)
    return len(defective) / len(images), pixels / (len(images) * 64 * 64)


def test_ground_truth_maps_score_one(
    tiny_project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """Maps equal to the ground-truth masks give AUROC, AUPRO and F1 of 1 at both levels: the masks, labels and
    predictions reach every metric paired with the right image."""

    def ground_truth(batch: Batch) -> torch.Tensor:
        return (batch.gt_mask.float().unsqueeze(1) * 2 - 1) * FAR

    results = _test_with_maps(ground_truth, tiny_project, dataset_root, tiny_model_args, tmp_path)
    expected = dict.fromkeys(("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score", "pixel_F1Score"), 1.0)
    assert results == pytest.approx(expected, abs=1e-6)


def test_constant_maps_score_chance(
    tiny_project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """A constant map ranks nothing: AUROC 0.5 at both levels, AUPRO 0.15. Above every threshold it flags every
    image and pixel, so F1 is ``2p / (1 + p)`` with ``p`` the share of defective images (pixels)."""

    def constant(batch: Batch) -> torch.Tensor:
        return torch.full((batch.image.shape[0], 1, *batch.image.shape[-2:]), FAR)

    results = _test_with_maps(constant, tiny_project, dataset_root, tiny_model_args, tmp_path)
    image_share, pixel_share = _defect_fractions(dataset_root)
    assert 0.0 < pixel_share < image_share == 0.5
    assert results["image_AUROC"] == pytest.approx(0.5, abs=1e-6)
    assert results["pixel_AUROC"] == pytest.approx(0.5, abs=1e-6)
    assert results["image_F1Score"] == pytest.approx(2 * image_share / (1 + image_share), abs=1e-6)
    assert results["pixel_F1Score"] == pytest.approx(2 * pixel_share / (1 + pixel_share), abs=1e-6)
    # one threshold: the PRO curve is the line from (0, 0) to (1, 1); its area up to FPR 0.3, over 0.3, is 0.15
    assert results["pixel_AUPRO"] == pytest.approx(0.15, abs=1e-6)
