# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Checks of a datamodule's image and mask files before training, with errors that name the file.

anomalib 2.7 reads every image with ``PIL.Image.open(path).convert("RGB")`` and every mask with
``convert("L")``, then resizes both to the model's input size. That handles grayscale, RGBA and palette
images, and mixed image sizes, but it is silent or vague about the rest:

- a truncated file fails mid-epoch with ``OSError: image file is truncated``, without its path;
- a 16-bit PNG or a float TIFF is clipped to 8 bits: a 16-bit image saturates to white, a [0, 1] float
  image turns black, NaN/inf pixels turn into 0;
- an empty or missing training folder gives an empty training set that fails only when feature statistics
  are fitted ("no training images");
- a mask whose aspect ratio differs from its image's is stretched onto it (independent resizes).

:func:`check_datamodule` reads every image and mask of the training and validation sets once and raises a
``ValueError`` naming the file for each of these.

Example:
    >>> from anomalib_diffad.data.checks import check_image_file
    >>> try:
    ...     check_image_file("missing.png")
    ... except ValueError as error:
    ...     print(str(error).split(":")[0])
    Cannot read image file missing.png
"""

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
"""PIL modes that ``convert("RGB")`` clips to 8 bits (32-bit int, 16-bit int, 32-bit float)."""

ASPECT_TOLERANCE = 0.01


def _open(path: Path | str, kind: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decodes the whole file: catches truncation
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        msg = f"Cannot read {kind} file {path}: {error}"
        raise ValueError(msg) from error
    return image


def check_image_file(path: Path | str) -> tuple[int, int]:
    """Decode one image; raise ``ValueError`` naming it if anomalib would fail on it or corrupt it.

    Returns:
        ``(width, height)`` of the image.
    """
    with _open(path, "image") as image:
        if image.mode in HIGH_DEPTH_MODES:
            pixels = np.asarray(image)
            if not np.isfinite(pixels).all():
                msg = f"Image {path} has non-finite pixel values (NaN or inf)."
                raise ValueError(msg)
            msg = (
                f"Image {path} has {image.mode!r} pixels (16-bit integer or 32-bit int/float); anomalib reads "
                "images as 8-bit RGB and would clip its values. Convert it to 8-bit (e.g. PNG or JPEG)."
            )
            raise ValueError(msg)
        return image.size


def check_mask_file(path: Path | str, image_path: Path | str, image_size: tuple[int, int]) -> None:
    """Decode one mask; raise ``ValueError`` if its aspect ratio differs from its image's.

    A mask of another size but the same aspect ratio is fine: anomalib resizes mask and image alike.
    """
    with _open(path, "mask") as mask:
        width, height = mask.size
    image_width, image_height = image_size
    if abs(width / height - image_width / image_height) > ASPECT_TOLERANCE * image_width / image_height:
        msg = (
            f"Mask {path} is {width}x{height} but its image {image_path} is {image_width}x{image_height}: "
            "both are resized to the model input independently, so the mask would not line up with the image."
        )
        raise ValueError(msg)


def check_samples(image_paths: Iterable[str], mask_paths: Iterable[str | None]) -> int:
    """Check every image and (where given) its mask; return the number of images checked."""
    count = 0
    for image_path, mask_path in zip(image_paths, mask_paths, strict=True):
        size = check_image_file(image_path)
        if isinstance(mask_path, str | Path) and str(mask_path):
            check_mask_file(mask_path, image_path, size)
        count += 1
    return count


def _training_source(datamodule: object) -> str:
    root, category = getattr(datamodule, "root", None), getattr(datamodule, "category", None)
    normal_dir = getattr(datamodule, "normal_dir", None)
    if normal_dir is not None:
        return f"normal_dir {normal_dir} (root {root})"
    if root is not None and category is not None:
        return str(Path(root) / category / "train" / "good")
    return type(datamodule).__name__


def check_datamodule(datamodule: object, subsets: Iterable[str] = ("train_data", "val_data")) -> None:
    """Check the image and mask files of a set-up anomalib datamodule's ``subsets``.

    Raises:
        ValueError: The training set is empty, or a file is unreadable, truncated, 16-bit/float,
            non-finite, or a mask does not match its image's aspect ratio. The message names the file.
    """
    for name in subsets:
        dataset = getattr(datamodule, name, None)
        samples = getattr(dataset, "samples", None)
        if samples is None:
            continue
        if name == "train_data" and len(samples) == 0:
            msg = f"The training set is empty: no images found in {_training_source(datamodule)}."
            raise ValueError(msg)
        masks = samples["mask_path"] if "mask_path" in samples else [None] * len(samples)
        count = check_samples(samples["image_path"], masks)
        logger.debug("Checked %d images of %s.", count, name)
