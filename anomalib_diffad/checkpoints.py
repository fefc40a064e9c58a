# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Checks of a checkpoint before its weights load into a DiffAD, with errors that say what is wrong.

Lightning loads a checkpoint with ``load_state_dict(strict=True)``: weights of another preset or image size
fail with a raw list of missing keys and size mismatches, and NaN or infinite weights (a diverged run) load
without a word and score NaN. :func:`check_checkpoint` runs in ``DiffAD.on_load_checkpoint``, before the
weights load.

Checkpoints of anomalib-diffad 0.1 store the space flat (``space: patch``, ``mlp_width``, ``block_out_channels``,
... beside the other hyperparameters); this version stores the space's ``to_config()`` dict and refuses the flat
format with one error that shows the dict to use (:func:`resolve_space`, :func:`check_space_format`).

Exact resume: a checkpoint also carries the run's training seed (:data:`TRAIN_SEED_KEY`). ``DiffAD`` draws it
once per run (:func:`draw_train_seed`) and reseeds torch's global RNG at the start of every training epoch
(:func:`epoch_seed`). Timesteps, noise, random crops and the shuffling order of an epoch all draw from that RNG,
so an epoch's randomness does not depend on what ran before it, and a run resumed with ``--ckpt_path`` from a
checkpoint written at the end of an epoch ends bit-identical to an uninterrupted run (weights, EMA, optimizer,
learning-rate schedule). Lightning neither saves nor restores RNG states, and its resume path iterates the
dataloaders a different number of times. Checkpoints written inside an epoch (``every_n_train_steps``) resume
without the reseeding and are not replayed exactly.

Example:
    >>> import torch
    >>> checkpoint = {"state_dict": {"model.w": torch.tensor([1.0, float("nan")])}}
    >>> try:
    ...     check_checkpoint(checkpoint, {"model.w": torch.zeros(2)}, {})
    ... except ValueError as error:
    ...     print(str(error).split(":")[0])
    The checkpoint has non-finite weights (NaN or inf), so every score would be NaN
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomalib_diffad.spaces import DiffusionSpace, FeatureSpace, PatchSpace, PixelSpace, space_from_config
from anomalib_diffad.spaces.base import class_path

FLAT_SPACES: dict[str, type[DiffusionSpace]] = {"pixel": PixelSpace, "feature": FeatureSpace, "patch": PatchSpace}
"""The ``space`` names of anomalib-diffad 0.1 and the classes that replace them."""

TRAIN_SEED_KEY = "diffad_train_seed"
"""Checkpoint key of the run's training seed."""
WEIGHTS_PREFIX = "model."
"""State-dict keys that must be finite (the post-processor's thresholds are NaN until validation)."""


def _plain(value: Any) -> Any:  # noqa: ANN401
    """Sequences as lists, so ``(16, 32)`` from Python and ``[16, 32]`` from YAML compare equal."""
    return list(value) if isinstance(value, list | tuple) else value


def _option(value: Any) -> str:  # noqa: ANN401
    """A value as a command-line option's text (a dict, e.g. the space, as JSON)."""
    return json.dumps(value) if isinstance(value, Mapping) else str(_plain(value))


def _where(path: Path | str | None) -> str:
    return "The checkpoint" if path is None else f"Checkpoint {path}"


def flat_format_error(space: str | None, hyper_parameters: Mapping[str, Any] | None = None) -> ValueError:
    """The error for the flat space format of anomalib-diffad 0.1, with the ``space`` dict that replaces it.

    Args:
        space: The old ``space`` name (``"pixel"``, ``"feature"``, ``"patch"``; ``None``: the default, pixel).
        hyper_parameters: A 0.1 checkpoint's hyperparameters: their flat space settings fill the dict's
            ``init_args`` (``None``: the settings are shown by name).
    """
    cls = FLAT_SPACES.get(space or "pixel", PixelSpace)
    names = list(cls().init_args())
    if hyper_parameters is None:
        init_args = ", ".join(f"{name}: ..." for name in names)
    else:
        init_args = ", ".join(
            f"{name}: {json.dumps(_plain(hyper_parameters[name]))}" for name in names if name in hyper_parameters
        )
    replacement = f"{{class_path: {class_path(cls)}, init_args: {{{init_args}}}}}"
    msg = (
        f"space={space!r} with flat settings ({', '.join(names)}) is the format of anomalib-diffad 0.1, and "
        "checkpoints it wrote do not load in this version. A space is now a configured object: "
        f"`space: {replacement}` in YAML, or DiffAD(space={cls.__name__}(...)) in Python. Retrain with an "
        "updated config (configs/diffad*.yaml), or convert the checkpoint: replace its hyper_parameters' `space` "
        "and flat settings by that dict (CHANGELOG.md, 'Unreleased')."
    )
    return ValueError(msg)


