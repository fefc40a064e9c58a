# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Every YAML under ``configs/`` goes through anomalib's own entry points as shipped.

Model presets run ``anomalib fit`` (the console script) for one training step and one scoring (validation)
batch; ``anomalib benchmark`` configs go through the benchmark pipeline's parsing and job generation, which
builds every model and datamodule of their grids (test_benchmark_cli.py runs them, made tiny). The configs'
relative data paths resolve in a working folder holding the built-in textures.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffad_tools.textures import generate_texture_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
ANOMALIB = Path(sys.executable).parent / "anomalib"
CATEGORIES = ("brick", "grass", "gravel")
ONE_STEP = (
    "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    "--trainer.max_steps", "1", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
    "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", "1",
    "--trainer.limit_val_batches", "1",
)  # fmt: skip
BRICK = ("--data", "MVTecAD", "--data.root", "datasets/textures", "--data.category", "brick")
PAPER_SMALL = {  # the paper preset at a test-sized width and resolution, offline
    "image_size": 64,
    "space": {"init_args": {"block_out_channels": [16, 16, 32, 32, 32, 32], "attention_head_dim": 8,
                            "norm_num_groups": 8}},
    "pretrained_weights": None,
}  # fmt: skip
SMALL_UNET = {"space": {"init_args": {"block_out_channels": [32, 64], "norm_num_groups": 8}}}
MODEL_RUNS = {  # config -> (configs layered under it, command-line model overrides, further arguments)
    "diffad.yaml": ((), {"image_size": 64}, BRICK),
    "diffad_feature.yaml": (  # its data: validation from train, 20% is no image of the tiny set
        (), {"image_size": 64} | SMALL_UNET, (*BRICK, "--data.val_split_ratio", "0.5"),
    ),
    "diffad_paper.yaml": ((), PAPER_SMALL, BRICK),
    "diffad_patch.yaml": (
        (), {"image_size": 64, "space": {"init_args": {"mlp_width": 32}}}, (*BRICK, "--data.val_split_ratio", "0.5"),
    ),
    "diffad_tiny.yaml": ((), {}, BRICK),
    "diffad_unified.yaml": (("diffad_tiny.yaml",), {}, ()),  # its data: MultiCategory of ./datasets/textures
}
BENCHMARKS = ("benchmark.yaml", "benchmark_unified.yaml")


def _plain(value: object) -> object:
    """Sequences as lists, to compare YAML, checkpoint and JSON values."""
    return list(value) if isinstance(value, list | tuple) else value


def _merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, nested dicts (the space's ``init_args``) key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _options(overrides: dict, prefix: str = "--model") -> list[str]:
    """Command-line options of ``overrides`` (``{"space": {"init_args": {"a": 1}}}``: ``--model.space.init_args.a``)."""
    options = []
    for key, value in overrides.items():
        name = f"{prefix}.{key}"
        options += _options(value, name) if isinstance(value, dict) else [name, json.dumps(value)]
    return options


def assert_saved(saved: dict, expected: dict) -> None:
    """Every expected argument has its value in the saved hyperparameters (a space: its class_path and the
    init_args the configs give; the space's other settings are saved with their defaults)."""
    for key, value in expected.items():
        if isinstance(value, dict):
            assert isinstance(saved[key], dict), key
            assert_saved(saved[key], value)
        else:
            assert _plain(saved[key]) == _plain(value), key


def _env(workdir: Path) -> dict[str, str]:
    return os.environ | {"HF_HOME": str(workdir / "hf"), "HF_HUB_OFFLINE": "1", "MALLOC_MMAP_THRESHOLD_": "1048576"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Working folder with ``datasets/textures`` (three tiny categories) and an empty ``datasets/anomaly_source``."""
    workdir = tmp_path_factory.mktemp("configs")
    generate_texture_dataset(workdir / "datasets" / "textures", CATEGORIES, image_size=64, num_train=4,
                             num_test_good=2, num_test_per_defect=1, seed=5)  # fmt: skip
    (workdir / "datasets" / "anomaly_source").mkdir()
    return workdir


def _model_args(names: tuple[str, ...]) -> dict:
    """The model ``init_args`` that layering the YAMLs ``names`` gives."""
    args: dict = {}
    for name in names:
        args = _merged(args, yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"])
    return args


def test_every_config_is_checked() -> None:
    """A new YAML under configs/ must be added to this module's runs."""
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted([*MODEL_RUNS, *BENCHMARKS])


@pytest.mark.parametrize("name", sorted(MODEL_RUNS))
def test_model_config_trains_and_scores_with_the_console_script(name: str, workdir: Path) -> None:
    """``anomalib fit --config <preset>``: one optimizer step and one calibrating validation batch; the
    checkpoint holds the preset's arguments (except the overridden ones)."""
    layered, overrides, extra = MODEL_RUNS[name]
    out = workdir / "runs" / name
    overriding = _options(overrides)
    configs = [arg for config in (*layered, name) for arg in ("--config", str(CONFIGS / config))]
    result = subprocess.run(
        [str(ANOMALIB), "fit", *configs, *overriding, *extra, *ONE_STEP, "--default_root_dir", str(out)],
        cwd=workdir,
        env=_env(workdir),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (ckpt,) = out.rglob("model.ckpt")
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert_saved(checkpoint["hyper_parameters"], _merged(_model_args((*layered, name)), overrides))
    state = checkpoint["state_dict"]
    assert int(state["model.ema_updates"]) == 1
    assert torch.isfinite(state["post_processor.image_min"]), "validation did not score a batch"
    assert state["post_processor.image_min"] <= state["post_processor.image_max"]


GENERATE_JOBS = """
import json, sys
from argparse import Namespace
from anomalib.pipelines import Benchmark
from diffad_tools.anomalib_cli import install
install()  # the names the anomalib CLI registers (DiffAD, BudgetDraem, MVTec, MultiCategory)

args = Benchmark()._get_args(Namespace(config=sys.argv[1]))
runners = Benchmark._setup_runners(args)
jobs = [job for runner in runners for job in runner.generator.generate_jobs(args["benchmark"], None)]
rows = [
    {
        "model": type(job.model).__name__,
        "hparams": dict(job.model.hparams),
        "category": getattr(job.datamodule, "category", None),
    }
    for job in jobs
]
print(json.dumps(rows, default=str))
"""


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_config_builds_every_job(name: str, workdir: Path) -> None:
    """anomalib's benchmark pipeline parses the shipped config and builds each grid job's model and datamodule
    with the config's arguments (offline: Lite0 weights from the Hugging Face cache)."""
    env = _env(workdir)
    subprocess.run([sys.executable, "-m", "diffad_tools.hub_cache"], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-c", GENERATE_JOBS, str(CONFIGS / name)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = json.loads(result.stdout.strip().splitlines()[-1])
    config = yaml.safe_load((CONFIGS / name).read_text())["benchmark"]
    grid = config["model"]["grid"]
    data = config["data"]["init_args"]
    if "category" in data:  # one job per model and category
        categories = data["category"]["grid"]
    else:  # MultiCategory: one job per model, on all categories
        categories = ["+".join(child["init_args"]["category"] for child in data["datamodules"])]
    assert sorted((job["model"], job["category"]) for job in jobs) == sorted(
        (model["class_path"], category) for category in categories for model in grid
    )
    diffad = next(job["hparams"] for job in jobs if job["model"] == "DiffAD")
    assert_saved(diffad, grid[0]["init_args"])
