# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Several anomalib datamodules as one, with each sample's category index in its batch.

anomalib's ``ImageItem``/``ImageBatch`` have no category field, so :class:`CategoryImageItem` and
:class:`CategoryImageBatch` add one (``category``: the index of the sample's category, a ``long`` tensor).
:class:`CategoryDataset` concatenates the samples of several anomalib datasets with a ``category_index``
column and yields those items; :class:`MultiCategory` builds it from several datamodules (``MVTecAD``,
``Folder``, ...) after each has made its own train/validation/test splits. The category travels with the
sample through training, validation, test and predict, whatever the shuffling.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_diffad.data.multi import MultiCategory
    >>> datamodule = MultiCategory(
    ...     [MVTecAD(root="./datasets/textures", category=name) for name in ("brick", "grass", "gravel")],
    ...     train_batch_size=8,
    ... )
    >>> datamodule.categories
    ('brick', 'grass', 'gravel')
    >>> datamodule.for_category("grass").category
    'grass'
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import ClassVar

import pandas as pd
import torch
from anomalib.data import AnomalibDataModule, AnomalibDataset, ImageBatch, ImageItem, get_datamodule
from anomalib.data.dataclasses.generic import FieldDescriptor
from anomalib.data.dataclasses.numpy.image import NumpyImageBatch, NumpyImageItem
from torchvision.transforms.v2 import Transform

CATEGORY_COLUMN = "category_index"


def _image_fields(cls: type) -> tuple[str, ...]:
    """Names of the init fields of anomalib dataclass ``cls``."""
    return tuple(field.name for field in fields(cls) if field.init)


def _validate_category(category: int | torch.Tensor | None) -> torch.Tensor | None:
    if category is None:
        return None
    category = torch.as_tensor(category)
    if category.is_floating_point() or category.is_complex() or bool((category < 0).any()):
        msg = f"category must be a non-negative integer index, got {category}."
        raise ValueError(msg)
    return category.long()


@dataclass
class _CategoryField:
    """The ``category`` field (a mixin like anomalib's ``_ImageInputFields``, so its type hints resolve)."""

    # A descriptor as default, as in anomalib's own fields: dataclasses keep it on the class.
    category: FieldDescriptor[torch.Tensor | None] = FieldDescriptor(validator_name="validate_category")  # noqa: RUF009


@dataclass
class CategoryImageItem(_CategoryField, ImageItem):
    """anomalib ``ImageItem`` plus ``category``, the index of the sample's category (scalar ``long`` tensor)."""

    @staticmethod
    def validate_category(category: int | torch.Tensor | None) -> torch.Tensor | None:
        """Category index as a ``long`` tensor."""
        return _validate_category(category)

    def to_numpy(self) -> NumpyImageItem:
        """anomalib's numpy item (which has no category field)."""
        return ImageItem(**{name: getattr(self, name) for name in _image_fields(ImageItem)}).to_numpy()


@dataclass
class CategoryImageBatch(_CategoryField, ImageBatch):
    """anomalib ``ImageBatch`` plus ``category``, the ``(N,)`` category indices of its samples.

    Example:
        >>> batch = CategoryImageBatch.collate([
        ...     CategoryImageItem(image=torch.zeros(3, 8, 8), gt_label=torch.tensor(0), category=2),
        ...     CategoryImageItem(image=torch.zeros(3, 8, 8), gt_label=torch.tensor(1), category=0),
        ... ])
        >>> batch.category.tolist()
        [2, 0]
    """

    item_class: ClassVar[type[CategoryImageItem]] = CategoryImageItem

    @staticmethod
    def validate_category(category: Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
        """Category indices as a ``long`` tensor of shape ``(N,)``."""
        category = _validate_category(category)
        return None if category is None else category.reshape(-1)

    def to_numpy(self) -> NumpyImageBatch:
        """anomalib's numpy batch (which has no category field)."""
        return ImageBatch(**{name: getattr(self, name) for name in _image_fields(ImageBatch)}).to_numpy()


def select_images(batch: object, fields: Iterable[str], selected: torch.Tensor) -> SimpleNamespace:
    """The ``fields`` of ``batch`` for the ``selected`` images (boolean mask or indices); missing ones are ``None``.

    Enough of a batch for anomalib's metrics, which read only their ``fields``.
    """
    values = {}
    for field in fields:
        value = getattr(batch, field, None)
        values[field] = None if value is None else value[selected.to(value.device)]
    return SimpleNamespace(**values)


def _as_datamodule(datamodule: AnomalibDataModule | Mapping) -> AnomalibDataModule:
    """``datamodule`` itself, or the datamodule its config (``class_path``, ``init_args``) describes."""
    if isinstance(datamodule, AnomalibDataModule):
        return datamodule
    if isinstance(datamodule, Mapping) and "class_path" in datamodule:
        return get_datamodule(datamodule)
    msg = f"MultiCategory takes anomalib datamodules or their configs (class_path, init_args), got {datamodule!r}."
    raise TypeError(msg)


class CategoryDataset(AnomalibDataset):
    """The samples of several anomalib datasets, each tagged with its category index.

    Args:
        datasets: Datasets to concatenate (``MVTecADDataset``, ``FolderDataset``, ... all read their
            ``samples`` table the same way).
        indices: Category index of each dataset.
        augmentations: Augmentations applied to every sample.

    Raises:
        ValueError: If no dataset is given, the counts differ, or the datasets mix task types.
    """

    def __init__(
        self,
        datasets: Sequence[AnomalibDataset],
        indices: Sequence[int],
        augmentations: Transform | None = None,
    ) -> None:
        super().__init__(augmentations=augmentations)
        if not datasets or len(datasets) != len(indices):
            msg = f"CategoryDataset needs one category index per dataset, got {len(datasets)} and {len(indices)}."
            raise ValueError(msg)
        tasks = {dataset.task for dataset in datasets}
        if len(tasks) != 1:
            msg = f"Cannot combine datasets of different tasks: {sorted(str(task) for task in tasks)}."
            raise ValueError(msg)
        tagged = [
            dataset.samples.assign(**{CATEGORY_COLUMN: index})
            for dataset, index in zip(datasets, indices, strict=True)
        ]
        samples = pd.concat(tagged, ignore_index=True)
        samples.attrs["task"] = datasets[0].samples.attrs["task"]
        self.samples = samples

    def __getitem__(self, index: int) -> CategoryImageItem:
        """anomalib's item for ``index``, with its category index."""
        item = super().__getitem__(index)
        values = {name: getattr(item, name) for name in _image_fields(ImageItem)}
        return CategoryImageItem(**values, category=int(self.samples[CATEGORY_COLUMN].iloc[index]))

    @property
    def collate_fn(self) -> Callable:
        """Collate into :class:`CategoryImageBatch`."""
        return CategoryImageBatch.collate


class MultiCategory(AnomalibDataModule):
    """Several anomalib datamodules (one per category) as one datamodule whose batches carry the category.

    Each child makes its own splits (its ``val_split_mode``, ``test_split_mode``, seed); this module
    concatenates the child subsets and tags every sample with the index of its child in ``datamodules``.
    Batch sizes, workers and augmentations are this module's (the children's augmentations are not used).

    Args:
        datamodules: One anomalib image datamodule per category, e.g. ``MVTecAD(category=...)`` or ``Folder``,
            or its config (``{"class_path": "MVTecAD", "init_args": {...}}``, as ``anomalib benchmark``
            passes it: built with anomalib's ``get_datamodule``).
        categories: Category names, in index order (default: each child's ``category``, else its ``name``).
        include: Categories whose samples this module serves (default: all); indices stay those of
            ``categories``, so a model trained on all of them can be tested on one (see :meth:`for_category`).
        train_batch_size: Training batch size.
        eval_batch_size: Validation, test and predict batch size.
        num_workers: Dataloader workers.
        train_augmentations: Training augmentations.
        val_augmentations: Validation augmentations.
        test_augmentations: Test augmentations.
        augmentations: Augmentations of every subset without its own.
        seed: Seed (the children's splits use their own seeds).

    Raises:
        ValueError: No datamodule, duplicate or unknown category names, or a name count that does not match.
    """

    def __init__(
        self,
        datamodules: Sequence[AnomalibDataModule],
        categories: Sequence[str] | None = None,
        include: Sequence[str] | None = None,
        train_batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 8,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            seed=seed,
        )
        if not datamodules:
            msg = "MultiCategory needs at least one datamodule."
            raise ValueError(msg)
        datamodules = [_as_datamodule(datamodule) for datamodule in datamodules]
        names = (
            tuple(getattr(datamodule, "category", "") or datamodule.name for datamodule in datamodules)
            if categories is None
            else tuple(categories)
        )
        if len(names) != len(datamodules):
            msg = f"Got {len(datamodules)} datamodules but {len(names)} category names {names}."
            raise ValueError(msg)
        if len(set(names)) != len(names):
            msg = f"Category names must be unique, got {names}; pass `categories` to name them."
            raise ValueError(msg)
        self.datamodules = tuple(datamodules)
        self.categories = names
        self.include = names if include is None else tuple(include)
        for name in self.include:
            self.category_index(name)
        self.category = "+".join(self.include)

    def category_index(self, name: str) -> int:
        """Index of category ``name``.

        Raises:
            ValueError: If ``name`` is not one of :attr:`categories`.
        """
        if name not in self.categories:
            msg = f"Unknown category {name!r}; this datamodule has {list(self.categories)}."
            raise ValueError(msg)
        return self.categories.index(name)

    def for_category(self, name: str) -> "MultiCategory":
        """The same datamodule serving only category ``name`` (indices unchanged), e.g. for per-category tests."""
        self.category_index(name)
        return MultiCategory(
            self.datamodules,
            categories=self.categories,
            include=(name,),
            train_batch_size=self.train_batch_size,
            eval_batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            train_augmentations=self.train_augmentations,
            val_augmentations=self.val_augmentations,
            test_augmentations=self.test_augmentations,
            seed=self.seed,
        )

    def prepare_data(self) -> None:
        """Let each included child prepare (e.g. download) its data."""
        for name in self.include:
            self.datamodules[self.category_index(name)].prepare_data()

    def _setup(self, _stage: str | None = None) -> None:
        """Set up each included child, then concatenate its subsets with category indices."""
        children = [(index, self.datamodules[index]) for index in map(self.category_index, self.include)]
        for _, child in children:
            child.setup()
        for subset in ("train_data", "val_data", "test_data"):
            present = [(index, getattr(child, subset)) for index, child in children if hasattr(child, subset)]
            if present:
                indices, datasets = zip(*present, strict=True)
                setattr(self, subset, CategoryDataset(datasets, indices))

    def _create_test_split(self) -> None:
        """Keep the children's test splits (anomalib's base would drop the test normals here)."""

    def _create_val_split(self) -> None:
        """Keep the children's validation splits."""
