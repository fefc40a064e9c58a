# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Checks of a datamodule's image and mask files before training, with errors that name the file or setting.

anomalib 2.7 reads every image with ``PIL.Image.open(path).convert("RGB")`` and every mask with
``convert("L")``, then resizes both to the model's input size. That handles grayscale, RGBA and palette
images, and mixed image sizes, but it is silent or vague about the rest:

- a truncated file fails mid-epoch with ``OSError: image file is truncated``, without its path;
- a 16-bit PNG or a float TIFF is clipped to 8 bits: a 16-bit image saturates to white, a [0, 1] float
  image turns black, NaN/inf pixels turn into 0;
- an empty or missing training folder gives an empty training set that fails only when feature statistics
  are fitted ("no training images");
- a mask whose aspect ratio differs from its image's is stretched onto it (independent resizes);
- an empty validation set (``val_split_mode`` ``none``, or a ratio that rounds to no image) skips validation,
  so the fusion and thresholds are never calibrated;
- training images smaller than ``train_crop_size`` give no crops of that size (the whole image is used).

:func:`check_datamodule`, :func:`check_validation_set` and :func:`check_train_crop` run before training
(``DiffAD.on_fit_start``) and raise a :class:`DataCheckError` (a ``ValueError``) naming the file or setting for
each of these; anomalib's CLI prints its message without a traceback (:mod:`diffad_tools.anomalib_cli`).

anomalib's ``MVTecAD`` parser has its own blind spots, which :func:`check_mvtec_folder` covers when the
dataset is built (the ``anomalib`` CLI wraps anomalib's parser and ``MVTecAD.prepare_data`` with it and
:func:`check_mvtec_root`; Python code calls :func:`diffad_tools.anomalib_cli.check_mvtec_folders` for that):

- a defective test image without its mask, a mask without its image, or masks next to a test folder that
  holds only ``good`` images: anomalib fails with pandas' "Must have equal len keys and value when setting
  with an iterable", naming no file;
- a test folder with no defective images and no masks: anomalib loads it, and every test metric is
  undefined (anomalib reports AUROC, F1 and AUPRO as 0.0) - a warning names the folder;
- images in another format than ``.png`` (``.jpg``, ...) are skipped without a word - a warning says how
  many, where, and why.

Before ``MVTecAD.prepare_data`` downloads, :func:`check_mvtec_root` stops a missing ``root`` or category folder
that no download can provide (a category MVTec AD does not have, or no connection to the download server) with
the folder's name, the expected layout and where to get MVTec AD: otherwise anomalib creates the folder, tries
the 4.9 GB download and fails after a minute with ``URLError``, never naming the folder.

Example:
    >>> from anomalib_diffad.data.checks import check_image_file
    >>> try:
    ...     check_image_file("missing.png")
    ... except ValueError as error:
    ...     print(str(error).split(":")[0])
    Cannot read image file missing.png
