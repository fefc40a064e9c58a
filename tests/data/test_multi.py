# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``MultiCategory`` (:mod:`anomalib_diffad.data.multi`): every batch carries its samples' category indices,
one-category views keep their index, ``Folder`` and ``MVTecAD`` children mix, errors name the categories."""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD

from anomalib_diffad import MultiCategory
from anomalib_diffad.data.multi import CategoryImageBatch, CategoryImageItem
from tests.helpers.datasets import NAMES, multi_category


def _path_category(path: str) -> str:
    return Path(path).parts[-4]  # <root>/<category>/<split>/<type>/<file>


def test_every_batch_carries_its_samples_categories(texture_root: Path) -> None:
    """Train (shuffled), validation and test batches tag each image with its own category's index."""
    datamodule = multi_category(texture_root)
    datamodule.setup()
    assert datamodule.categories == NAMES
    loaders = {
        "train": datamodule.train_dataloader(),
        "val": datamodule.val_dataloader(),
        "test": datamodule.test_dataloader(),
    }
    for split, loader in loaders.items():
        seen = set()
        for batch in loader:
            assert isinstance(batch, CategoryImageBatch), split
            assert batch.category.dtype == torch.long
            assert batch.category.tolist() == [NAMES.index(_path_category(p)) for p in batch.image_path], split
            seen.update(batch.category.tolist())
        assert seen == {0, 1, 2}, split
    assert len(datamodule.train_data) == 24
    assert len(datamodule.test_data) == 24  # 4 good + 4 defects per category
    item = datamodule.test_data[0]
    assert isinstance(item, CategoryImageItem)
    assert type(next(iter(loaders["test"])).to_numpy()).__name__ == "NumpyImageBatch"


def test_for_category_keeps_the_index(texture_root: Path) -> None:
    """A one-category view serves only that category's images, still with its index in the full list."""
    grass = multi_category(texture_root).for_category("grass")
    grass.setup()
    assert grass.category == "grass"
    labels = torch.cat([batch.category for batch in grass.test_dataloader()])
    assert labels.tolist() == [1] * 8


def test_folder_and_mvtec_children_mix(texture_root: Path) -> None:
    """A ``Folder`` child (named by its ``name``) and an ``MVTecAD`` child combine; each split keeps its images."""
    from anomalib.data import Folder

    grass = texture_root / "grass"
    folder = Folder(
        name="grass_folder",
        root=grass,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir=[path.relative_to(grass) for path in sorted((grass / "test").iterdir()) if path.name != "good"],
        mask_dir=[path.relative_to(grass) for path in sorted((grass / "ground_truth").iterdir())],
        num_workers=0,
    )
    datamodule = MultiCategory([MVTecAD(root=texture_root, category="brick", num_workers=0), folder], num_workers=0)
    datamodule.setup()
    assert datamodule.categories == ("brick", "grass_folder")
    for split in ("train_data", "val_data", "test_data"):
        samples = getattr(datamodule, split).samples
        expected = samples.image_path.map(lambda path: 0 if _path_category(path) == "brick" else 1)
        assert samples.category_index.tolist() == expected.tolist(), split
        assert set(expected) == {0, 1}, split
    assert len(datamodule.train_data) == 16


def test_datamodule_errors_are_clear(texture_root: Path) -> None:
    """Unknown, duplicate or miscounted categories fail with a message naming them."""
    with pytest.raises(ValueError, match="Unknown category 'tile'"):
        multi_category(texture_root).for_category("tile")
    with pytest.raises(ValueError, match="unique"):
        MultiCategory([MVTecAD(root=texture_root, category="brick")] * 2)
    with pytest.raises(ValueError, match="2 datamodules but 1 category"):
        MultiCategory([MVTecAD(root=texture_root, category=n) for n in NAMES[:2]], categories=["a"])
