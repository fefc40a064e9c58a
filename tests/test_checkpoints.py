# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Checkpoints that do not fit: another preset or size, and NaN/inf weights, stop with an error that says so."""

import re
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_diffad import DiffAD
from anomalib_diffad.checkpoints import check_compatible
from anomalib_diffad.spaces import PatchSpace

DENOISER_WEIGHT = "model.denoiser.unet.conv_in.weight"
EMA_BIAS = "model.ema_denoiser.unet.conv_in.bias"


def _test(model: DiffAD, ckpt: Path, dataset_root: Path, root_dir: Path) -> list[dict]:
    engine = Engine(logger=False, default_root_dir=root_dir, accelerator="cpu", devices=1, enable_progress_bar=False)
    datamodule = MVTecAD(root=dataset_root, category="brick", eval_batch_size=8, num_workers=0)
    return engine.test(model=model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)


def _edited_copy(ckpt: Path, tmp_path: Path, values: dict[str, float]) -> Path:
    """A copy of the checkpoint with the first value of each named tensor set, in ``tmp_path``."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    for name, value in values.items():
        checkpoint["state_dict"][name].view(-1)[0] = value
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


def test_checkpoint_of_another_preset_names_its_arguments(
    tiny_project: dict,
    dataset_root: Path,
    tmp_path: Path,
) -> None:
    """Testing the tiny preset's checkpoint with a default DiffAD (``anomalib test --model DiffAD --ckpt_path``)
    says which arguments it was trained with, instead of Lightning's list of missing keys."""
    with pytest.raises(ValueError, match="does not fit this DiffAD") as error:
        _test(DiffAD(pretrained_weights=None), tiny_project["ckpt"], dataset_root, tmp_path)
    message = str(error.value)
    assert str(tiny_project["ckpt"]) in message
    assert "image_size=64 (this model: 256)" in message
    assert "'block_out_channels': [16, 32, 32]" in message
    assert "'block_out_channels': [32, 64, 128, 128]" in message
    assert "--model.image_size '64'" in message
    space = '{"class_path": "anomalib_diffad.spaces.PixelSpace", "init_args": {"block_out_channels": [16, 32, 32]'
    assert f"--model.space '{space}" in message  # JSON, which the CLI parses
    assert "top_k=" not in message  # only arguments that differ
    assert "Missing key" not in message


