# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Per-category test and export of a unified model trained on a :class:`~anomalib_diffad.data.multi.MultiCategory`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_diffad import DiffAD
    >>> from anomalib_diffad.data.multi import MultiCategory
    >>> from anomalib_diffad.unified import export_per_category, evaluate_per_category
    >>> names = ("brick", "grass", "gravel")
    >>> datamodule = MultiCategory([MVTecAD(root="datasets/textures", category=n) for n in names])  # doctest: +SKIP
    >>> model, engine = DiffAD(categories=names), Engine(max_epochs=20)  # doctest: +SKIP
    >>> engine.fit(model, datamodule=datamodule)  # doctest: +SKIP
    >>> metrics = evaluate_per_category(engine, model, datamodule)  # doctest: +SKIP
    >>> metrics["grass"]["pixel_AUROC"]  # doctest: +SKIP
    >>> paths = export_per_category(engine, model, "openvino", "exports")  # exports/<name>/weights/  # doctest: +SKIP
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from anomalib_diffad.data.multi import MultiCategory
from anomalib_diffad.lightning_model import DiffAD


def evaluate_per_category(
    engine: Engine,
    model: AnomalibModule,
    datamodule: MultiCategory,
    ckpt_path: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Run anomalib's test (the model's Evaluator metrics) on each category of ``datamodule`` in turn.

    Works for any anomalib model trained on the ``MultiCategory`` (a unified DiffAD uses each category's
    calibration; a model without categories, e.g. PatchCore, its single pooled one). A unified DiffAD also
    reports these in one test pass (``<category>/<metric>``, see :class:`~anomalib_diffad.metrics.CategoryEvaluator`).

    Returns:
        Metrics per category name, under the Evaluator's metric names.
    """
    return {
        name: {
            key: float(value)
            for key, value in engine.test(
                model=model,
                datamodule=datamodule.for_category(name),
                ckpt_path=ckpt_path,
                verbose=False,
            )[0].items()
            if "/" not in key  # the per-category copy of the same value
        }
        for name in datamodule.include
    }


def export_per_category(
    engine: Engine,
    model: DiffAD,
    export_type: ExportType | str,
    export_root: str | Path,
    categories: Sequence[str | int] | None = None,
    **kwargs: Any,  # noqa: ANN401
) -> dict[str | int, Path]:
    """Export one graph per category of a unified DiffAD (the same weights, the category baked in).

    Each graph takes an image only, as anomalib's inferencers expect, and lands in
    ``<export_root>/<category>/weights/<type>/model.*``. The model's selected category is restored afterwards.

    Args:
        engine: Engine whose ``export`` writes the files.
        model: Unified DiffAD (``num_classes`` set).
        export_type: ``torch``, ``onnx`` or ``openvino``.
        export_root: Folder of the per-category exports.
        categories: Names or indices to export (default: every category, see ``DiffAD.category_names``).
        **kwargs: Further ``Engine.export`` arguments (``compression_type``, ``datamodule``, ...).

    Returns:
        Path of each category's exported file.

    Raises:
        ValueError: If the model is single-category or a category is unknown.
    """
    if model.model.num_classes is None:
        msg = "export_per_category needs a unified DiffAD (num_classes set); export a single-category model as usual."
        raise ValueError(msg)
    paths = {}
    for name in categories or model.category_names:
        with model.selected_category(name):
            paths[name] = engine.export(
                model=model,
                export_type=export_type,
                export_root=Path(export_root) / str(name),
                **kwargs,
            )
    return paths
