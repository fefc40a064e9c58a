# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The real ``anomalib`` console script resolves ``--model DiffAD`` and ``--data MVTec`` after a plain install."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffad_tools.report import printed_metrics

REPO = Path(__file__).resolve().parents[2]
ANOMALIB = Path(sys.executable).parent / "anomalib"
TINY = REPO / "configs" / "diffad_tiny.yaml"


def _anomalib(*args: str, cwd: Path, fails: bool = False) -> subprocess.CompletedProcess:
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    result = subprocess.run(
        [str(ANOMALIB), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert (result.returncode != 0) == fails, result.stdout[-3000:] + result.stderr[-3000:]
    return result


TINY_OVERRIDES = (
    "--model.image_size", "64",
    "--model.space", "PixelSpace",
    "--model.space.block_out_channels", "[16, 32, 32]",
    "--model.space.attention_levels", "[2]",
    "--model.space.attention_head_dim", "16",
    "--model.space.norm_num_groups", "8",
)  # fmt: skip
"""The tiny preset's architecture as command-line overrides of the default DiffAD."""

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO")


@pytest.fixture(scope="module")
def trained(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README's command, ``anomalib train --model DiffAD --data MVTec ...``, made tiny by overrides only."""
    out = tmp_path_factory.mktemp("cli")
    result = _anomalib(
        "train",
        "--model", "DiffAD",
        "--data", "MVTec",
        "--data.root", str(dataset_root),
        "--data.category", "brick",
        "--trainer.max_epochs", "2",
        *TINY_OVERRIDES,
        "--data.train_batch_size", "4",
        "--data.eval_batch_size", "4",
        "--data.num_workers", "0",
        "--default_root_dir", str(out),
        cwd=out,
    )  # fmt: skip
    assert "no logger configured" not in result.stdout + result.stderr
    ckpt = out / "DiffAD" / "MVTecAD" / "brick" / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"root": out, "ckpt": ckpt, "metrics": printed_metrics(result.stdout + result.stderr)}


def test_train_with_short_names_writes_checkpoint_and_prints_metrics(trained: dict) -> None:
    """Short model and data names resolve; the checkpoint lands where MVTecAD's do, holds the overridden
    architecture and 4 EMA updates (8 images, batch 4, 2 epochs), and every test metric is printed."""
    from anomalib_diffad import DiffAD

    assert sorted(trained["metrics"]) == sorted(METRICS), trained["metrics"]
    model = DiffAD.load_from_checkpoint(trained["ckpt"])
    assert model.hparams.image_size == 64
    assert model.hparams.space["class_path"] == "anomalib_diffad.spaces.PixelSpace"
    assert model.hparams.space["init_args"]["block_out_channels"] == [16, 32, 32]
    assert model.model.ema_updates.item() == 4


def test_test_with_dotted_model_name_reports_the_checkpoints_metrics(trained: dict, dataset_root: Path) -> None:
    """``anomalib test --model anomalib_diffad.DiffAD --ckpt_path`` prints the metrics that ``anomalib train``
    printed: those are the written checkpoint's."""
    result = _anomalib(
        "test",
        "--model", "anomalib_diffad.DiffAD",
        *TINY_OVERRIDES,
        "--data", "MVTecAD",
        "--data.root", str(dataset_root),
        "--data.category", "brick",
        "--data.eval_batch_size", "4",  # as in train: batched convolutions round differently per batch size,
        "--data.num_workers", "0",      # which can flip the image that sits exactly on the F1 threshold
        "--default_root_dir", str(trained["root"]),
        "--ckpt_path", str(trained["ckpt"]),
        cwd=trained["root"],
    )  # fmt: skip
    assert printed_metrics(result.stdout + result.stderr) == pytest.approx(trained["metrics"], abs=1e-6)


def test_a_checkpoint_of_the_flat_format_stops_anomalib_test(trained: dict, dataset_root: Path, tmp_path: Path) -> None:
    """``anomalib test --ckpt_path`` on a checkpoint of anomalib-diffad 0.1 (``space: pixel`` and the UNet settings
    beside the other hyperparameters) ends in the error that names the format and the space dict to use."""
    import torch

    checkpoint = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    hyper_parameters = checkpoint["hyper_parameters"]
    hyper_parameters |= hyper_parameters.pop("space")["init_args"] | {"space": "pixel"}
    flat = tmp_path / "flat.ckpt"
    torch.save(checkpoint, flat)
    result = _anomalib(
        "test", "--model", "DiffAD", *TINY_OVERRIDES,
        "--data", "MVTecAD", "--data.root", str(dataset_root), "--data.category", "brick",
        "--default_root_dir", str(tmp_path), "--ckpt_path", str(flat),
        cwd=tmp_path, fails=True,
    )  # fmt: skip
    error = " ".join(result.stderr.rpartition("ValueError: ")[2].split())  # the last lines, unwrapped
    assert error.startswith(f"Checkpoint {flat}: space='pixel' with flat settings"), error
    assert "is the format of anomalib-diffad 0.1" in error
    assert "init_args: {block_out_channels: [16, 32, 32], layers_per_block: 1" in error


def test_print_config_lists_the_space_of_a_yaml_class_path(dataset_root: Path, tmp_path: Path) -> None:
    """A preset's ``space: {class_path: ..., init_args: ...}`` resolves; ``--print_config`` lists every init
    argument of the space, an override of one of them included."""
    import yaml

    data = ("--data", "MVTec", "--data.root", str(dataset_root), "--data.category", "brick")
    result = _anomalib(
        "train", "--config", str(REPO / "configs" / "diffad_patch.yaml"), "--model.space.init_args.mlp_width", "64",
        *data, "--print_config", cwd=tmp_path,
    )  # fmt: skip
    space = yaml.safe_load(result.stdout)["model"]["init_args"]["space"]
    assert space == {
        "class_path": "anomalib_diffad.spaces.PatchSpace",
        "init_args": {"mlp_width": 64, "mlp_blocks": 3, "feature_pool": 3},
    }


def test_export_openvino_with_short_name(trained: dict) -> None:
    """``anomalib export --model DiffAD --export_type openvino`` writes an IR with the four named outputs that
    takes images of any size (no ``--input_size``)."""
    import openvino as ov

    fitted = trained["root"]
    _anomalib(
        "export",
        "--model", "DiffAD",
        *TINY_OVERRIDES,
        "--export_type", "openvino",
        "--ckpt_path", str(trained["ckpt"]),
        "--default_root_dir", str(fitted / "export"),
        cwd=fitted,
    )  # fmt: skip
    xml = next((fitted / "export").rglob("model.xml"))
    model = ov.Core().read_model(xml)
    assert [output.get_names() for output in model.outputs] == [
        {"pred_score"}, {"pred_label"}, {"anomaly_map"}, {"pred_mask"},
    ]
    assert model.inputs[0].get_partial_shape().to_string() == "[?,3,?,?]"


def test_autoload_hook_imports_nothing_heavy() -> None:
    """The start-up hook is installed in every interpreter of the environment but imports no torch."""
    code = "import sys; print('anomalib_diffad_autoload' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]


def test_autoload_hook_loads_plugin_with_the_cli_without_warnings() -> None:
    """Importing anomalib's CLI (after anomalib.data, as scripts often do) loads the plugin cleanly and applies
    ``diffad_tools.anomalib_cli``: the names, the benchmark table fix, the MVTec AD folder checks, the wrapped
    ``main``."""
    code = (
        "import sys, warnings; warnings.simplefilter('error', UserWarning)\n"
        "from anomalib.data import MVTecAD\n"
        "import anomalib.cli.cli\n"
        "import anomalib.models, anomalib.data\n"
        "from anomalib.pipelines.benchmark.job import BenchmarkJob\n"
        "print('anomalib_diffad' in sys.modules, anomalib.models.DiffAD.__name__, anomalib.data.MVTec.__name__,\n"
        "      anomalib.models.BudgetDraem.__name__, anomalib.data.MultiCategory.__name__,\n"
        "      BenchmarkJob.collect.__name__, MVTecAD.prepare_data.checks_root,\n"
        "      anomalib.cli.cli.main.prints_data_errors)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = ["True", "DiffAD", "MVTec", "BudgetDraem", "MultiCategory", "collect_results", "True", "True"]
    assert result.stdout.split()[-8:] == expected


def test_cli_trains_and_exports_a_unified_model(tmp_path: Path) -> None:
    """``configs/diffad_unified.yaml``: ``anomalib train`` reports each category's metrics, and ``anomalib export``
    of its checkpoint writes one model per category, each scoring as the checkpoint with that category selected
    and differently from the other categories' (the OpenVINO graph of a selected category: test_unified.py)."""
    import torch
    import yaml

    from anomalib_diffad import DiffAD
    from diffad_tools.textures import generate_texture_dataset

    names = ("brick", "grass", "gravel")
    root = generate_texture_dataset(tmp_path / "data", names, image_size=64, num_train=4, num_test_good=2,
                                    num_test_per_defect=1, seed=3)  # fmt: skip
    config = yaml.safe_load((REPO / "configs" / "diffad_unified.yaml").read_text())
    assert tuple(config["model"]["init_args"]["categories"]) == names
    for child in config["data"]["init_args"]["datamodules"]:
        child["init_args"]["root"] = str(root)
    unified = tmp_path / "unified.yaml"
    unified.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = _anomalib(
        "train", "--config", str(TINY), "--config", str(unified), "--trainer.max_epochs", "1",
        "--default_root_dir", str(out), cwd=tmp_path,
    )  # fmt: skip
    for name in names:
        assert f"{name}/pixel_AUROC" in result.stdout + result.stderr
    ckpt = next(out.rglob("model.ckpt"))
    exports = tmp_path / "exports"
    _anomalib(
        "export", "--config", str(TINY), "--config", str(unified), "--ckpt_path", str(ckpt),
        "--export_type", "torch", "--export_root", str(exports), cwd=tmp_path,
    )  # fmt: skip
    reloaded = DiffAD.load_from_checkpoint(ckpt).eval()
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = {}
    for name in names:
        exported = torch.load(exports / name / "weights" / "torch" / "model.pt", weights_only=False)["model"].eval()
        with torch.no_grad(), reloaded.categories.selection(name):
            maps[name] = exported(image).anomaly_map
            torch.testing.assert_close(maps[name], reloaded(image).anomaly_map, atol=1e-5, rtol=0)
    assert (maps["brick"] - maps["grass"]).abs().max() > 1e-3
    assert reloaded.categories.selected is None
