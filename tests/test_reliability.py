# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Bad input reaches the data checks where users meet it: ``Engine.fit`` stops before the first step, and the
``anomalib`` CLI's MVTec AD folder checks name missing or orphaned masks and skipped files (the checks themselves:
``tests/data/test_checks.py``); and scoring is bit-identical across processes."""

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image

from anomalib_diffad import DiffAD
from tests.helpers.datasets import FIRST, brick_datamodule, copy_dataset
from tests.helpers.presets import with_space_settings


def test_fit_runs_the_check(dataset_root: Path, tiny_model_args: dict, tmp_path: Path) -> None:
    """``Engine.fit`` stops before the first step with the check's error (DiffAD.on_fit_start)."""
    root = copy_dataset(dataset_root, tmp_path, lambda r: (r / FIRST).write_bytes((r / FIRST).read_bytes()[:300]))
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
    root = copy_dataset(dataset_root, tmp_path, _remove("ground_truth/stain/000_mask.png"))
    with pytest.raises(ValueError, match=r"test image .*test/stain/000\.png has no mask .*ground_truth/stain/000_mask"):
        brick_datamodule(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_mask_without_image_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A mask whose defective image is gone: the error names the mask."""
    root = copy_dataset(dataset_root, tmp_path, _remove("test/stain/000.png"))
    with pytest.raises(ValueError, match=r"mask .*ground_truth/stain/000_mask\.png has no test image"):
        brick_datamodule(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_masks_but_no_defective_test_images_is_named(dataset_root: Path, tmp_path: Path) -> None:
    """A test folder with only ``good`` images beside a ``ground_truth`` folder (anomalib: the pandas error)."""
    defects = [path.name for path in (dataset_root / "brick" / "test").iterdir() if path.name != "good"]
    root = copy_dataset(dataset_root, tmp_path, _remove(*(f"test/{name}" for name in defects)))
    with pytest.raises(ValueError, match=r"brick/test holds no defective images .*brick/ground_truth holds 4 masks"):
        brick_datamodule(root)


@pytest.mark.usefixtures("mvtec_folder_checks")
def test_no_defective_test_images_is_reported(
    dataset_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without defects or masks anomalib loads the category and every test metric comes out 0.0: a warning
    names the folder and says why (training on such a category stays possible)."""
    defects = [path.name for path in (dataset_root / "brick" / "test").iterdir() if path.name != "good"]
    root = copy_dataset(dataset_root, tmp_path, _remove("ground_truth", *(f"test/{name}" for name in defects)))
    with caplog.at_level("WARNING", logger="anomalib_diffad.data.checks"):
        datamodule = brick_datamodule(root)
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

    root = copy_dataset(dataset_root, tmp_path, to_jpg)
    with caplog.at_level("WARNING", logger="anomalib_diffad.data.checks"):
        datamodule = brick_datamodule(root)
    assert len(datamodule.train_data) == len(list((dataset_root / "brick" / "train" / "good").iterdir())) - 2
    warnings = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Skipped")]
    assert len(warnings) == 1, warnings
    assert re.search(r"Skipped 2 image files of the train split in .*brick \(2 \.jpg; e\.g\. .*\.jpg\): MVTecAD reads "
                     r"only \.PNG, \.png files", warnings[0]), warnings[0]  # fmt: skip


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