def resolve_space(space: DiffusionSpace | Mapping[str, Any] | None) -> DiffusionSpace:
    """The space of a ``DiffAD``'s ``space`` argument: a space, its ``to_config()`` dict, or ``None`` (pixel).

    Raises:
        ValueError: ``space`` is a name (the 0.1 format, :func:`flat_format_error`) or a dict that names no space.
        TypeError: ``space`` is something else.
    """
    if space is None:
        return PixelSpace()
    if isinstance(space, DiffusionSpace):
        return space
    if isinstance(space, Mapping):
        return space_from_config(dict(space))
    if isinstance(space, str):
        raise flat_format_error(space)
    msg = f"space must be a DiffusionSpace, its to_config() dict or None, got {type(space).__name__}."
    raise TypeError(msg)


def check_space_format(hyper_parameters: Mapping[str, Any], path: Path | str | None = None) -> None:
    """Raise if a checkpoint's hyperparameters hold the flat space format of anomalib-diffad 0.1.

    Raises:
        ValueError: :func:`flat_format_error` for the checkpoint's own settings, naming the file.
    """
    flat = {name for cls in FLAT_SPACES.values() for name in cls().init_args()} & hyper_parameters.keys()
    space = hyper_parameters.get("space")
    if isinstance(space, str) or flat:
        msg = f"{_where(path)}: {flat_format_error(space, hyper_parameters)}"
        raise ValueError(msg)


def check_finite_weights(state_dict: Mapping[str, torch.Tensor], path: Path | str | None = None) -> None:
    """Raise if a weight or statistic of the torch model (``model.*``) is NaN or infinite.

    Raises:
        ValueError: Naming the tensors and how many of their values are not finite.
    """
    bad = []
    for name, tensor in state_dict.items():
        if name.startswith(WEIGHTS_PREFIX) and tensor.is_floating_point():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()} values)")
    if bad:
        more = f" and {len(bad) - 5} more tensors" if len(bad) > 5 else ""
        msg = (
            f"{_where(path)} has non-finite weights (NaN or inf), so every score would be NaN: "
            f"{', '.join(bad[:5])}{more}. The run that wrote it diverged; use a checkpoint from before that."
        )
        raise ValueError(msg)


def check_compatible(
    state_dict: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    trained_with: Mapping[str, Any],
    model_arguments: Mapping[str, Any],
    path: Path | str | None = None,
) -> None:
    """Raise if the checkpoint's tensors do not fit the model's, naming the arguments it was trained with.

    Args:
        state_dict: The checkpoint's state dict.
        model_state: The model's own state dict.
        trained_with: The checkpoint's ``hyper_parameters`` (the model arguments of the run that wrote it).
        model_arguments: The model's arguments (``hparams``).
        path: The checkpoint file, if known.

    Raises:
        ValueError: Missing, unexpected or differently shaped tensors. The message lists the arguments that
            differ (checkpoint and model values), as ``--model.<name> <value>`` options that rebuild it.
    """
    missing = sorted(model_state.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - model_state.keys())
    reshaped = [
        f"{name}: checkpoint {list(state_dict[name].shape)}, model {list(tensor.shape)}"
        for name, tensor in model_state.items()
        if name in state_dict and state_dict[name].shape != tensor.shape
    ]
    if not (missing or unexpected or reshaped):
        return
    differing = {
        name: value
        for name, value in trained_with.items()
        if name in model_arguments and _plain(value) != _plain(model_arguments[name])
    }
    if differing:
        arguments = ", ".join(f"{name}={_plain(value)} (this model: {_plain(model_arguments[name])})"
                              for name, value in differing.items())  # fmt: skip
        options = " ".join(f"--model.{name} '{_option(value)}'" for name, value in differing.items())
        cause = f"it was trained with {arguments}. Build the model with the same arguments ({options})"
    else:
        cause = "its tensors come from another model version or preset"
    details = [
        *reshaped[:3],
        *(f"missing {name}" for name in missing[:2]),
        *(f"unexpected {n}" for n in unexpected[:2]),
    ]
    counts = f"{len(reshaped)} tensors of another shape, {len(missing)} missing, {len(unexpected)} unexpected"
    msg = (
        f"{_where(path)} does not fit this DiffAD: {cause}, or use DiffAD.load_from_checkpoint(path), which "
        f"reads them from the checkpoint. ({counts}: {'; '.join(details)})"
    )
    raise ValueError(msg)


def check_checkpoint(
    checkpoint: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    model_arguments: Mapping[str, Any],
    path: Path | str | None = None,
) -> None:
    """Check a Lightning checkpoint against a model before its weights load (see the module docstring).

    Raises:
        ValueError: The checkpoint has the flat space format of anomalib-diffad 0.1, does not fit the model, or
            has non-finite weights.
    """
    state_dict = checkpoint.get("state_dict", {})
    check_space_format(checkpoint.get("hyper_parameters", {}), path)
    check_compatible(state_dict, model_state, checkpoint.get("hyper_parameters", {}), model_arguments, path)
    check_finite_weights(state_dict, path)


def epoch_seed(train_seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG for the epoch that starts at optimizer step ``step`` on one rank."""
    return int(np.random.SeedSequence([train_seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def draw_train_seed() -> int:
    """A run's training seed, drawn from the global RNG (so ``seed_everything`` controls it)."""
    return int(torch.empty((), dtype=torch.int64).random_()) & (2**62 - 1)