"""

import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

logger = logging.getLogger(__name__)

HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
"""PIL modes that ``convert("RGB")`` clips to 8 bits (32-bit int, 16-bit int, 32-bit float)."""

ASPECT_TOLERANCE = 0.01

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
"""Image file suffixes (lower case) that a dataset parser skips when they are not among its extensions."""

MASK_SUFFIX = "_mask"

MVTEC_AD_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
PROBE_TIMEOUT = 3.0
"""Seconds to wait for a connection to the download server before calling it unreachable."""
MVTEC_LAYOUT = (
    ("train/good/*.png", "normal training images"),
    ("test/good/*.png", "normal test images"),
    ("test/<defect>/*.png", "defective test images"),
    ("ground_truth/<defect>/*_mask.png", "their masks (the image's name plus _mask)"),
)
"""The files ``MVTecAD`` reads in a category folder, and what they are."""


class DataCheckError(ValueError):
    """A problem with the user's data or data settings, named in the message; the ``anomalib`` CLI prints the
    message alone (no traceback)."""


def server_reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (name lookup included)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # a name lookup ignores the socket timeout
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_mvtec_root(
    root: Path | str,
    category: str,
    download_url: str,
    categories: Sequence[str],
    reachable: Callable[[str], bool] = server_reachable,
) -> None:
    """Before ``MVTecAD`` downloads: raise if ``root/category`` is missing and no download can provide it.

    Args:
        root: ``--data.root``.
        category: ``--data.category``.
        download_url: The archive anomalib would download.
        categories: The categories the archive holds.
        reachable: Probe of the download server (default: a TCP connection within :data:`PROBE_TIMEOUT`).

    Raises:
        DataCheckError: The folder is missing and the category is not in the archive, or the server cannot
            be reached; the message names the folder, the expected layout and how to get MVTec AD.
    """
    root = Path(root)
    if (root / category).is_dir():
        return
    shown = root if root.is_absolute() else f"{root} ({root.resolve()})"
    if not root.is_dir():
        problem = f"The dataset folder {shown} (--data.root) does not exist."
    else:
        present = sorted(path.name for path in root.iterdir() if path.is_dir())
        problem = (
            f"The dataset folder {shown} has no category folder {category!r} (--data.category); it holds "
            f"{', '.join(present) if present else 'no folders'}."
        )
    in_archive = category in categories
    if in_archive and reachable(download_url):
        logger.warning("%s Downloading MVTec AD (4.9 GB) into it, as anomalib does.", problem)
        return
    why = (
        f"MVTec AD cannot be downloaded from here ({urlsplit(download_url).hostname} is unreachable)."
        if in_archive
        else f"{category!r} is not an MVTec AD category ({', '.join(categories)}), so no download can provide it."
    )
    paths = [f"{category}/{files}" for files, _ in MVTEC_LAYOUT]
    width = max(map(len, paths))
    layout = "\n".join(f"  {path.ljust(width)}  {what}" for path, (_, what) in zip(paths, MVTEC_LAYOUT, strict=True))
    msg = (
        f"{problem} {why}\nMVTecAD expects, under {root}:\n{layout}\n"
        f"To get MVTec AD, download mvtec_anomaly_detection.tar.xz from {MVTEC_AD_PAGE} and extract it into "
        f"{root}; or write the built-in textures (brick, grass, gravel) with "
        f"`python -m diffad_tools.textures --root {root}`."
    )
    raise DataCheckError(msg)


def _open(path: Path | str, kind: str) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decodes the whole file: catches truncation
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        msg = f"Cannot read {kind} file {path}: {error}"
        raise DataCheckError(msg) from error
    return image


def check_image_file(path: Path | str) -> tuple[int, int]:
    """Decode one image; raise :class:`DataCheckError` naming it if anomalib would fail on it or corrupt it.

    Returns:
        ``(width, height)`` of the image.
    """
    with _open(path, "image") as image:
        if image.mode in HIGH_DEPTH_MODES:
            pixels = np.asarray(image)
            if not np.isfinite(pixels).all():
                msg = f"Image {path} has non-finite pixel values (NaN or inf)."
                raise DataCheckError(msg)
            msg = (
                f"Image {path} has {image.mode!r} pixels (16-bit integer or 32-bit int/float); anomalib reads "
                "images as 8-bit RGB and would clip its values. Convert it to 8-bit (e.g. PNG or JPEG)."
            )
            raise DataCheckError(msg)
        return image.size


def check_mask_file(path: Path | str, image_path: Path | str, image_size: tuple[int, int]) -> None:
    """Decode one mask; raise :class:`DataCheckError` if its aspect ratio differs from its image's.

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
        raise DataCheckError(msg)


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
        DataCheckError: The training set is empty, or a file is unreadable, truncated, 16-bit/float,
            non-finite, or a mask does not match its image's aspect ratio. The message names the file.
    """
    for name in subsets:
        dataset = getattr(datamodule, name, None)
        samples = getattr(dataset, "samples", None)
        if samples is None:
            continue
        if name == "train_data" and len(samples) == 0:
            msg = f"The training set is empty: no images found in {_training_source(datamodule)}."
            raise DataCheckError(msg)
        masks = samples["mask_path"] if "mask_path" in samples else [None] * len(samples)
        count = check_samples(samples["image_path"], masks)
        logger.debug("Checked %d images of %s.", count, name)


def check_validation_set(datamodule: object) -> None:
    """Raise if a set-up datamodule (or a ``MultiCategory`` child) has no validation images.

    DiffAD calibrates its map fusion, thresholds and normalization on the validation images; without any,
    the thresholds stay NaN and every test score with them.

    Raises:
        DataCheckError: Naming the datamodule's ``val_split_mode`` and ``val_split_ratio``.
    """
    children = getattr(datamodule, "datamodules", None)
    if children is not None:
        included = getattr(datamodule, "include", None)
        names = getattr(datamodule, "categories", ())
        for name, child in zip(names, children, strict=True):
            if included is None or name in included:
                _require_validation_images(child, f"category {name!r}: ")
        return
    _require_validation_images(datamodule, "")


def _require_validation_images(datamodule: object, prefix: str) -> None:
    val_data = getattr(datamodule, "val_data", None)
    if val_data is not None and len(val_data) > 0:
        return
    mode = getattr(datamodule, "val_split_mode", None)
    mode = getattr(mode, "value", mode)
    msg = (
        f"{prefix}The validation set of {type(datamodule).__name__} is empty (val_split_mode={mode!r}, "
        f"val_split_ratio={getattr(datamodule, 'val_split_ratio', None)}): DiffAD calibrates its map fusion and "
        "thresholds on validation images, and would test with NaN thresholds. Use val_split_mode 'same_as_test' "
        "(MVTecAD's default), or 'from_test'/'from_train' with a val_split_ratio that leaves images of each label."
    )
    raise DataCheckError(msg)


def resized_min_side(transform: Callable | None) -> int | None:
    """Shortest image side after ``transform``'s last ``Resize``/``CenterCrop`` (``None``: sizes unchanged)."""
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    side = None
    for step in steps:
        if isinstance(step, Resize | CenterCrop) and step.size is not None:
            side = min(step.size)
    return side


