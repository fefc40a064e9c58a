# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The checks of :mod:`anomalib_diffad.data.checks`, called directly: a missing dataset folder is named before any
download; a bad file (truncated, not an image, 16-bit, non-finite, a mask of another aspect ratio, also on
non-square images: VisA is 3:2, MVTec 3D-AD's tire 3:4) is named; what anomalib's loading handles passes; an empty
validation set and a crop larger than the images name their settings."""

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import Folder, MVTecAD
from PIL import Image

from anomalib_diffad import DiffAD
from anomalib_diffad.data.checks import (
    DataCheckError,
    check_datamodule,
    check_mask_file,
    check_mvtec_root,
    check_train_crop,
    check_validation_set,
)
from tests.helpers.datasets import FIRST, brick_datamodule, copy_dataset

URL = "https://www.example.invalid/mvtec.tar.xz"
CATEGORIES = ("bottle", "cable")


def _never_probed(url: str) -> bool:
    msg = f"probed {url}"
    raise AssertionError(msg)


def _first_train_image(datamodule: MVTecAD, name: str) -> torch.Tensor:
    datamodule.train_data.augmentations = None
    (index,) = np.flatnonzero(datamodule.train_data.samples["image_path"].str.endswith(name))
    return datamodule.train_data[int(index)].image


def _rewrite(path: Path, convert: Callable[[Image.Image], Image.Image]) -> None:
    with Image.open(path) as image:
        converted = convert(image.convert("RGB"))
    converted.save(path)


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



def test_missing_root_of_a_category_no_download_has_is_named_without_probing(tmp_path: Path) -> None:
    """A category MVTec AD does not have: the error names the folder, the layout and both ways to get data."""
    root = tmp_path / "nowhere"
    with pytest.raises(DataCheckError) as error:
        check_mvtec_root(root, "brick", URL, CATEGORIES, reachable=_never_probed)
    message = str(error.value)
    assert f"The dataset folder {root} (--data.root) does not exist." in message
    assert "'brick' is not an MVTec AD category (bottle, cable)" in message
    assert "brick/ground_truth/<defect>/*_mask.png" in message
    assert "python -m diffad_tools.textures --root" in message
    assert not root.exists()


def test_missing_category_lists_the_folders_there(tmp_path: Path) -> None:
    """An existing root without the category: the message lists the categories it holds."""
    (tmp_path / "grass").mkdir()
    (tmp_path / "gravel").mkdir()
    expected = r"has no category folder 'brick' \(--data.category\); it holds grass, gravel"
    with pytest.raises(DataCheckError, match=expected):
        check_mvtec_root(tmp_path, "brick", URL, CATEGORIES, reachable=_never_probed)


def test_mvtec_category_downloads_only_when_the_server_answers(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An MVTec AD category: unreachable server -> error naming the host; reachable -> a warning, no error."""
    with pytest.raises(DataCheckError, match=r"cannot be downloaded from here \(www.example.invalid is unreachable\)"):
        check_mvtec_root(tmp_path / "mvtec", "bottle", URL, CATEGORIES, reachable=lambda _url: False)
    with caplog.at_level(logging.WARNING):
        check_mvtec_root(tmp_path / "mvtec", "bottle", URL, CATEGORIES, reachable=lambda _url: True)
    assert "Downloading MVTec AD (4.9 GB)" in caplog.text


def test_present_category_is_not_probed(tmp_path: Path) -> None:
    """A present category folder passes at once."""
    (tmp_path / "bottle").mkdir()
    check_mvtec_root(tmp_path, "bottle", URL, CATEGORIES, reachable=_never_probed)


def test_truncated_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """anomalib's error is ``OSError: image file is truncated`` without a path; the check names the file."""
    root = copy_dataset(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes((r / FIRST).read_bytes()[:300]))
    with pytest.raises(ValueError, match=r"Cannot read image file .*train/good/000\.png: image file is truncated"):
        check_datamodule(brick_datamodule(root))


def test_corrupt_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A file that is not an image at all: the error names it."""
    root = copy_dataset(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes(b"not an image"))
    with pytest.raises(ValueError, match=r"Cannot read image file .*train/good/000\.png"):
        check_datamodule(brick_datamodule(root))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_images_are_converted(mode: str, dataset_root: Path, tmp_path: Path) -> None:
    """Grayscale, RGBA and palette images pass the check and load as 3-channel images in [0, 1]."""
    root = copy_dataset(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.convert(mode)))
    datamodule = brick_datamodule(root)
    check_datamodule(datamodule)
    image = _first_train_image(datamodule, "000.png")
    assert image.shape == (3, 64, 64)
    assert 0.0 <= image.min() <= image.max() <= 1.0
    if mode == "L":
        torch.testing.assert_close(image[0], image[1], rtol=0, atol=0)


def test_16_bit_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """anomalib clips a 16-bit PNG to 8 bits (almost all white); the check stops with the file's name."""

    def to_16_bit(category: Path) -> None:
        with Image.open(category / FIRST) as image:
            pixels = np.asarray(image.convert("L")).astype(np.uint16) * 257
        Image.fromarray(pixels).save(category / FIRST)

    root = copy_dataset(dataset_root, tmp_path, to_16_bit)
    datamodule = brick_datamodule(root)
    assert _first_train_image(datamodule, "000.png").mean() > 0.95  # what anomalib alone would train on
    with pytest.raises(ValueError, match=r"Image .*train/good/000\.png has 'I;16' pixels"):
        check_datamodule(datamodule)


def test_non_finite_float_tiff_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A float TIFF with a NaN pixel (``Folder`` reads ``.tiff``; anomalib would turn it into 0)."""

    def nan_tiff(category: Path) -> None:
        with Image.open(category / FIRST) as image:
            pixels = np.asarray(image.convert("L")).astype(np.float32) / 255.0
        pixels[5, 7] = np.nan
        (category / FIRST).unlink()
        Image.fromarray(pixels, mode="F").save(category / "train" / "good" / "000.tiff")

    root = copy_dataset(dataset_root, tmp_path, nan_tiff)
    # no test/validation split: with only a normal folder, Folder moves a random share of the normal images
    # to the test set, and the check (training and validation files) would miss the NaN image there
    datamodule = Folder(
        name="nan", root=root / "brick", normal_dir="train/good", num_workers=0,
        test_split_mode="none", val_split_mode="none",
    )
    datamodule.setup()
    with pytest.raises(ValueError, match=r"Image .*train/good/000\.tiff has non-finite pixel values"):
        check_datamodule(datamodule)


def test_mixed_image_sizes_are_resized(dataset_root: Path, tmp_path: Path) -> None:
    """Images of another size in the same folder pass the check; the model's Resize makes them batchable."""
    root = copy_dataset(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.resize((96, 50))))
    datamodule = brick_datamodule(root)
    check_datamodule(datamodule)
    datamodule.train_data.augmentations = DiffAD.configure_pre_processor(64).transform.transforms[0]
    images = [datamodule.train_data[index].image for index in range(len(datamodule.train_data))]
    assert {tuple(image.shape) for image in images} == {(3, 64, 64)}


