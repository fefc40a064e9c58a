# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Bad input files: each is either handled by anomalib's loading (converted or resized) or stopped before
training by :func:`anomalib_diffad.data.checks.check_datamodule` with an error that names the file; and
scoring is bit-identical across processes."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import Folder, MVTecAD
from anomalib.engine import Engine
from PIL import Image

from anomalib_diffad import DiffAD
from anomalib_diffad.data.checks import check_datamodule, check_train_crop, check_validation_set
from tests.helpers.presets import with_space_settings

FIRST = Path("train") / "good" / "000.png"


def _copy(dataset_root: Path, tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    root = tmp_path / "data"
    shutil.copytree(dataset_root, root)
    edit(root / "brick")
    return root


def _mvtec(root: Path) -> MVTecAD:
    datamodule = MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    datamodule.setup()
    return datamodule


def _first_train_image(datamodule: MVTecAD, name: str) -> torch.Tensor:
    datamodule.train_data.augmentations = None
    (index,) = np.flatnonzero(datamodule.train_data.samples["image_path"].str.endswith(name))
    return datamodule.train_data[int(index)].image


def _rewrite(path: Path, convert: Callable[[Image.Image], Image.Image]) -> None:
    with Image.open(path) as image:
        converted = convert(image.convert("RGB"))
    converted.save(path)


def test_truncated_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """anomalib's error is ``OSError: image file is truncated`` without a path; the check names the file."""
    root = _copy(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes((r / FIRST).read_bytes()[:300]))
    with pytest.raises(ValueError, match=r"Cannot read image file .*train/good/000\.png: image file is truncated"):
        check_datamodule(_mvtec(root))


def test_corrupt_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A file that is not an image at all: the error names it."""
    root = _copy(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes(b"not an image"))
    with pytest.raises(ValueError, match=r"Cannot read image file .*train/good/000\.png"):
        check_datamodule(_mvtec(root))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_and_palette_images_are_converted(mode: str, dataset_root: Path, tmp_path: Path) -> None:
    """Grayscale, RGBA and palette images pass the check and load as 3-channel images in [0, 1]."""
    root = _copy(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.convert(mode)))
    datamodule = _mvtec(root)
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

    root = _copy(dataset_root, tmp_path, to_16_bit)
    datamodule = _mvtec(root)
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

    root = _copy(dataset_root, tmp_path, nan_tiff)
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
    root = _copy(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.resize((96, 50))))
    datamodule = _mvtec(root)
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

    root = _copy(dataset_root, tmp_path, empty)
    datamodule = _mvtec(root)
    assert len(datamodule.train_data) == 0
    with pytest.raises(ValueError, match=r"The training set is empty: no images found in .*brick/train/good"):
        check_datamodule(datamodule)


def test_mask_of_other_aspect_ratio_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A mask whose aspect ratio differs from its image's would be stretched onto it: the error names both;
    a mask of another size with the same aspect ratio is resized with its image and passes."""
    masks = sorted((dataset_root / "brick" / "ground_truth").rglob("*.png"))
    relative = masks[0].relative_to(dataset_root / "brick")
    root = _copy(dataset_root, tmp_path, lambda r: _rewrite(r / relative, lambda mask: mask.resize((32, 32))))
    check_datamodule(_mvtec(root))
    _rewrite(root / "brick" / relative, lambda mask: mask.resize((48, 32)))
    with pytest.raises(ValueError, match=rf"Mask .*{relative.name} is 48x32 but its image .* is 64x64"):
        check_datamodule(_mvtec(root))


def test_fit_runs_the_check(dataset_root: Path, tiny_model_args: dict, tmp_path: Path) -> None:
    """``Engine.fit`` stops before the first step with the check's error (DiffAD.on_fit_start)."""
    root = _copy(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes((r / FIRST).read_bytes()[:300]))
    engine = Engine(logger=False, default_root_dir=tmp_path, max_steps=1, accelerator="cpu", devices=1)
    model = DiffAD(**(tiny_model_args | {"pretrained_weights": None}))
    datamodule = MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match=r"train/good/000\.png"):
        engine.fit(model=model, datamodule=datamodule)
    assert model.global_step == 0


SCORE_IN_SUBPROCESS = """
import sys, torch, yaml
from anomalib_diffad import DiffAD
from anomalib.data.utils import read_image
args, state, image, out, seed = sys.argv[1:]
torch.manual_seed(int(seed))  # scoring must not depend on the global RNG
model = DiffAD(**yaml.safe_load(args))
model.load_state_dict(torch.load(state, weights_only=True))
batch = read_image(image, as_tensor=True).unsqueeze(0)
with torch.no_grad():
    result = model.eval()(batch)
torch.save({"pred_score": result.pred_score, "anomaly_map": result.anomaly_map}, out)
"""


def test_scoring_is_bit_identical_across_processes(dataset_root: Path, tiny_model_args: dict, tmp_path: Path) -> None:
    """The same weights and image give bit-identical scores and maps in two fresh Python processes (with
    different global seeds and hash seeds), through the exported ``forward`` path."""
    args = tiny_model_args | {"pretrained_weights": None}
    torch.manual_seed(0)
    model = DiffAD(**args)
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)
    image = sorted((dataset_root / "brick" / "test").rglob("*.png"))[-1]
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.pt"
        env = os.environ | {"PYTHONHASHSEED": str(run)}
        command = [sys.executable, "-c", SCORE_IN_SUBPROCESS, yaml.safe_dump(args), str(state), str(image), str(out)]
        result = subprocess.run([*command, str(run)], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(torch.load(out, weights_only=True))
    for key in ("pred_score", "anomaly_map"):
        assert torch.isfinite(outputs[0][key]).all(), key
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=0, atol=0, msg=key)


