# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The demo's report: which test images the summary picture shows, and its layout."""

from pathlib import Path

import numpy as np

from diffad_tools.report import SUMMARY_ROWS, Example, example_files, metric_line, summary_figure


def test_example_files_are_two_normals_and_one_per_defect_type(dataset_root: Path) -> None:
    """Two good test images, then the first image of each defect type with its mask."""
    files = example_files(dataset_root / "brick")
    assert [kind for kind, _, _ in files] == ["good", "good", "missing", "patch", "scratch", "stain"]
    assert [image.parent.name for _, image, _ in files] == ["good", "good", "missing", "patch", "scratch", "stain"]
    assert files[0][2] is None
    for kind, image, mask in files[2:]:
        assert mask == dataset_root / "brick" / "ground_truth" / kind / f"{image.stem}_mask.png"
        assert mask.is_file()


def test_summary_figure_has_one_block_per_category() -> None:
    """A block per category titled with its metric row; image, ground truth and map rows; one column per image."""
    rows = [
        {"category": "brick", "image_AUROC": 0.9, "pixel_AUROC": 0.95},
        {"category": "grass", "image_AUROC": 0.8, "pixel_AUROC": 0.85},
    ]
    rng = np.random.default_rng(0)

    def example(kind: str, score: float) -> Example:
        return Example(kind, rng.random((16, 16, 3)), np.zeros((16, 16)), rng.random((16, 16)), score)

    examples = {"brick": [example("good", 0.1), example("scratch", 0.9)], "grass": [example("good", 0.2)]}
    figure = summary_figure(rows, examples)
    assert [block.get_suptitle() for block in figure.subfigs] == [
        "brick: image_AUROC 0.900 | pixel_AUROC 0.950",
        "grass: image_AUROC 0.800 | pixel_AUROC 0.850",
    ]
    brick_axes = figure.subfigs[0].axes
    assert len(brick_axes) == len(SUMMARY_ROWS) * 2
    assert [axis.get_title() for axis in brick_axes] == ["good", "scratch", "", "", "score 0.10", "score 0.90"]
    assert [axis.get_ylabel() for axis in brick_axes[::2]] == list(SUMMARY_ROWS)
    grass_axes = figure.subfigs[1].axes
    assert len(grass_axes) == len(SUMMARY_ROWS) * 2  # as wide as the widest block; the spare column stays empty
    assert [len(axis.images) for axis in grass_axes] == [1, 0, 1, 0, 1, 0]
    assert metric_line({"category": "x", "pixel_AUPRO": 0.5}) == "x: pixel_AUPRO 0.500"
