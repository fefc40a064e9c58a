# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The mask check on non-square images (VisA is 3:2, MVTec 3D-AD's tire 3:4): the aspect ratio is width / height."""

from pathlib import Path

import pytest
from PIL import Image

from anomalib_diffad.data.checks import check_mask_file


def _mask(tmp_path: Path, width: int, height: int) -> Path:
    path = tmp_path / f"{width}x{height}_mask.png"
    Image.new("L", (width, height)).save(path)
    return path


@pytest.mark.parametrize("image_size", [(300, 200), (300, 400)], ids=["landscape_3_2", "portrait_3_4"])
def test_masks_of_non_square_images(tmp_path: Path, image_size: tuple[int, int]) -> None:
    """A mask of the image's size, or of half its size, passes; the transposed mask is named with both sizes."""
    width, height = image_size
    check_mask_file(_mask(tmp_path, width, height), "image.png", image_size)
    check_mask_file(_mask(tmp_path, width // 2, height // 2), "image.png", image_size)
    with pytest.raises(ValueError, match=rf"is {height}x{width} but its image image.png is {width}x{height}"):
        check_mask_file(_mask(tmp_path, height, width), "image.png", image_size)
