# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The unified model: one class-conditional DiffAD for several categories.

:class:`UnifiedMixin` gives ``DiffAD`` its category handling (names, selection, each batch's class labels, the
check against a :class:`~anomalib_diffad.data.multi.MultiCategory` datamodule, the exported graph's baked-in
category); :func:`evaluate_per_category` and :func:`export_per_category` test and export such a model per
category.

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from anomalib.data import Batch, InferenceBatch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from anomalib_diffad.data.multi import MultiCategory
from anomalib_diffad.torch_model import DiffADModel

if TYPE_CHECKING:
    from anomalib_diffad.lightning_model import DiffAD


def resolve_num_classes(categories: Sequence[str] | None, num_classes: int | None) -> int | None:
    """``num_classes`` of a model given its ``categories`` (their number when ``num_classes`` is ``None``).

    Raises:
        ValueError: If ``num_classes`` is below 1 or below the number of categories.
    """
    if categories is not None:
        if num_classes is None:
            num_classes = len(categories)
        if num_classes < len(categories):
            msg = f"num_classes={num_classes} is smaller than the number of categories {len(categories)}: {categories}."
            raise ValueError(msg)
    if num_classes is not None and num_classes < 1:
        msg = f"num_classes must be at least 1 (or None for a single-category model), got {num_classes}."
        raise ValueError(msg)
    return num_classes


def names_by_index(categories: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """A name for every class index: the given categories, then the remaining indices as text."""
    names = tuple(categories or ())
    return names + tuple(map(str, range(len(names), num_classes)))


class UnifiedMixin:
    """Category handling of a unified (class-conditional) DiffAD; a single-category model has ``num_classes=None``.

    Expects ``model`` (a :class:`~anomalib_diffad.torch_model.DiffADModel`), ``categories`` (names in index
    order, or ``None``) and ``category`` (the selected index, or ``None``) on the Lightning module.
    """

    model: DiffADModel
    categories: tuple[str, ...] | None
    category: int | None

    def select_category(self, category: str | int | None) -> None:
        """Fix the category of a unified model for images whose batch carries none (export, plain datamodules).

        The exported graph bakes the selected category in (its class embedding and calibration).

        Args:
            category: Category name (needs ``categories``) or index; ``None`` clears the selection.

        Raises:
            ValueError: If the model is not class-conditional, or the category is unknown or out of range.
        """
        self.category = None if category is None else self.category_index(category)

    def category_index(self, category: str | int) -> int:
        """Index of a category given by name (needs ``categories``) or index.

        Raises:
            ValueError: If the model is not class-conditional, or the category is unknown or out of range.
        """
        num_classes = self.model.num_classes
        if num_classes is None:
            msg = "This DiffAD is a single-category model (num_classes=None): there is no category to select."
            raise ValueError(msg)
        if isinstance(category, str):
            if self.categories is None or category not in self.categories:
                msg = f"Unknown category {category!r}; this model's categories are {self.categories}."
                raise ValueError(msg)
            category = self.categories.index(category)
        if not 0 <= int(category) < num_classes:
            msg = f"Category index {category} is out of range for num_classes={num_classes}."
            raise ValueError(msg)
        return int(category)

    @property
    def category_names(self) -> tuple[str, ...]:
        """Name of every category index of a unified model (``categories``, then indices as text); ``()`` if single."""
        num_classes = self.model.num_classes
        return () if num_classes is None else names_by_index(self.categories, num_classes)

    @contextmanager
    def selected_category(self, category: str | int | None) -> Iterator[None]:
        """Select ``category`` (as :meth:`select_category`) inside a ``with`` block, then restore the selection."""
        previous = self.category
        self.select_category(category)
        try:
            yield
        finally:
            self.category = previous

    def class_labels(self, batch: Batch) -> torch.Tensor | None:
        """Each image's category index: the batch's ``category`` field, else the selected category.

        ``None`` for a single-category model.

        Raises:
            ValueError: For a unified model, if the batch has no category and none is selected, or an index is
                out of range.
        """
        num_classes = self.model.num_classes
        if num_classes is None:
            return None
        labels = getattr(batch, "category", None)
        if labels is None:
            if self.category is None:
                msg = (
                    f"This DiffAD is unified (num_classes={num_classes}) and the batch carries no category: use "
                    "anomalib_diffad.MultiCategory, or call select_category(...) first."
                )
                raise ValueError(msg)
            return torch.full((batch.image.shape[0],), self.category, dtype=torch.long, device=batch.image.device)
        labels = labels.to(batch.image.device)
        if bool((labels >= num_classes).any()):
            msg = f"Category index {int(labels.max())} is out of range for num_classes={num_classes}."
            raise ValueError(msg)
        return labels

    def _check_categories(self, datamodule: object) -> None:
        """A unified model must have room for (and the names of) a ``MultiCategory`` datamodule's categories.

        A single-category model may train on a ``MultiCategory`` too: one unconditional model for all of them.
        """
        num_classes = self.model.num_classes
        if not isinstance(datamodule, MultiCategory) or num_classes is None:
            return
        categories = datamodule.categories
        if num_classes < len(categories):
            msg = (
                f"num_classes={num_classes} is smaller than the datamodule's {len(categories)} categories "
                f"{categories}."
            )
            raise ValueError(msg)
        if self.categories is not None and tuple(self.categories[: len(categories)]) != tuple(categories):
            msg = f"The model's categories {self.categories} do not match the datamodule's {categories}."
            raise ValueError(msg)

    def forward(self, batch: torch.Tensor, *args, **kwargs) -> InferenceBatch:
        """Export/inference path: pre-process, score, post-process; a unified model uses the selected category."""
        if self.model.num_classes is None:
            return super().forward(batch, *args, **kwargs)
        if self.category is None:
            msg = (
                f"This DiffAD is unified (num_classes={self.model.num_classes}) and no category is selected: call "
                "select_category(...) (CLI: --model.category <name>) before exporting or calling it on raw images "
                "(one exported graph per category)."
            )
            raise ValueError(msg)
        images = self.pre_processor(batch) if self.pre_processor else batch
        labels = torch.full_like(images[:, 0, 0, 0], self.category, dtype=torch.long)
        predictions = self.model(images, labels)
        return self.post_processor(predictions, labels) if self.post_processor else predictions




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
    model: "DiffAD",
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