def check_train_crop(crop_size: int, datamodule: object, transform: Callable | None = None) -> None:
    """Raise if the training images, as the model sees them, are smaller than ``crop_size``.

    The random crop of a smaller image is the whole image (or a strip of it), so training would silently
    run on other inputs than asked for. With a resizing ``transform`` (the pre-processor) the resized size
    decides; without one, each training file's own size.

    Raises:
        DataCheckError: Naming ``train_crop_size`` and the resize, or the first file that is too small.
    """
    side = resized_min_side(transform)
    if side is not None:
        if side < crop_size:
            msg = (
                f"train_crop_size={crop_size} is larger than the training images, which the pre-processor resizes "
                f"to a shortest side of {side} px (image_size): the random crops would be whole images. Set "
                f"--model.space.init_args.train_crop_size to at most {side}, or None to train on whole images."
            )
            raise DataCheckError(msg)
        return
    samples = getattr(getattr(datamodule, "train_data", None), "samples", None)
    for path in [] if samples is None else samples["image_path"]:
        with Image.open(path) as image:
            width, height = image.size
        if min(width, height) < crop_size:
            msg = (
                f"Training image {path} is {width}x{height}, smaller than train_crop_size={crop_size} (the "
                "pre-processor does not resize): resize the images, or lower --model.space.init_args.train_crop_size."
            )
            raise DataCheckError(msg)


def _images(folder: Path) -> list[Path]:
    """Image files (any :data:`IMAGE_SUFFIXES`) in the sub-folders of ``folder``, as MVTec AD lays them out."""
    return sorted(path for path in folder.glob("*/*") if path.suffix.lower() in IMAGE_SUFFIXES)


def check_mvtec_folder(root: Path | str, split: str | None, extensions: Sequence[str]) -> None:
    """Check an MVTec AD category folder (``train/good``, ``test/<type>``, ``ground_truth/<type>``).

    Args:
        root: The category folder.
        split: The split being built (``"train"``, ``"test"``; ``None``: both); warnings are about it only.
        extensions: The file suffixes the parser reads (anomalib's ``MVTecAD``: ``.png``, ``.PNG``).

    Raises:
        DataCheckError: A defective test image has no mask, a mask has no defective test image, or there are
            masks but no defective test image; the message names the files.
    """
    root = Path(root)
    if not root.is_dir():
        return  # anomalib names the missing folder itself
    read = set(extensions)
    folders = {"train": ("train",), "test": ("test", "ground_truth")}
    for name in ("train", "test") if split is None else (str(split),):
        skipped = [path for folder in folders.get(name, ()) for path in _images(root / folder)]
        skipped = [path for path in skipped if path.suffix not in read]
        if skipped:
            counts = Counter(path.suffix for path in skipped)
            logger.warning(
                "Skipped %d image files of the %s split in %s (%s; e.g. %s): MVTecAD reads only %s files. Convert "
                "them, or use anomalib's Folder datamodule with extensions=[...].",
                len(skipped),
                name,
                root,
                ", ".join(f"{count} {suffix}" for suffix, count in sorted(counts.items())),
                skipped[0],
                ", ".join(sorted(read)),
            )
    defective = [path for path in _images(root / "test") if path.parent.name != "good" and path.suffix in read]
    masks = [path for path in _images(root / "ground_truth") if path.suffix in read]
    if not defective:
        if masks:
            msg = (
                f"{root / 'test'} holds no defective images (only 'good'), but {root / 'ground_truth'} holds "
                f"{len(masks)} masks (e.g. {masks[0]}): put the defective images back into test/<defect type>/, "
                "or remove ground_truth/."
            )
            raise DataCheckError(msg)
        if split in {None, "test"}:
            logger.warning(
                "%s holds no defective images (only 'good'): image and pixel AUROC, F1 and AUPRO are undefined "
                "without them (anomalib reports 0.0), and validation cannot place thresholds between normal and "
                "defective scores.",
                root / "test",
            )
        return
    by_key = {(mask.parent.name, mask.stem.removesuffix(MASK_SUFFIX)): mask for mask in masks}
    keys = {(image.parent.name, image.stem) for image in defective}
    problems = [
        f"defective test image {image} has no mask {root / 'ground_truth' / image.parent.name / image.stem}"
        f"{MASK_SUFFIX}{image.suffix}"
        for image in defective
        if (image.parent.name, image.stem) not in by_key
    ]
    problems += [
        f"mask {mask} has no test image {root / 'test' / defect / stem}{mask.suffix}"
        for (defect, stem), mask in by_key.items()
        if (defect, stem) not in keys
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        msg = f"Masks and defective test images of {root} do not match: {'; '.join(problems[:3])}{more}."
        raise DataCheckError(msg)
