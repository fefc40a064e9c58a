# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The shape every DiffAD space has: its settings, the data it diffuses, its denoiser and its two anomaly cues.

A space is a configured object (``PixelSpace(...)``, ``FeatureSpace(...)``, ``PatchSpace(...)``, chosen in YAML
by ``class_path``) that validates its own settings and builds its denoiser. It holds no weights:
:class:`~anomalib_diffad.torch_model.DiffADModel` owns the denoiser (and its EMA copy), the frozen feature
extractor and the schedule; it computes the frozen CNN's features and hands the space tensors, the schedule and
the denoiser. The diffusion math itself is shared by all spaces (:mod:`anomalib_diffad.diffusion`).
"""

import importlib
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from anomalib_diffad.anomaly_map import feature_distance_map
from anomalib_diffad.diffusion import DenoiserOutput, DiffusionSchedule, posterior_kl_map, predict_x0_from_eps


class DiffusionSpace(ABC):
    """Where a DiffAD's DDPM runs.

    Attributes:
        stride: Image pixels per position of the diffused data (1: pixels).
        feature_stride: Image pixels per position of the frozen CNN's features that the space uses.
        feature_pool: Side of the average pooling of the frozen CNN's features (1: none).
        discrete: The data are 8-bit images: ``L_vb``'s decoder term at ``t = 0`` is the discretized likelihood.
        train_crop_size: Side of the training crops (``None``: whole images).
        score_tile_size: Side of the scoring tiles (``None``: whole images).
    """

    stride: int
    feature_stride: int
    feature_pool: int = 1
    discrete: bool = False
    train_crop_size: int | None = None
    score_tile_size: int | None = None

    def check(self, image_size: tuple[int, int], timestep_fusion: str) -> None:
        """Refuse settings that do not fit the model's image size or pass fusion (a ``ValueError``)."""
        del image_size, timestep_fusion  # the feature cues are positive: every fusion takes them

    def data_shape(self, feature_channels: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the diffused data of one image of ``image_size``."""
        return (feature_channels, image_size[0] // self.stride, image_size[1] // self.stride)

    @abstractmethod
    def build_denoiser(self, feature_channels: int, num_classes: int | None) -> nn.Module:
        """A new denoiser for this space (``feature_channels``: channels of the frozen CNN's features)."""

    @abstractmethod
    def training_data(
        self, images: torch.Tensor, features: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``x_0`` of a training batch, the feature head's targets (``None``: no head) and ``x_0``'s class labels.

        ``images`` are ``[-1, 1]`` images, ``features`` their frozen CNN features (:attr:`feature_stride`).
        """

    def diffused_data(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The data ``x_0`` that scoring diffuses, from ``[-1, 1]`` images and their frozen CNN features (the
        features themselves, unless the space diffuses something else)."""
        del images
        return features

    def denoise(
        self, denoiser: nn.Module, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None,
    ) -> DenoiserOutput:
        """One scoring pass of ``denoiser`` (the pixel space may tile it)."""
        return denoiser(xt, t, class_labels)

    def cues(
        self,
        schedule: DiffusionSchedule,
        x0: torch.Tensor,
        xt: torch.Tensor,
        t: torch.Tensor,
        prediction: DenoiserOutput,
        target_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The KL cue and the second cue ``(B, 1, h, w)`` of a batch of passes, at the data's resolution: unless
        the space says otherwise, the channel-mean posterior KL and ``1 - cos(x_0, x_0 estimate)``
        (:func:`feature_cues`; the features are ``x_0``).

        ``x0``, ``xt``, ``t`` and ``prediction`` hold every pass of every image (``B`` = passes x images, pass
        major); ``target_features`` are the frozen CNN features of the ``N`` input images.
        """
        del target_features
        return feature_cues(schedule, x0, xt, t, prediction)

    @abstractmethod
    def init_args(self) -> dict[str, Any]:
        """The space's settings as plain data (lists, not tuples): its constructor's keyword arguments."""

    def to_config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": ...}``: plain data that :func:`space_from_config` rebuilds it from."""
        return {"class_path": class_path(type(self)), "init_args": self.init_args()}


def feature_cues(
    schedule: DiffusionSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, prediction: DenoiserOutput,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature and patch spaces' cues: the channel-mean posterior KL (no ``x_0`` clipping: features are not
    bounded; no per-image z-scoring, so that images keep their level) and ``1 - cos`` between each position's
    features and the one-step ``x_0`` estimate."""
    kl = posterior_kl_map(schedule, x0, xt, t, prediction.eps, prediction.v, clip_x0=False)
    x0_estimate = predict_x0_from_eps(schedule, xt, t, prediction.eps, clip=False)
    return kl.mean(dim=1, keepdim=True), feature_distance_map(x0, x0_estimate)


def class_path(cls: type) -> str:
    """Import path of ``cls``, through its package where that exports it (``anomalib_diffad.spaces.PatchSpace``)."""
    package = cls.__module__.rpartition(".")[0]
    if package and getattr(importlib.import_module(package), cls.__name__, None) is cls:
        return f"{package}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def space_class(path: str) -> type[DiffusionSpace]:
    """The :class:`DiffusionSpace` subclass at import path ``path`` (``anomalib_diffad.spaces.PatchSpace``; a bare
    class name is looked up in :mod:`anomalib_diffad.spaces`, as jsonargparse resolves it).

    Raises:
        ValueError: ``path`` cannot be imported.
        TypeError: ``path`` names no ``DiffusionSpace``.
    """
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or __package__), name)
    except (ImportError, AttributeError) as error:
        msg = f"Space class_path {path!r} cannot be imported ({error})."
        raise ValueError(msg) from error
    if not (isinstance(cls, type) and issubclass(cls, DiffusionSpace)):
        msg = f"Space class_path {path!r} is not a DiffusionSpace (e.g. anomalib_diffad.spaces.PixelSpace)."
        raise TypeError(msg)
    return cls


def space_from_config(config: dict[str, Any]) -> DiffusionSpace:
    """The space that :meth:`DiffusionSpace.to_config` wrote (``class_path`` and ``init_args``).

    Raises:
        ValueError: ``config`` has no ``class_path``, or it cannot be imported.
        TypeError: ``class_path`` names no :class:`DiffusionSpace`.
    """
    if "class_path" not in config:
        msg = (
            "A DiffAD space is given as {'class_path': 'anomalib_diffad.spaces.PatchSpace', 'init_args': {...}}; "
            f"got {config!r}."
        )
        raise ValueError(msg)
    return space_class(str(config["class_path"]))(**config.get("init_args", {}))
