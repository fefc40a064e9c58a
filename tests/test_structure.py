# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The package's shape: a Lightning class with one mixin and few sibling imports, a torch model with few
arguments, a short training path, and no process management inside the model."""

import ast
import inspect
import sys
from pathlib import Path

import pytest
import torch
import yaml
from anomalib.data import ImageBatch

from anomalib_diffad import DiffAD, DiffADModel

PACKAGE = Path(__file__).parents[1] / "anomalib_diffad"
CONFIGS = Path(__file__).parents[1] / "configs"


def test_lightning_class_has_one_package_mixin_and_few_sibling_imports() -> None:
    package_bases = [cls for cls in DiffAD.__mro__[1:] if cls.__module__.startswith("anomalib_diffad")]
    assert [cls.__name__ for cls in package_bases] == ["DiffADExportMixin"]
    lines = sum(len(inspect.getsource(cls).splitlines()) for cls in (DiffAD, *package_bases))
    assert lines <= 450, lines
    tree = ast.parse((PACKAGE / "lightning_model.py").read_text())
    imports = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    siblings = {module for module in imports if module.startswith("anomalib_diffad")}
    assert len(siblings) <= 10, sorted(siblings)


def test_torch_model_takes_at_most_fifteen_arguments() -> None:
    assert len(inspect.signature(DiffADModel).parameters) <= 15


def test_the_model_manages_no_process_state() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}: {word}"
        for path in PACKAGE.rglob("*.py")
        for word in ("set_num_threads", "mallopt", "rmtree")
        if word in path.read_text()
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("config", "space_file"),
    [
        ("diffad.yaml", "spaces/unet.py"),
        ("diffad_feature.yaml", "spaces/unet.py"),
        ("diffad_patch.yaml", "spaces/patch.py"),
    ],
)
def test_a_preset_training_step_reads_five_package_files(config: str, space_file: str) -> None:
    """The files of the package whose code runs in one training step (forward and backward) of each space's
    preset, at 64 px."""
    args = yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"]
    model = DiffAD(**args | {"pretrained_weights": None, "image_size": 64})
    model.log = lambda *_args, **_kwargs: None
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64) * 2 - 1, gt_label=torch.zeros(2, dtype=torch.long))
    files: set[str] = set()

    def record(frame: object, event: str, arg: object) -> None:
        del event, arg
        path = Path(frame.f_code.co_filename)
        if PACKAGE in path.parents:
            files.add(str(path.relative_to(PACKAGE)))

    sys.setprofile(record)
    try:
        model.training_step(batch, 0)["loss"].backward()
    finally:
        sys.setprofile(None)
    assert sorted(files) == sorted(["diffusion.py", "lightning_model.py", "loss.py", space_file, "torch_model.py"])