def test_compatible_arguments_from_python_and_yaml_are_equal() -> None:
    """Tuples (Python) and lists (YAML) of the same values are the same argument; matching tensors pass."""
    state = {"model.w": torch.zeros(2, 3)}
    check_compatible(state, state, {"block_out_channels": [16, 32]}, {"block_out_channels": (16, 32)})
    with pytest.raises(ValueError, match=r"its tensors come from another model version .* model.w: checkpoint \[2\]"):
        check_compatible({"model.w": torch.zeros(2)}, state, {"image_size": 64}, {"image_size": 64})


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_named(
    value: float,
    tiny_project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """A checkpoint with a NaN or inf weight stops ``Engine.test`` and ``load_from_checkpoint`` with the tensors'
    names (it used to load and score NaN without a word)."""
    bad = _edited_copy(tiny_project["ckpt"], tmp_path, {DENOISER_WEIGHT: value, EMA_BIAS: value})
    expected = rf"{DENOISER_WEIGHT} \(1 of 432 values\), {EMA_BIAS} \(1 of 16 values\)"
    with pytest.raises(ValueError, match=rf"Checkpoint .*edited\.ckpt has non-finite weights .*: {expected}"):
        _test(DiffAD(**tiny_model_args), bad, dataset_root, tmp_path)
    with pytest.raises(ValueError, match=rf"The checkpoint has non-finite weights .*: {expected}"):
        DiffAD.load_from_checkpoint(bad)


def test_uncalibrated_checkpoint_still_loads(tiny_project: dict, tmp_path: Path) -> None:
    """NaN thresholds (a checkpoint written before validation) are not weights: it loads."""
    uncalibrated = _edited_copy(tiny_project["ckpt"], tmp_path, {"post_processor._image_threshold": float("nan")})
    model = DiffAD.load_from_checkpoint(uncalibrated)
    assert torch.isnan(model.post_processor._image_threshold)  # noqa: SLF001


def test_checkpoint_with_extra_tensors_names_the_argument(tiny_model_args: dict) -> None:
    """A checkpoint trained with ``subtract_normal_map: true`` loaded into a default model (no normal map)
    names that argument instead of Lightning's "Unexpected key(s)"; the reverse names it as missing."""
    with_map = DiffAD(**tiny_model_args, subtract_normal_map=True)
    default = DiffAD(**tiny_model_args)
    checkpoint = {"state_dict": with_map.state_dict(), "hyper_parameters": dict(with_map.hparams)}
    with pytest.raises(ValueError, match="does not fit this DiffAD") as error:
        default.on_load_checkpoint(checkpoint)
    message = str(error.value)
    assert "subtract_normal_map=True (this model: False)" in message
    assert "--model.subtract_normal_map 'True'" in message
    assert re.search(r"0 missing, 1 unexpected: unexpected model\.\S*normal_map\)", message), message
    reverse = {"state_dict": default.state_dict(), "hyper_parameters": dict(default.hparams)}
    with pytest.raises(ValueError, match=r"1 missing, 0 unexpected: missing model\.\S*normal_map\)"):
        with_map.on_load_checkpoint(reverse)


def test_model_arguments_reach_the_torch_model_and_are_saved_with_their_defaults(tmp_path: Path) -> None:
    """``DiffAD`` builds the torch model from its space and arguments; its hyperparameters (what a checkpoint
    stores and reloads) hold the space as plain data and the defaults of the other arguments; the dict form
    builds the same model."""
    model = DiffAD(PatchSpace(mlp_width=48), image_size=64, layers=("blocks.2",), pretrained_weights=None)
    denoiser = model.model.denoiser
    assert denoiser.input.out_features == 48
    assert len(denoiser.blocks) == 3
    space = {"class_path": "anomalib_diffad.spaces.PatchSpace", "init_args": {"mlp_width": 48, "mlp_blocks": 3,
             "feature_pool": 3}}  # fmt: skip
    assert model.hparams["space"] == space
    assert list(model.hparams["score_timesteps"]) == [20, 201, 401]
    assert model.hparams["calibration_images"] == 32
    torch.save(dict(model.hparams), tmp_path / "hparams.pt")
    assert torch.load(tmp_path / "hparams.pt", weights_only=True)["space"] == space
    rebuilt = DiffAD(space, image_size=64, layers=("blocks.2",), pretrained_weights=None)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert rebuilt.hparams["space"] == space
    assert DiffAD(image_size=64, pretrained_weights=None).hparams["space"]["class_path"] == (
        "anomalib_diffad.spaces.PixelSpace"
    )


def test_unknown_model_argument_is_named() -> None:
    """A misspelt argument, or a space setting given beside the space, names itself."""
    with pytest.raises(TypeError, match="blocks_out_channels"):
        DiffAD(blocks_out_channels=(16, 32))
    with pytest.raises(TypeError, match="mlp_width"):
        DiffAD(mlp_width=48)


def _flat_copy(ckpt: Path, tmp_path: Path) -> Path:
    """A copy of the tiny preset's checkpoint with its hyperparameters in the flat format of anomalib-diffad 0.1."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    hyper_parameters = checkpoint["hyper_parameters"]
    hyper_parameters |= hyper_parameters.pop("space")["init_args"] | {"space": "pixel"}
    path = tmp_path / "flat.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_of_the_flat_format_stops_with_one_error(
    tiny_project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """A 0.1 checkpoint (``space: pixel`` and the UNet settings beside the other hyperparameters) stops
    ``load_from_checkpoint`` (Lightning passes ``space="pixel"`` alone) and ``Engine.test`` (``anomalib test
    --ckpt_path``) with the format's name and the space dict to use: its own settings where the file has them."""
    flat = _flat_copy(tiny_project["ckpt"], tmp_path)
    message = r"space='pixel' with flat settings .* format of anomalib-diffad 0\.1"
    with pytest.raises(ValueError, match=message) as error:
        DiffAD.load_from_checkpoint(flat)
    space = "space: {class_path: anomalib_diffad.spaces.PixelSpace, init_args: {block_out_channels: ..."
    assert space in str(error.value)
    assert "Retrain" in str(error.value)
    with pytest.raises(ValueError, match=r"Checkpoint .*flat\.ckpt: space='pixel' with flat settings") as error:
        _test(DiffAD(**tiny_model_args), flat, dataset_root, tmp_path)
    settings = "init_args: {block_out_channels: [16, 32, 32], layers_per_block: 1, attention_levels: [2]"
    assert settings in str(error.value)
    with pytest.raises(ValueError, match=r"space='patch' .*init_args: \{mlp_width: \.\.\., mlp_blocks"):
        DiffAD(space="patch")
