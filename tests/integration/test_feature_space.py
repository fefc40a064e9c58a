# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The feature-space preset through anomalib's Engine: it localizes defects, and its export matches Lightning."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine

from anomalib_diffad import DiffAD
from tests.helpers.openvino import FP32
from tests.helpers.presets import TINY_MODEL_ARGS
from tests.integration.test_engine import OUTPUTS, _assert_parity

CONFIG = Path(__file__).parents[2] / "configs" / "diffad_feature.yaml"
FEATURE_ARGS = yaml.safe_load(CONFIG.read_text())["model"]["init_args"] | {
    "image_size": 64,
    "block_out_channels": [32, 64],
    "norm_num_groups": 8,
    "pretrained_weights": TINY_MODEL_ARGS["pretrained_weights"],
}


def _engine(root_dir: Path, epochs: int = 4) -> Engine:
    return Engine(
        logger=False,
        default_root_dir=root_dir,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(
        root=root,
        category="brick",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        val_split_mode="from_train",
        val_split_ratio=0.25,
    )


@pytest.fixture(scope="module")
def feature_project(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The feature preset at 64 px (an 8 x 8 x 152 feature 'image'), fitted and tested once."""
    root_dir = tmp_path_factory.mktemp("feature_project")
    import os
    model = DiffAD(**FEATURE_ARGS)
    engine = _engine(root_dir, int(os.environ.get("EPOCHS", "4")))
    engine.fit(model=model, datamodule=_datamodule(dataset_root))
    metrics = engine.test(model=model, datamodule=_datamodule(dataset_root), verbose=False)[0]
    batches = engine.predict(model=model, datamodule=_datamodule(dataset_root))
    predictions = {
        path: {key: getattr(batch, key)[index].detach().cpu().numpy() for key in OUTPUTS}
        for batch in batches
        for index, path in enumerate(batch.image_path)
    }
    return {"model": model, "metrics": metrics, "predictions": predictions, "root_dir": root_dir}


def test_feature_preset_localizes_synthetic_defects(feature_project: dict) -> None:
    """On the built-in brick defects the feature preset ranks defect pixels above normal ones."""
    metrics = feature_project["metrics"]
    print("METRICS", metrics)
    assert metrics["pixel_AUROC"] > 0.8, metrics
    assert feature_project["model"].model.space == "feature"


def test_feature_preset_openvino_parity(feature_project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenVINO export scores raw images as the Lightning path does, within 1e-4."""
    path = _engine(feature_project["root_dir"]).export(
        model=feature_project["model"],
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
    )
    monkeypatch.chdir(tmp_path)
    _assert_parity(OpenVINOInferencer(path, device="CPU", config=FP32), feature_project["predictions"])
    assert np.isfinite([float(p["pred_score"]) for p in feature_project["predictions"].values()]).all()
