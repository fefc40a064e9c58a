# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The Engine and the brick datamodule that the integration tests fit and test with."""

from pathlib import Path

from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models import AnomalibModule

PREDICTED = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
"""The outputs the parity tests compare."""


def tiny_engine(root_dir: Path, epochs: int = 2) -> Engine:
    """A quiet CPU Engine without logger or progress bar."""
    return Engine(
        logger=False,
        default_root_dir=root_dir,
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )


def brick_datamodule(root: Path, val_from_train: bool = False) -> MVTecAD:
    """The tiny brick set in batches of 4; validation on the test set, or on a quarter of the training normals."""
    split = {"val_split_mode": "from_train", "val_split_ratio": 0.25} if val_from_train else {}
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0, **split)


def fit_test_predict(model: AnomalibModule, engine: Engine, root: Path) -> dict:
    """Fit ``model`` on the tiny brick set (validation from train), test it and predict the test images.

    Returns:
        ``model``, the test ``metrics``, each test image's ``predictions`` (by path: score, label, map, mask)
        and the engine's ``root_dir``.
    """
    engine.fit(model=model, datamodule=brick_datamodule(root, val_from_train=True))
    metrics = engine.test(model=model, datamodule=brick_datamodule(root, val_from_train=True), verbose=False)[0]
    batches = engine.predict(model=model, datamodule=brick_datamodule(root, val_from_train=True))
    predictions = {
        path: {key: getattr(batch, key)[index].detach().cpu().numpy() for key in PREDICTED}
        for batch in batches
        for index, path in enumerate(batch.image_path)
    }
    root_dir = Path(engine.trainer.default_root_dir)
    return {"model": model, "metrics": metrics, "predictions": predictions, "root_dir": root_dir}
