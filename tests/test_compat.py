# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""anomalib's benchmark table accepts jobs that report different keys once the plugin is imported."""

import math

import anomalib_diffad  # noqa: F401  (applies the patch)
from anomalib.pipelines.benchmark.job import BenchmarkJob


def test_collect_keeps_every_job_and_key() -> None:
    """Rows in job order; a key one job lacks is empty there, not a KeyError."""
    table = BenchmarkJob.collect([
        {"model.class_path": "DiffAD", "model.init_args.max_steps": 2, "pixel_AUPRO": 0.7, "image_AUROC": 0.9},
        {"model.class_path": "Patchcore", "model.init_args.backbone": "lite0", "image_AUROC": 0.8},
    ])
    assert list(table["model.class_path"]) == ["DiffAD", "Patchcore"]
    assert list(table.columns[:4]) == ["model.class_path", "model.init_args.max_steps", "pixel_AUPRO", "image_AUROC"]
    assert table["image_AUROC"].tolist() == [0.9, 0.8]
    assert math.isnan(table["pixel_AUPRO"][1])
    assert table["model.init_args.backbone"][1] == "lite0"