@pytest.mark.parametrize("missing", [False, True], ids=["empty", "missing"])
def test_empty_or_missing_train_folder_is_named(missing: bool, dataset_root: Path, tmp_path: Path) -> None:
    """anomalib sets up an empty training set silently; the check names the folder."""

    def empty(category: Path) -> None:
        if missing:
            shutil.rmtree(category / "train")
        else:
            for path in (category / "train" / "good").iterdir():
                path.unlink()

    root = copy_dataset(dataset_root, tmp_path, empty)
    datamodule = brick_datamodule(root)
    assert len(datamodule.train_data) == 0
    with pytest.raises(ValueError, match=r"The training set is empty: no images found in .*brick/train/good"):
        check_datamodule(datamodule)


def test_mask_of_other_aspect_ratio_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A mask whose aspect ratio differs from its image's would be stretched onto it: the error names both;
    a mask of another size with the same aspect ratio is resized with its image and passes."""
    masks = sorted((dataset_root / "brick" / "ground_truth").rglob("*.png"))
    relative = masks[0].relative_to(dataset_root / "brick")
    root = copy_dataset(dataset_root, tmp_path, lambda r: _rewrite(r / relative, lambda mask: mask.resize((32, 32))))
    check_datamodule(brick_datamodule(root))
    _rewrite(root / "brick" / relative, lambda mask: mask.resize((48, 32)))
    with pytest.raises(ValueError, match=rf"Mask .*{relative.name} is 48x32 but its image .* is 64x64"):
        check_datamodule(brick_datamodule(root))


@pytest.mark.parametrize(
    ("mode", "ratio"),
    [("none", None), ("from_test", 0.01)],
    ids=["none", "ratio-rounds-to-zero"],
)
def test_empty_validation_set_names_the_setting(mode: str, ratio: float | None, dataset_root: Path) -> None:
    """Without validation images DiffAD is never calibrated (NaN thresholds): the error names the split setting."""
    datamodule = MVTecAD(root=dataset_root, category="brick", val_split_mode=mode, val_split_ratio=ratio, num_workers=0)
    datamodule.setup()
    with pytest.raises(ValueError, match=rf"validation set of MVTecAD is empty \(val_split_mode='{mode}'"):
        check_validation_set(datamodule)
    check_validation_set(brick_datamodule(dataset_root))  # MVTecAD's default: same as test


def test_training_images_smaller_than_the_crop(dataset_root: Path, tmp_path: Path) -> None:
    """``train_crop_size`` above the pre-processor's image size names both settings; without a resizing
    pre-processor, the first training file that is too small is named."""
    datamodule = brick_datamodule(dataset_root)
    resize = DiffAD.configure_pre_processor(64).transform
    check_train_crop(64, datamodule, resize)
    with pytest.raises(ValueError, match=r"train_crop_size=96 is larger .* shortest side of 64 px"):
        check_train_crop(96, datamodule, resize)
    root = copy_dataset(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.resize((80, 40))))
    check_train_crop(40, brick_datamodule(root))
    with pytest.raises(ValueError, match=r"Training image .*train/good/000\.png is 80x40, smaller than train_crop"):
        check_train_crop(48, brick_datamodule(root))
