# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Thresholds and ranges from validation: F1-optimal with anomalies, normal quantiles without, per category."""

import math
from types import SimpleNamespace

import pytest
import torch

from anomalib_diffad.data.multi import CategoryImageBatch
from anomalib_diffad.post_processor import DiffADPostProcessor

QUANTILE = 0.75


def _batch(scores: list[float], labels: list[int], categories: list[int], offset: float = 0.0) -> CategoryImageBatch:
    """Images whose map is constant at their score plus ``offset``, masks all-anomalous for anomalous images."""
    score = torch.tensor(scores)
    label = torch.tensor(labels)
    return CategoryImageBatch(
        image=torch.zeros(len(scores), 3, 2, 2),
        pred_score=score,
        anomaly_map=(score + offset).view(-1, 1, 1).expand(-1, 2, 2).clone(),
        gt_label=label,
        gt_mask=label.bool().view(-1, 1, 1).expand(-1, 2, 2).clone(),
        category=torch.tensor(categories),
    )


def _validate(post: DiffADPostProcessor, batches: list[CategoryImageBatch]) -> None:
    module = SimpleNamespace(categories=SimpleNamespace(labels=lambda batch: batch.category))
    for batch in batches:
        post.on_validation_batch_end(None, module, batch)
    post.on_validation_epoch_end(None, module)


def _quantile(values: list[float]) -> float:
    """The ``QUANTILE`` order statistic: the ``ceil(q n)``-th smallest value."""
    return sorted(values)[math.ceil(QUANTILE * len(values)) - 1]


NORMALS = {0: [1.0, 2.0, 3.0, 4.0], 1: [10.0, 30.0, 20.0, 40.0], 2: [0.5, 0.25, 0.75, 1.0]}
ANOMALIES = {0: [6.0, 5.0], 1: [], 2: [3.0]}


def test_each_category_gets_thresholds_and_ranges_from_its_own_images() -> None:
    """A category with anomalies gets the F1-optimal threshold (its lowest anomalous score, here separating
    perfectly), a category of normals only the ``normal_quantile`` of its normal scores; each category's
    min/max are its own images'. With some anomalies, the pooled thresholds are anomalib's F1 thresholds."""
    post = DiffADPostProcessor(num_classes=3, normal_quantile=QUANTILE)
    scores, labels, categories = [], [], []
    for index in range(3):
        for values, label in ((NORMALS[index], 0), (ANOMALIES[index], 1)):
            scores += values
            labels += [label] * len(values)
            categories += [index] * len(values)
    order = torch.randperm(len(scores), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [[values[i] for i in order] for values in (scores, labels, categories)]
    _validate(post, [_batch(*(values[:7] for values in shuffled)), _batch(*(values[7:] for values in shuffled))])
    expected_thresholds = [5.0, _quantile(NORMALS[1]), 3.0]
    for level in ("image", "pixel"):
        torch.testing.assert_close(getattr(post, f"category_{level}_threshold"), torch.tensor(expected_thresholds))
        minimum = [min(NORMALS[i] + ANOMALIES[i]) for i in range(3)]
        maximum = [max(NORMALS[i] + ANOMALIES[i]) for i in range(3)]
        torch.testing.assert_close(getattr(post, f"category_{level}_min"), torch.tensor(minimum))
        torch.testing.assert_close(getattr(post, f"category_{level}_max"), torch.tensor(maximum))
    # pooled: anomalib's F1 threshold over all images (brick's 5.0 and gravel's 3.0 anomalies among 10 to 40)
    assert float(post.image_threshold) not in {_quantile(scores), float("nan")}


def test_normals_only_validation_thresholds_are_normal_quantiles() -> None:
    """Validation without any anomalous image: pooled thresholds are the ``normal_quantile`` of all normal
    scores and of all normal pixels, per category of that category's; never the largest normal score."""
    post = DiffADPostProcessor(num_classes=3, normal_quantile=QUANTILE)
    scores = NORMALS[0] + NORMALS[1] + NORMALS[2]
    categories = [0] * 4 + [1] * 4 + [2] * 4
    batches = [_batch(scores[:5], [0] * 5, categories[:5], 100.0), _batch(scores[5:], [0] * 7, categories[5:], 100.0)]
    _validate(post, batches)
    assert float(post.image_threshold) == _quantile(scores) == 10.0
    assert float(post.pixel_threshold) == _quantile(scores) + 100.0  # each map: 4 pixels at its score + 100
    expected = torch.tensor([_quantile(NORMALS[index]) for index in range(3)])
    torch.testing.assert_close(post.category_image_threshold, expected)
    torch.testing.assert_close(post.category_pixel_threshold, expected + 100.0)
    assert float(post.category_image_threshold.max()) < max(scores)


@pytest.mark.parametrize("quantile", [0.5, 1.0])
def test_single_model_normals_only_quantile(quantile: float) -> None:
    """A single-category post-processor takes the requested quantile of its normal validation scores."""
    post = DiffADPostProcessor(normal_quantile=quantile)
    module = SimpleNamespace(class_labels=lambda batch: None)
    batch = _batch([4.0, 1.0, 3.0, 2.0], [0] * 4, [0] * 4)
    post.on_validation_batch_end(None, module, batch)
    post.on_validation_epoch_end(None, module)
    assert float(post.image_threshold) == {0.5: 2.0, 1.0: 4.0}[quantile]
    assert (float(post.image_min), float(post.image_max)) == (1.0, 4.0)
