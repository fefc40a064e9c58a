# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The patch-space preset through anomalib's Engine: it learns the normal vectors, and its OpenVINO export
scores raw images of the dataset's size and of other sizes as the Lightning path does."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from PIL import Image

from anomalib_diffad import DiffAD
from anomalib_diffad.diffusion import q_sample
from tests.helpers.engine import brick_datamodule, fit_test_predict
from tests.helpers.openvino import FP32
from tests.helpers.presets import TINY_MODEL_ARGS, with_space_settings
from tests.integration.test_engine import _assert_parity

CONFIG = Path(__file__).parents[2] / "configs" / "diffad_patch.yaml"
PATCH_ARGS = with_space_settings(
    yaml.safe_load(CONFIG.read_text())["model"]["init_args"], mlp_width=64, mlp_blocks=2
) | {"image_size": 64, "pretrained_weights": TINY_MODEL_ARGS["pretrained_weights"]}
STEPS = 200


def _engine(root_dir: Path) -> Engine:
    """The preset's step-based schedule, shortened: validation (calibration, thresholds) after the last step."""
    return Engine(
        logger=False,
        default_root_dir=root_dir,
        max_steps=STEPS,
        max_epochs=-1,
        check_val_every_n_epoch=None,
        val_check_interval=STEPS,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )


def _datamodule(root: Path) -> MVTecAD:
    return brick_datamodule(root, val_from_train=True)


@pytest.fixture(scope="module")
def patch_project(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The patch preset at 64 px (8 x 8 vectors of 152 channels per image), fitted and tested once."""
    root_dir = tmp_path_factory.mktemp("patch_project")
    torch.manual_seed(0)
    engine = _engine(root_dir)
    project = fit_test_predict(DiffAD(**PATCH_ARGS), engine, dataset_root)
    return project | {"steps": engine.trainer.global_step}


def test_patch_preset_learns_the_noise_of_the_normal_vectors(patch_project: dict, dataset_root: Path) -> None:
    """After the preset's training the EMA denoiser predicts the noise of normal patch vectors at t = 400
    with a clearly lower MSE than an untrained one (about 1: it predicts nothing)."""
    assert patch_project["steps"] == STEPS
    trained = patch_project["model"].model
    scale = trained.pass_scale[0, 0]  # calibrated by validation: the passes' mean KL, larger at small t
    assert torch.isfinite(scale).all()
    assert scale[0] > scale[3] > 0, scale
    datamodule = _datamodule(dataset_root)
    datamodule.setup()
    images = patch_project["model"].pre_processor.transform(torch.stack([item.image for item in datamodule.train_data]))
    x0 = trained.target_features(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((x0.shape[0],), 400)
    xt = q_sample(trained.schedule, x0, t, noise)
    untrained = DiffAD(**PATCH_ARGS).model.ema_denoiser
    with torch.no_grad():
        errors = [float(((denoiser(xt, t).eps - noise) ** 2).mean()) for denoiser in (untrained, trained.ema_denoiser)]
    assert errors[0] > 0.9
    assert errors[1] < errors[0] - 0.1, errors


def test_patch_preset_openvino_parity_at_any_size(
    patch_project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The OpenVINO IR scores the test images as ``engine.predict`` did, and a raw image of another size and
    aspect as the Lightning module's own forward (resize inside the graph), within 5e-4 normalized units."""
    model = patch_project["model"]
    path = _engine(patch_project["root_dir"]).export(model=model, export_type=ExportType.OPENVINO, export_root=tmp_path)
    inferencer = OpenVINOInferencer(path, device="CPU", config=FP32)
    monkeypatch.chdir(tmp_path)
    _assert_parity(inferencer, patch_project["predictions"], 5e-4)
    source = next(iter(patch_project["predictions"]))
    odd = tmp_path / "odd.png"
    Image.open(source).convert("RGB").resize((88, 72)).save(odd)
    model.eval()
    with torch.no_grad():
        expected = model(read_image(odd, as_tensor=True)[None])
    result = inferencer.predict(odd)
    assert np.abs(np.asarray(result.pred_score).reshape(-1) - expected.pred_score.numpy().reshape(-1)).max() <= 5e-4
    map_difference = np.abs(np.asarray(result.anomaly_map).reshape(-1) - expected.anomaly_map.numpy().reshape(-1))
    assert map_difference.max() <= 5e-4
