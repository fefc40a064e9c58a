# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The unified model: one class-conditional DiffAD for several categories.

:class:`Categories` is ``DiffAD``'s category handling (names, selection, each batch's class labels, the check
against a :class:`~anomalib_diffad.data.multi.MultiCategory` datamodule, the exported graph's baked-in
category); :func:`calibration_indices` picks each category's calibration images; :func:`evaluate_per_category`
and :func:`export_per_category` test and export such a model per category.

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
from anomalib.data import Batch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule

from anomalib_diffad.data.multi import CATEGORY_COLUMN, MultiCategory

if TYPE_CHECKING:
    from anomalib_diffad.lightning_model import DiffAD


class Categories:
    """The categories of a DiffAD: a single-category model has ``num_classes=None``; a unified
    (class-conditional) one has an index per category, and may have one selected.

    Args:
        names: Category names in index order (sets ``num_classes`` when that is ``None``).
        num_classes: Class embeddings of the denoiser (``None``: single-category, unless ``names`` are given).
        selected: Category (name or index) for images whose batch carries none (see :meth:`select`).

    Raises:
        ValueError: If ``num_classes`` is below 1 or below the number of names, or ``selected`` is invalid.

    Example:
        >>> categories = Categories(("brick", "grass"), num_classes=3, selected="grass")
        >>> categories.num_classes, categories.selected, categories.all_names
        (3, 1, ('brick', 'grass', '2'))
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        num_classes: int | None = None,
        selected: str | int | None = None,
    ) -> None:
        self.names = None if names is None else tuple(names)
        if self.names is not None:
            num_classes = len(self.names) if num_classes is None else num_classes
            if num_classes < len(self.names):
                msg = (
                    f"num_classes={num_classes} is smaller than the number of categories {len(self.names)}: "
                    f"{self.names}."
                )
                raise ValueError(msg)
        if num_classes is not None and num_classes < 1:
            msg = f"num_classes must be at least 1 (or None for a single-category model), got {num_classes}."
            raise ValueError(msg)
        self.num_classes = num_classes
        self.selected: int | None = None
        self.select(selected)

    @property
    def all_names(self) -> tuple[str, ...]:
        """A name for every class index (``names``, then the other indices as text); ``()`` if single-category."""
        names = self.names or ()
        return () if self.num_classes is None else names + tuple(map(str, range(len(names), self.num_classes)))

    def index(self, category: str | int) -> int:
        """Index of a category given by name (needs ``names``) or index.

        Raises:
            ValueError: If the model is not class-conditional, or the category is unknown or out of range.
        """
        if self.num_classes is None:
            msg = "This DiffAD is a single-category model (num_classes=None): there is no category to select."
            raise ValueError(msg)
        if isinstance(category, str):
            if self.names is None or category not in self.names:
                msg = f"Unknown category {category!r}; this model's categories are {self.names}."
                raise ValueError(msg)
            category = self.names.index(category)
        if not 0 <= int(category) < self.num_classes:
            msg = f"Category index {category} is out of range for num_classes={self.num_classes}."
            raise ValueError(msg)
        return int(category)

    def select(self, category: str | int | None) -> None:
        """Fix the category for images whose batch carries none (export, plain datamodules); ``None`` clears it.

        The exported graph bakes the selected category in (its class embedding and calibration).

        Raises:
            ValueError: As :meth:`index`.
        """
        self.selected = None if category is None else self.index(category)

    @contextmanager
    def selection(self, category: str | int | None) -> Iterator[None]:
        """Select ``category`` (as :meth:`select`) inside a ``with`` block, then restore the selection."""
        previous = self.selected
        self.select(category)
        try:
            yield
        finally:
            self.selected = previous

    def labels(self, batch: Batch) -> torch.Tensor | None:
        """Each image's category index: the batch's ``category`` field, else the selected category.

        ``None`` for a single-category model.

        Raises:
            ValueError: For a unified model, if the batch has no category and none is selected, or an index is
                out of range.
        """
        if self.num_classes is None:
            return None
        labels = getattr(batch, "category", None)
        if labels is None:
            if self.selected is None:
                msg = (
                    f"This DiffAD is unified (num_classes={self.num_classes}) and the batch carries no category: use "
                    "anomalib_diffad.MultiCategory, or call model.categories.select(...) first."
                )
                raise ValueError(msg)
            return torch.full((batch.image.shape[0],), self.selected, dtype=torch.long, device=batch.image.device)
        labels = labels.to(batch.image.device)
        if bool((labels >= self.num_classes).any()):
            msg = f"Category index {int(labels.max())} is out of range for num_classes={self.num_classes}."
            raise ValueError(msg)
        return labels

    def selected_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The selected category's index for each of ``images`` (the batch stays dynamic in an exported graph).

        Raises:
            ValueError: If no category is selected.
        """
        if self.selected is None:
            msg = (
                f"This DiffAD is unified (num_classes={self.num_classes}) and no category is selected: call "
                "model.categories.select(...) (CLI: --model.category <name>) before exporting or calling it on raw "
                "images (one exported graph per category)."
            )
            raise ValueError(msg)
        return torch.full_like(images[:, 0, 0, 0], self.selected, dtype=torch.long)

    def check(self, datamodule: object) -> None:
        """A unified model must have room for (and the names of) a ``MultiCategory`` datamodule's categories.

        A single-category model may train on a ``MultiCategory`` too: one unconditional model for all of them.

        Raises:
            ValueError: If ``num_classes`` is too small or the names differ from the datamodule's.
        """
        if not isinstance(datamodule, MultiCategory) or self.num_classes is None:
            return
        categories = datamodule.categories
        if self.num_classes < len(categories):
            msg = (
                f"num_classes={self.num_classes} is smaller than the datamodule's {len(categories)} categories "
                f"{categories}."
            )
            raise ValueError(msg)
        if self.names is not None and tuple(self.names[: len(categories)]) != tuple(categories):
            msg = f"The model's categories {self.names} do not match the datamodule's {categories}."
            raise ValueError(msg)


def calibration_indices(dataset: object, count: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The first ``count`` images of a training set (per category of a unified set), this rank's share of them.

    Deterministic (dataset order, no shuffling), so every validation calibrates on the same images; rank ``r``
    of ``world_size`` takes every ``world_size``-th of them, and the ranks' moments are summed.
    """
    samples = getattr(dataset, "samples", None)
    if samples is not None and CATEGORY_COLUMN in samples:
        categories = samples[CATEGORY_COLUMN].to_numpy()
        chosen = [i for c in sorted(set(categories.tolist())) for i in (categories == c).nonzero()[0][:count].tolist()]
    else:
        chosen = list(range(min(count, len(dataset))))
    return chosen[rank::world_size]


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
        categories: Names or indices to export (default: every category, see ``Categories.all_names``).
        **kwargs: Further ``Engine.export`` arguments (``compression_type``, ``datamodule``, ...).

    Returns:
        Path of each category's exported file.

    Raises:
        ValueError: If the model is single-category or a category is unknown.
    """
    if model.categories.num_classes is None:
        msg = "export_per_category needs a unified DiffAD (num_classes set); export a single-category model as usual."
        raise ValueError(msg)
    paths = {}
    for name in categories or model.categories.all_names:
        with model.categories.selection(name):
            paths[name] = engine.export(
                model=model,
                export_type=export_type,
                export_root=Path(export_root) / str(name),
                **kwargs,
            )
    return paths
