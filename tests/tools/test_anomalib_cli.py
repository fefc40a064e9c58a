# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""``import anomalib_diffad`` changes nothing in anomalib; ``diffad_tools.anomalib_cli.install`` (applied by the
``anomalib`` CLI's start-up hook) registers the plugin's names and fixes anomalib's benchmark table."""

import json
import math
import subprocess
import sys
import warnings

import anomalib.data
import anomalib.models
import pytest
from anomalib.data import get_datamodule
from anomalib.data.datamodules.image import mvtecad as mvtecad_datamodule
from anomalib.data.datasets.image import mvtecad
from anomalib.models import get_model
from anomalib.pipelines.benchmark.job import BenchmarkJob

from anomalib_diffad import DiffAD, MultiCategory, MVTec
from diffad_tools import anomalib_cli
from diffad_tools.baselines import BudgetDraem

SNAPSHOT = """
import json, sys, warnings
import torch
import anomalib.data, anomalib.models
from anomalib.data import MVTecAD
from anomalib.data.datasets.image import mvtecad
from anomalib.pipelines.benchmark.job import BenchmarkJob

def snapshot():
    return {
        **{f"anomalib.models.{name}": id(value) for name, value in vars(anomalib.models).items()},
        **{f"anomalib.data.{name}": id(value) for name, value in vars(anomalib.data).items()},
        "BenchmarkJob.collect": id(vars(BenchmarkJob)["collect"]),
        "MVTecAD.prepare_data": id(MVTecAD.prepare_data),
        "mvtecad.make_mvtec_ad_dataset": id(mvtecad.make_mvtec_ad_dataset),
        "warnings.filters": repr(warnings.filters),
        "torch threads": torch.get_num_threads(),
        "anomalib.cli.cli imported": "anomalib.cli.cli" in sys.modules,
    }

before = snapshot()
import anomalib_diffad
after = snapshot()
changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
print(json.dumps({"changed": changed, "compared": len(before)}))
"""


def test_importing_the_plugin_changes_nothing_in_anomalib() -> None:
    """In a fresh interpreter: anomalib's model and data packages, the benchmark table, the MVTec AD parsing,
    the warning filters and torch's threads are the same objects before and after ``import anomalib_diffad``."""
    result = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["compared"] > 100
    assert report["changed"] == []


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``anomalib_cli.install()`` for one test: what it sets is restored afterwards."""
    for module, name in [
        (anomalib.models, "DiffAD"),
        (anomalib.models, "BudgetDraem"),
        (anomalib.data, "MVTec"),
        (anomalib.data, "MultiCategory"),
        (BenchmarkJob, "collect"),
        (mvtecad_datamodule.MVTecAD, "prepare_data"),
        (mvtecad, "make_mvtec_ad_dataset"),
    ]:
        if name in vars(module):
            monkeypatch.setattr(module, name, vars(module)[name])
        else:  # removed again afterwards
            monkeypatch.setattr(module, name, None, raising=False)
            monkeypatch.delattr(module, name)
    with warnings.catch_warnings():
        anomalib_cli.install()
        yield


@pytest.mark.usefixtures("installed")
def test_install_registers_the_names_anomalibs_resolvers_look_up(tiny_model_args: dict) -> None:
    """``get_model`` and ``get_datamodule`` (``anomalib benchmark``, ``MultiCategory``'s child configs) resolve a
    short ``class_path`` as an attribute of ``anomalib.models`` / ``anomalib.data``; the CLI's fixes are on."""
    model = get_model({"class_path": "DiffAD", "init_args": tiny_model_args | {"pretrained_weights": None}})
    assert type(model) is DiffAD
    datamodule = get_datamodule({"class_path": "MVTec", "init_args": {"root": "./nowhere", "category": "brick"}})
    assert type(datamodule) is MVTec
    assert anomalib.models.BudgetDraem is BudgetDraem
    assert anomalib.data.MultiCategory is MultiCategory
    assert vars(BenchmarkJob)["collect"].__func__ is anomalib_cli.collect_results
    assert mvtecad_datamodule.MVTecAD.prepare_data.checks_root
    assert mvtecad.make_mvtec_ad_dataset.checks_folder
    ignored = [message for action, message, kind, *_ in warnings.filters if (action, kind) == ("ignore", FutureWarning)]
    for start in anomalib_cli.FOREIGN_DEPRECATIONS:
        assert any(message is not None and message.match(f"{start} ...") for message in ignored), start


@pytest.mark.usefixtures("installed")
def test_collect_keeps_every_job_and_key() -> None:
    """Rows in job order; a key one job lacks is empty there, not a KeyError."""
    table = BenchmarkJob.collect([
        {"model.class_path": "DiffAD", "model.init_args.max_steps": 2, "pixel_AUPRO": 0.7, "image_AUROC": 0.9},
        {"model.class_path": "Patchcore", "model.init_args.backbone": "lite0", "image_AUROC": 0.8},
    ])
    assert list(table["model.class_path"]) == ["DiffAD", "Patchcore"]
    assert list(table.columns[:4]) == ["model.class_path", "model.init_args.max_steps", "pixel_AUPRO", "image_AUROC"]
    assert table["image_AUROC"].tolist() == [0.9, 0.8]
    assert math.isnan(table["pixel_AUPRO"][1])
    assert table["model.init_args.backbone"][1] == "lite0"


def test_cli_main_prints_data_errors_only_once_wrapped() -> None:
    """Wrapping an already wrapped ``main`` returns it unchanged (the hook may run twice)."""
    wrapped = anomalib_cli.print_data_errors(lambda: None)
    assert anomalib_cli.print_data_errors(wrapped) is wrapped


def _cli_callbacks(monkeypatch: pytest.MonkeyPatch, *args: str) -> list[str]:
    """Class names of the callbacks the Trainer of ``anomalib fit <args>`` would get."""
    from anomalib.cli import AnomalibCLI

    monkeypatch.setattr(AnomalibCLI, "before_instantiate_classes", AnomalibCLI.before_instantiate_classes)
    anomalib_cli.install_cli_defaults(AnomalibCLI)
    data = ("--data", "MVTecAD", "--data.root", "datasets/textures", "--data.category", "brick")
    cli = AnomalibCLI(["fit", *args, *data], run=False)
    return [type(callback).__name__ for callback in cli.engine._cache.args.get("callbacks") or []]  # noqa: SLF001


def test_bare_diffad_command_gets_the_memory_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    callbacks = _cli_callbacks(monkeypatch, "--model", "DiffAD", "--model.pretrained_weights", "null")
    assert callbacks.count("ReleaseFreedMemory") == 1
    assert callbacks.count("CapWorkers") == 1


def test_listed_memory_callbacks_are_the_users_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = "--trainer.callbacks+=diffad_tools.callbacks.ReleaseFreedMemory"
    callbacks = _cli_callbacks(monkeypatch, "--model", "DiffAD", "--model.pretrained_weights", "null", listed)
    assert "CapWorkers" not in callbacks
    assert "ReleaseFreedMemory" not in _cli_callbacks(monkeypatch, "--model", "Padim", "--model.pre_trained", "false")
