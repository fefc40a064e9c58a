# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Interrupted-run resume: a run that crashes half-way and resumes from its epoch-end checkpoint ends
bit-identical to an uninterrupted run (weights, EMA weights, EMA counter, optimizer and LR-scheduler state).

Exactness needs each epoch's randomness (timesteps, noise, random crops, shuffling order) to be independent
of what ran before it in the process: :class:`DiffAD` reseeds torch's RNG at every epoch start from a
training seed stored in the checkpoint. Checkpoints written inside an epoch (``every_n_train_steps``) are
not replayed exactly: Lightning cannot fast-forward a non-resumable dataloader (it warns "resuming from a
checkpoint that ended before the epoch ended").
"""

from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from anomalib_diffad import DiffAD
from tests.helpers.presets import with_space_settings

STEPS = 4  # 8 train images, batch 4: two steps per epoch, two epochs
SEED = 7


class SimulatedCrashError(RuntimeError):
    """Raised by :class:`CrashAtStep` in place of a killed process."""


class CrashAtStep(Callback):
    """Crash at the start of the training batch that would make optimizer step ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        del pl_module, batch, batch_idx
        if trainer.global_step == self.step:
            raise SimulatedCrashError


class StepCheckpoint(ModelCheckpoint):
    """A second ``ModelCheckpoint`` beside the Engine's (a distinct class gives it a distinct state key)."""


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)


def _engine(root_dir: Path, callbacks: list[Callback]) -> Engine:
    return Engine(
        logger=False,
        default_root_dir=root_dir,
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=callbacks,
    )


def _model(args: dict) -> DiffAD:
    seed_everything(SEED)
    return DiffAD(**with_space_settings(args, train_crop_size=48))  # random crops draw from the RNG as well


def _training_state(model: DiffAD) -> dict:
    trainer = model.trainer
    optimizer = trainer.optimizers[0].state_dict()
    scheduler = trainer.lr_scheduler_configs[0].scheduler.state_dict()
    return {
        "denoiser": {k: v.clone() for k, v in model.model.denoiser.state_dict().items()},
        "ema_denoiser": {k: v.clone() for k, v in model.model.ema_denoiser.state_dict().items()},
        "ema_updates": int(model.model.ema_updates),
        "optimizer_state": {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer["state"].items()},
        "optimizer_groups": optimizer["param_groups"],
        "scheduler": {k: v for k, v in scheduler.items() if not k.startswith("lr_lambdas")},
        "global_step": trainer.global_step,
    }


@pytest.fixture(scope="module")
def uninterrupted(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.helpers.presets import TINY_MODEL_ARGS

    model = _model(TINY_MODEL_ARGS)
    _engine(tmp_path_factory.mktemp("uninterrupted"), []).fit(model=model, datamodule=_datamodule(dataset_root))
    return _training_state(model)


@pytest.fixture(scope="module")
def crashed(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run that crashes at the start of step ``STEPS // 2 + 1`` (the first batch of the second epoch).

    It leaves the Engine's own epoch-end checkpoint and a ``ModelCheckpoint(every_n_train_steps=...)`` one,
    both written after step ``STEPS // 2``.
    """
    from tests.helpers.presets import TINY_MODEL_ARGS

    root = tmp_path_factory.mktemp("crashed")
    saver = StepCheckpoint(dirpath=root / "steps", save_top_k=-1, every_n_train_steps=STEPS // 2)
    with pytest.raises(SimulatedCrashError):
        _engine(root, [saver, CrashAtStep(STEPS // 2)]).fit(
            model=_model(TINY_MODEL_ARGS),
            datamodule=_datamodule(dataset_root),
        )
    (step_ckpt,) = (root / "steps").glob(f"*step={STEPS // 2}.ckpt")
    epoch_ckpt = root / "DiffAD" / "MVTecAD" / "brick" / "v0" / "weights" / "lightning" / "model.ckpt"
    return {"epoch_end": epoch_ckpt, "train_step": step_ckpt}


def _resume(ckpt: Path, root: Path, dataset_root: Path, model_args: dict) -> dict:
    seed_everything(SEED + 1)  # a different process state: nothing may depend on it
    model = DiffAD(**with_space_settings(model_args, train_crop_size=48))
    _engine(root, []).fit(model=model, datamodule=_datamodule(dataset_root), ckpt_path=ckpt)
    return _training_state(model)


def test_resume_from_epoch_end_checkpoint_is_exact(
    crashed: dict[str, Path],
    uninterrupted: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """Resuming the crashed run from the Engine's checkpoint (``ckpt_path``) to ``STEPS`` steps ends with
    weights, EMA weights, EMA counter, AdamW state and LR-scheduler state bit-identical to the uninterrupted
    run."""
    resumed = _resume(crashed["epoch_end"], tmp_path, dataset_root, tiny_model_args)

    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    assert resumed["ema_updates"] == uninterrupted["ema_updates"] == STEPS
    for part in ("denoiser", "ema_denoiser"):
        for name, value in uninterrupted[part].items():
            torch.testing.assert_close(resumed[part][name], value, rtol=0, atol=0, msg=f"{part}.{name}")
    assert resumed["optimizer_state"].keys() == uninterrupted["optimizer_state"].keys()
    for index, state in uninterrupted["optimizer_state"].items():
        for name, value in state.items():
            torch.testing.assert_close(resumed["optimizer_state"][index][name], value, rtol=0, atol=0)
    assert resumed["optimizer_groups"] == uninterrupted["optimizer_groups"]
    assert resumed["scheduler"] == uninterrupted["scheduler"]


def test_step_checkpoint_keeps_ema_in_step(
    crashed: dict[str, Path],
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
) -> None:
    """A checkpoint written in ``on_train_batch_end`` (``every_n_train_steps``) holds the EMA of the same step
    as the epoch-end one, and a run resumed from it loses no EMA update.

    Resuming from it is not bit-exact: Lightning restarts inside the finished epoch without calling
    ``on_train_epoch_start`` and cannot replay a non-resumable dataloader's shuffling, so the next epoch draws
    other batches and noise. Only the counts are asserted after the resume.
    """
    step = torch.load(crashed["train_step"], map_location="cpu", weights_only=True)
    epoch_end = torch.load(crashed["epoch_end"], map_location="cpu", weights_only=True)
    assert int(step["state_dict"]["model.ema_updates"]) == STEPS // 2
    for name, value in epoch_end["state_dict"].items():
        if name.startswith(("model.denoiser.", "model.ema_denoiser.")):
            torch.testing.assert_close(step["state_dict"][name], value, rtol=0, atol=0, msg=name)

    resumed = _resume(crashed["train_step"], tmp_path, dataset_root, tiny_model_args)
    assert resumed["global_step"] == STEPS
    assert resumed["ema_updates"] == STEPS
