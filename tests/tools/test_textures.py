# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0

"""Tests for the built-in synthetic texture dataset generator."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from diffad_tools import textures
from diffad_tools.textures import (
    DEFECT_TYPES,
    TEXTURE_CATEGORIES,
    generate_texture_dataset,
    main,
    make_defect_sample,
    make_normal_image,
)

if TYPE_CHECKING:
    from pathlib import Path

SMALL = {"image_size": 48, "num_train": 3, "num_test_good": 2, "num_test_per_defect": 2}


def _files(root: Path) -> dict[str, bytes]:
    """Map every file's path relative to ``root`` to its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset with all categories."""
    return generate_texture_dataset(tmp_path_factory.mktemp("textures"), seed=3, **SMALL)


def test_public_api() -> None:
    assert TEXTURE_CATEGORIES == ("brick", "grass", "gravel")
    assert DEFECT_TYPES == ("scratch", "patch", "stain", "missing")


def test_layout_and_counts(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["README.txt", "brick", "grass", "gravel"]
    readme = (dataset / "README.txt").read_text()
    assert "CC0" in readme
    assert "scikit-image" in readme
    assert "anomalib-diffad" in readme
    for category in TEXTURE_CATEGORIES:
        cat = dataset / category
        assert sorted(p.name for p in cat.iterdir()) == ["ground_truth", "test", "train"]
        assert sorted(p.name for p in (cat / "train").iterdir()) == ["good"]
        assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
        assert sorted(p.name for p in (cat / "ground_truth").iterdir()) == sorted(DEFECT_TYPES)
        assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
        assert sorted(p.name for p in (cat / "test" / "good").iterdir()) == ["000.png", "001.png"]
        for defect in DEFECT_TYPES:
            assert sorted(p.name for p in (cat / "test" / defect).iterdir()) == ["000.png", "001.png"]
            assert sorted(p.name for p in (cat / "ground_truth" / defect).iterdir()) == [
                "000_mask.png",
                "001_mask.png",
            ]
        for path in cat.rglob("*.png"):
            with Image.open(path) as img:
                assert img.format == "PNG"
                assert img.size == (48, 48)
                assert img.mode == ("L" if path.parent.parent.name == "ground_truth" else "RGB")
    # no temporary folders left behind
    assert not list(dataset.glob(".*"))


def test_files_match_helpers(dataset: Path) -> None:
    """The written files are exactly what the public sample helpers return."""
    for category in TEXTURE_CATEGORIES:
        np.testing.assert_array_equal(
            _load(dataset / category / "train" / "good" / "001.png"),
            make_normal_image(category, image_size=48, seed=3, index=1),
        )
        for defect in DEFECT_TYPES:
            _, defective, mask = make_defect_sample(category, defect, image_size=48, seed=3, index=1)
            np.testing.assert_array_equal(_load(dataset / category / "test" / defect / "001.png"), defective)
            np.testing.assert_array_equal(_load(dataset / category / "ground_truth" / defect / "001_mask.png"), mask)


def test_masks_binary_and_area(dataset: Path) -> None:
    masks = sorted(dataset.rglob("*_mask.png"))
    assert len(masks) == len(TEXTURE_CATEGORIES) * len(DEFECT_TYPES) * 2
    for path in masks:
        mask = _load(path)
        assert mask.dtype == np.uint8
        assert mask.ndim == 2
        assert set(np.unique(mask)) <= {0, 255}
        fraction = (mask > 0).mean()
        assert 0.002 <= fraction <= 0.15, (path, fraction)


def test_category_tints_and_same_distribution(dataset: Path) -> None:
    """Each category has its own colour, and train/test normals come from the same distribution."""
    means = {}
    for category in TEXTURE_CATEGORIES:
        train = np.stack([_load(p) for p in sorted((dataset / category / "train" / "good").glob("*.png"))])
        test = np.stack([_load(p) for p in sorted((dataset / category / "test" / "good").glob("*.png"))])
        means[category] = train.reshape(-1, 3).mean(0)
        assert np.abs(train.reshape(-1, 3).mean(0) - test.reshape(-1, 3).mean(0)).max() < 25
        assert train.std() > 10  # textured, not flat
    r, g, b = means["brick"]
    assert r > g + 30
    assert r > b + 30
    r, g, b = means["grass"]
    assert g > r + 20
    assert g > b + 40
    assert np.ptp(means["gravel"]) < 25  # near grey


@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("category", TEXTURE_CATEGORIES)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_defect_changes_only_inside_mask(defect: str, category: str, image_size: int) -> None:
    for index in range(3):
        normal, defective, mask = make_defect_sample(category, defect, image_size=image_size, seed=1, index=index)
        assert normal.shape == defective.shape == (image_size, image_size, 3)
        assert normal.dtype == defective.dtype == mask.dtype == np.uint8
        assert mask.shape == (image_size, image_size)
        inside = mask > 0
        assert 0.002 <= inside.mean() <= 0.15
        change = np.abs(defective.astype(np.int16) - normal.astype(np.int16)).mean(-1)
        # pixels outside the mask are exactly the normal image
        assert change[~inside].max() == 0
        # the defect is clearly visible inside the mask
        assert change[inside].mean() > 10
        assert change[inside].mean() > 10 * (change[~inside].mean() + 1e-3)
        # most of the labelled pixels are visibly changed
        assert (change[inside] >= 3).mean() > 0.6


def test_defect_sample_starts_from_fresh_normal() -> None:
    normal, _, _ = make_defect_sample("brick", "stain", image_size=32, seed=0, index=0)
    for other in (make_normal_image("brick", 32, 0, 0), make_defect_sample("brick", "patch", 32, 0, 0)[0]):
        assert not np.array_equal(normal, other)


def test_determinism(tmp_path: Path) -> None:
    kwargs = {"categories": ("grass",), "image_size": 32, "num_train": 2, "num_test_good": 1, "num_test_per_defect": 1}
    first = _files(generate_texture_dataset(tmp_path / "a", seed=5, **kwargs))
    second = _files(generate_texture_dataset(tmp_path / "b", seed=5, **kwargs))
    other = _files(generate_texture_dataset(tmp_path / "c", seed=6, **kwargs))
    assert len(first) == 2 + 1 + 2 * len(DEFECT_TYPES) + 1  # images, masks and README
    assert first == second
    assert first.keys() == other.keys()
    pngs = [k for k in first if k.endswith(".png")]
    assert all(first[k] != other[k] for k in pngs)


def test_samples_do_not_depend_on_counts() -> None:
    """Per-image random streams: an image does not change when other counts change."""
    a = make_defect_sample("gravel", "scratch", image_size=32, seed=2, index=4)
    b = make_defect_sample("gravel", "scratch", image_size=32, seed=2, index=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(make_normal_image("gravel", 32, 2, 0), make_normal_image("gravel", 32, 2, 1))
    assert not np.array_equal(make_normal_image("gravel", 32, 2, 0), make_normal_image("grass", 32, 2, 0))


def test_idempotent_and_overwrite(tmp_path: Path) -> None:
    kwargs = {"categories": ["brick"], "image_size": 32, "num_train": 2, "num_test_good": 1, "num_test_per_defect": 1}
    root = generate_texture_dataset(tmp_path, **kwargs)
    assert root == tmp_path
    original = _files(root / "brick")
    marker = root / "brick" / "marker.txt"
    marker.write_text("keep me")

    # existing category is left untouched, even with other arguments
    generate_texture_dataset(tmp_path, **{**kwargs, "num_train": 5, "seed": 9})
    assert marker.read_text() == "keep me"
    assert _files(root / "brick") == {**original, "marker.txt": b"keep me"}

    # overwrite regenerates from scratch
    generate_texture_dataset(tmp_path, overwrite=True, **kwargs)
    assert not marker.exists()
    assert _files(root / "brick") == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "brick"]


def test_interrupted_run_leaves_no_category(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_save = textures._save  # noqa: SLF001 - the real writer, wrapped to fail once

    def flaky_save(array: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            msg = "interrupted"
            raise KeyboardInterrupt(msg)
        real_save(array, path)

    monkeypatch.setattr(textures, "_save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        generate_texture_dataset(tmp_path, categories=["gravel"], image_size=32, num_train=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt"]

    monkeypatch.setattr(textures, "_save", real_save)
    generate_texture_dataset(tmp_path, categories=["gravel"], image_size=32, num_train=4, num_test_per_defect=1)
    assert len(list((tmp_path / "gravel" / "train" / "good").glob("*.png"))) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"categories": ["brick", "marble"]}, r"Unknown texture category 'marble'.*brick.*grass.*gravel"),
        ({"categories": []}, "At least one category"),
        ({"image_size": 15}, "image_size must be an integer >= 16"),
        ({"image_size": 32.0}, "image_size must be an integer"),
        ({"num_train": -1}, "num_train must be a non-negative integer"),
        ({"num_test_good": -2}, "num_test_good must be a non-negative integer"),
        ({"num_test_per_defect": -1}, "num_test_per_defect must be a non-negative integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_texture_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def test_helper_argument_errors() -> None:
    with pytest.raises(ValueError, match="Unknown defect 'dent'"):
        make_defect_sample("brick", "dent")
    with pytest.raises(ValueError, match="Unknown texture category 'wood'"):
        make_normal_image("wood")


def test_single_category_string(tmp_path: Path) -> None:
    kwargs = {"image_size": 16, "num_train": 1, "num_test_good": 0, "num_test_per_defect": 1}
    generate_texture_dataset(tmp_path, categories="grass", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "grass"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--root", str(tmp_path / "ds"), "--image-size", "32", "--seed", "1", "--categories", "brick", "gravel"]
    args += ["--num-train", "1", "--num-test-good", "1", "--num-test-per-defect", "1"]
    main(args)
    out = capsys.readouterr().out
    assert f"wrote: {(tmp_path / 'ds' / 'brick').resolve()}" in out
    assert str((tmp_path / "ds").resolve()) in out
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["README.txt", "brick", "gravel"]
    np.testing.assert_array_equal(
        _load(tmp_path / "ds" / "gravel" / "train" / "good" / "000.png"), make_normal_image("gravel", 32, 1, 0)
    )
    main(args)
    assert "kept existing" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path / "ds"), "--image-size", "8"])
    with pytest.raises(SystemExit):
        main(["--root", str(tmp_path / "ds"), "--categories", "marble"])


def test_loads_with_anomalib_mvtecad(dataset: Path) -> None:
    from anomalib.data import MVTecAD

    datamodule = MVTecAD(root=dataset, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 3
    test_samples = datamodule.test_data.samples
    assert len(test_samples) == 2 + 2 * len(DEFECT_TYPES)
    assert (test_samples.label_index == 0).sum() == 2
    assert (test_samples.label_index == 1).sum() == 2 * len(DEFECT_TYPES)
    abnormal = test_samples[test_samples.label_index == 1]
    assert abnormal.mask_path.notna().all()
    assert datamodule.test_data.task == "segmentation"
    for i in range(len(datamodule.test_data)):
        item = datamodule.test_data[i]
        assert tuple(item.image.shape) == (3, 48, 48)
        if item.gt_label:
            assert 0.002 <= float(item.gt_mask.float().mean()) <= 0.15
        else:
            assert int(item.gt_mask.sum()) == 0
    batch = next(iter(datamodule.test_dataloader()))
    assert tuple(batch.image.shape) == (4, 3, 48, 48)