def _remove(*relative: str) -> Callable[[Path], None]:
    def remove(category: Path) -> None:
        for name in relative:
            path = category / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    return remove


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_missing_mask_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """anomalib fails with pandas' "Must have equal len keys" and no file name; the error names the image
    and the mask it expected."""
    root = _copy(dataset_root, tmp_path, _remove("ground_truth/stain/000_mask.png"))
    with pytest.raises(ValueError, match=r"test image .*test/stain/000\.png has no mask .*ground_truth/stain/000_mask"):
        _mvtec(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_mask_without_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A mask whose defective image is gone: the error names the mask."""
    root = _copy(dataset_root, tmp_path, _remove("test/stain/000.png"))
    with pytest.raises(ValueError, match=r"mask .*ground_truth/stain/000_mask\.png has no test image"):
        _mvtec(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_masks_but_no_defective_test_images_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A test folder with only ``good`` images beside a ``ground_truth`` folder (anomalib: the pandas error)."""
    defects = [path.name for path in (dataset_root / "brick" / "test").iterdir() if path.name != "good"]
    root = _copy(dataset_root, tmp_path, _remove(*(f"test/{name}" for name in defects)))
    with pytest.raises(ValueError, match=r"brick/test holds no defective images .*brick/ground_truth holds 4 masks"):
        _mvtec(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_no_defective_test_images_is_reported(
    dataset_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without defects or masks anomalib loads the category and every test metric comes out 0.0: a warning
    names the folder and says why (training on such a category stays possible)."""
    defects = [path.name for path in (dataset_root / "brick" / "test").iterdir() if path.name != "good"]
    root = _copy(dataset_root, tmp_path, _remove("ground_truth", *(f"test/{name}" for name in defects)))
    with caplog.at_level("WARNING", logger="anomalib_diffad.data.checks"):
        datamodule = _mvtec(root)
    assert set(datamodule.test_data.samples.label_index) == {0}
    warnings = [record.getMessage() for record in caplog.records if "holds no defective images" in record.getMessage()]
    assert len(warnings) == 1, warnings
    assert "brick/test" in warnings[0]
    assert "AUROC, F1 and AUPRO are undefined" in warnings[0]


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_skipped_jpg_images_are_counted(dataset_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """MVTecAD reads only ``.png``: two ``.jpg`` training images are dropped, and a warning says how many, where
    and why (once, for the training split)."""

    def to_jpg(category: Path) -> None:
        for path in sorted((category / "train" / "good").iterdir())[:2]:
            with Image.open(path) as image:
                image.convert("RGB").save(path.with_suffix(".jpg"))
            path.unlink()

    root = _copy(dataset_root, tmp_path, to_jpg)
    with caplog.at_level("WARNING", logger="anomalib_diffad.data.checks"):
        datamodule = _mvtec(root)
    assert len(datamodule.train_data) == len(list((dataset_root / "brick" / "train" / "good").iterdir())) - 2
    warnings = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Skipped")]
    assert len(warnings) == 1, warnings
    assert re.search(r"Skipped 2 image files of the train split in .*brick \(2 \.jpg; e\.g\. .*\.jpg\): MVTecAD reads "
                     r"only \.PNG, \.png files", warnings[0]), warnings[0]  # fmt: skip


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
    check_validation_set(_mvtec(dataset_root))  # MVTecAD's default: same as test


def test_training_images_smaller_than_the_crop(dataset_root: Path, tmp_path: Path) -> None:
    """``train_crop_size`` above the pre-processor's image size names both settings; without a resizing
    pre-processor, the first training file that is too small is named."""
    datamodule = _mvtec(dataset_root)
    resize = DiffAD.configure_pre_processor(64).transform
    check_train_crop(64, datamodule, resize)
    with pytest.raises(ValueError, match=r"train_crop_size=96 is larger .* shortest side of 64 px"):
        check_train_crop(96, datamodule, resize)
    root = _copy(dataset_root, tmp_path, lambda r: _rewrite(r / FIRST, lambda image: image.resize((80, 40))))
    check_train_crop(40, _mvtec(root))
    with pytest.raises(ValueError, match=r"Training image .*train/good/000\.png is 80x40, smaller than train_crop"):
        check_train_crop(48, _mvtec(root))


@pytest.mark.parametrize(
    ("space_settings", "datamodule_arguments", "message"),
    [
        ({"train_crop_size": 96}, {}, r"train_crop_size=96 is larger .* --model.space.init_args.train_crop_size"),
        ({}, {"val_split_mode": "none"}, "validation set of MVTecAD is empty"),
    ],
    ids=["crop", "validation"],
)
def test_fit_runs_the_setting_checks(
    space_settings: dict,
    datamodule_arguments: dict,
    message: str,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """``Engine.fit`` stops before the first step on a crop larger than the images or an empty validation set."""
    engine = Engine(logger=False, default_root_dir=tmp_path, max_steps=1, accelerator="cpu", devices=1)
    model = DiffAD(**with_space_settings(tiny_model_args | {"pretrained_weights": None}, **space_settings))
    datamodule = MVTecAD(
        root=dataset_root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0,
        **datamodule_arguments,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        engine.fit(model=model, datamodule=datamodule)
    assert model.global_step == 0
