# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The precision is chosen from the hardware (the capability probe mocked), and an explicit one always wins."""

from pathlib import Path

import pytest
import torch
from anomalib.cli.cli import AnomalibCLI

import anomalib_diffad  # noqa: F401 - registers DiffAD and MVTec for the CLI parser
from anomalib_diffad import precision
from anomalib_diffad.precision import cpu_has_native_bf16, hardware_precision
from diffad_tools.anomalib_cli import install_cli_defaults

REPO = Path(__file__).resolve().parents[1]
PIXEL, FEATURE, PATCH = (f"anomalib_diffad.spaces.{name}Space" for name in ("Pixel", "Feature", "Patch"))
PATCH_MODULE = "anomalib_diffad.spaces.patch"


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """torch's CPU-feature probes, answering what the returned dict says (no ``ONEDNN_MAX_CPU_ISA`` cap)."""
    answers = {"avx512_bf16": False, "amx_tile": False}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: answers["avx512_bf16"], raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: answers["amx_tile"], raising=False)
    return answers


@pytest.mark.parametrize(
    ("avx512_bf16", "amx_tile", "cap", "expected"),
    [
        (False, False, None, False),  # AVX2 only, or AVX-512 without BF16
        (True, False, None, True),  # AVX-512 BF16
        (False, True, None, True),  # AMX
        (True, True, "AVX2", False),  # oneDNN capped below its bf16 instructions: emulated
        (True, False, "avx512_core", False),
        (True, False, "AVX512_CORE_BF16", True),
    ],
)
def test_native_bf16_follows_the_cpu_probes_and_onednn_cap(
    probes: dict[str, bool],
    monkeypatch: pytest.MonkeyPatch,
    avx512_bf16: bool,
    amx_tile: bool,
    cap: str | None,
    expected: bool,
) -> None:
    probes.update(avx512_bf16=avx512_bf16, amx_tile=amx_tile)
    if cap is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_has_native_bf16() is expected


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cpu_precision_is_bf16_only_where_native(probes: dict[str, bool], native: bool, expected: str) -> None:
    probes["avx512_bf16"] = native
    assert hardware_precision("cpu") == expected
    assert hardware_precision("cpu", native_bf16=native) == expected


def _cli_precision(monkeypatch: pytest.MonkeyPatch, native: bool, *args: str) -> object:
    """The precision the Engine of ``anomalib fit --config configs/diffad_patch.yaml <args>`` would train with."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(AnomalibCLI, "before_instantiate_classes", AnomalibCLI.before_instantiate_classes)
    install_cli_defaults(AnomalibCLI)
    argv = [
        "fit", "--config", str(REPO / "configs" / "diffad_patch.yaml"), "--model.pretrained_weights", "null",
        "--data", "MVTecAD", "--data.root", "datasets/textures", "--data.category", "brick", *args,
    ]  # fmt: skip
    cli = AnomalibCLI(argv, run=False)
    return cli.engine._cache.args["precision"]  # noqa: SLF001 - the Trainer is built from these arguments


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_cli_picks_the_preset_precision_from_the_cpu(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger=precision.__name__):
        assert _cli_precision(monkeypatch, native) == expected
    notices = [record.getMessage() for record in caplog.records if record.name == precision.__name__]
    assert len(notices) == 1
    assert notices[0].startswith(f"DiffAD precision: {expected} (")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("explicit", ["32", "bf16-mixed"])
def test_explicit_precision_wins(monkeypatch: pytest.MonkeyPatch, native: bool, explicit: str) -> None:
    assert str(_cli_precision(monkeypatch, native, "--trainer.precision", explicit)) == explicit


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"class_path": "anomalib.models.Patchcore"}, None),
        ({"class_path": "DiffAD"}, None),  # the pixel space, DiffAD's default
        ({"class_path": "DiffAD", "init_args": {"space": None}}, None),
        ({"class_path": "anomalib_diffad.DiffAD", "init_args": {"space": {"class_path": PIXEL}}}, None),
        ({"class_path": "anomalib_diffad.DiffAD", "init_args": {"space": {"class_path": FEATURE}}}, "bf16-mixed"),
        ({"class_path": "DiffAD", "init_args": {"space": {"class_path": PATCH, "init_args": {}}}}, "bf16-mixed"),
        ({"class_path": "DiffAD", "init_args": {"space": {"class_path": f"{PATCH_MODULE}.PatchSpace"}}}, "bf16-mixed"),
    ],
)
def test_only_diffad_feature_and_patch_spaces_pick_their_precision(model: dict, expected: str | None) -> None:
    config = {"model": model, "trainer": {"precision": None, "accelerator": "cpu"}}
    assert precision.resolve_cli_precision(config, native_bf16=True) == expected
    assert config["trainer"]["precision"] == expected
