# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Metrics: anomalib's Evaluator that also reports every test metric per category of a unified model, and the
grouped moments that DiffAD's calibrations are fitted from.

Example:
    >>> import torch
    >>> from anomalib.metrics import AUROC
    >>> from anomalib_diffad.data.multi import CategoryImageBatch
    >>> evaluator = CategoryEvaluator(("brick", "grass"), test_metrics=[AUROC(fields=["pred_score", "gt_label"])])
    >>> batch = CategoryImageBatch(
    ...     image=torch.zeros(4, 3, 8, 8),
    ...     gt_label=torch.tensor([0, 1, 0, 1]),
    ...     pred_score=torch.tensor([0.1, 0.9, 0.8, 0.2]),
    ...     category=torch.tensor([0, 0, 1, 1]),
    ... )
    >>> evaluator.update_categories(evaluator.category_test_metrics, batch)
    >>> updated = evaluator.updated(evaluator.category_test_metrics)
    >>> {metric.name: round(float(metric.compute()), 2) for metric in updated}
    {'brick/AUROC': 1.0, 'grass/AUROC': 0.0}
"""

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from anomalib.metrics import AnomalibMetric, Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.nn import ModuleList
from torchmetrics import Metric

from anomalib_diffad.data.multi import select_images


class CategoryEvaluator(Evaluator):
    """anomalib ``Evaluator`` plus a copy of each test metric per category, logged as ``<category>/<metric>``.

    The pooled metrics are anomalib's, unchanged. A batch with a ``category`` field (a
    :class:`~anomalib_diffad.data.multi.MultiCategory` batch) also updates the copies of the categories it holds,
    with only their images; a category without test images is not logged. So ``anomalib test`` and
    ``Engine.test`` print, for example, ``image_AUROC`` and ``grass/image_AUROC`` side by side.

    Args:
        categories: Category names in index order.
        val_metrics: Validation metrics (pooled only).
        test_metrics: Test metrics, pooled and per category.
        compute_on_cpu: Compute the metrics on the CPU (single device).

    Raises:
        ValueError: If ``categories`` is empty or has duplicates.
    """

    def __init__(
        self,
        categories: Sequence[str],
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
    ) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
        self.categories = tuple(categories)
        if not self.categories or len(set(self.categories)) != len(self.categories):
            msg = f"CategoryEvaluator needs distinct category names, got {self.categories}."
            raise ValueError(msg)
        self.category_test_metrics = ModuleList(
            ModuleList(self._renamed(metric, f"{name}/{metric.name}") for metric in self.test_metrics)
            for name in self.categories
        )
        self._fields = sorted({field for metric in self.test_metrics for field in metric.fields})
        self._no_images: Any = None

    @staticmethod
    def _renamed(metric: AnomalibMetric, name: str) -> AnomalibMetric:
        copied = copy.deepcopy(metric)
        copied.name = name
        return copied

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Move the per-category metrics to the CPU too when anomalib moves its own."""
        super().setup(trainer, pl_module, stage)
        if trainer.num_devices == 1 and self.compute_on_cpu:
            self.metrics_to_cpu(list(self.category_test_metrics))

    def update_categories(self, metrics: ModuleList, batch: Any) -> None:  # noqa: ANN401
        """Update each category's ``metrics`` with the images of ``batch`` in that category.

        Args:
            metrics: One ``ModuleList`` of metrics per category.
            batch: Batch with a ``category`` field (others are ignored).

        Raises:
            ValueError: If a category index has no name.
        """
        labels = getattr(batch, "category", None)
        if labels is None:
            return
        labels = labels.cpu()
        if bool((labels >= len(self.categories)).any()):
            msg = f"Category index {int(labels.max())} has no name; the evaluator's categories are {self.categories}."
            raise ValueError(msg)
        self._no_images = select_images(batch, self._fields, torch.zeros(0, dtype=torch.long))
        for index in torch.unique(labels).tolist():
            selected = (labels == index).nonzero().squeeze(1)
            for metric in metrics[index]:
                metric.update(select_images(batch, metric.fields, selected))

    def updated(self, metrics: ModuleList, trainer: Trainer | None = None) -> list[AnomalibMetric]:
        """The metrics of every category updated since the last reset, on this or any other rank of ``trainer``.

        All ranks must compute (and so synchronize) the same metrics with states of the same shapes: a rank that
        saw no image of a category another rank saw updates that category's metrics with zero images.
        """
        here = [any(metric.update_called for metric in category) for category in metrics]
        anywhere = torch.tensor(here, dtype=torch.float32)
        if trainer is not None and trainer.world_size > 1:
            anywhere = trainer.strategy.reduce(anywhere.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        selected = []
        for category, local, total in zip(metrics, here, anywhere.tolist(), strict=True):
            if total > 0:
                if not local and self._no_images is not None:
                    for metric in category:
                        if any(isinstance(default, list) for default in metric._defaults.values()):  # noqa: SLF001
                            metric.update(self._no_images)  # list states gather per-image values: add none
                        else:  # count states already hold the right zeros; torchmetrics cannot update with none
                            metric._update_count += 1  # noqa: SLF001  # a never-updated metric breaks the DDP sync
                selected.extend(category)
        return selected

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the pooled and the per-category test metrics."""
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self.update_categories(self.category_test_metrics, batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the pooled metrics, then each category's."""
        super().on_test_epoch_end(trainer, pl_module)
        for metric in self.updated(self.category_test_metrics, trainer):
            self.log(metric.name, metric)
            if trainer.barebones:
                value = metric.compute()
                trainer.callback_metrics[metric.name] = value
                trainer.logged_metrics[metric.name] = value


class GroupedMoments(Metric):
    """Count, sum and sum of squares of values per group (a category, or a single group), in float64.

    DiffAD's calibrations (fusion statistics, normal map, scoring-pass scales, feature standardization) are
    fitted from such sums. Their states are summed over DDP ranks by torchmetrics (``dist_reduce_fx="sum"``), so
    :meth:`compute` gives every rank the moments of all ranks' values.

    Args:
        num_groups: Groups with moments of their own.
        shape: Shape of a group's moments (``()``: one value per group).

    Example:
        >>> moments = GroupedMoments(2)
        >>> moments.update(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([0, 0]))
        >>> moments.compute()  # count, mean and variance of each group
        tensor([[4., 4., 5.],
                [0., 0., 0.]], dtype=torch.float64)
    """

    full_state_update = False

    def __init__(self, num_groups: int = 1, shape: Sequence[int] = (), **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(**kwargs)
        self.shape = tuple(shape)
        self.add_state("count", torch.zeros(num_groups, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, *self.shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(num_groups, *self.shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        """Add the values ``(N, *shape, *pooled)`` of ``N`` samples with their groups ``(N,)`` (default: group 0).

        Trailing ``pooled`` dimensions (e.g. pixels) count as further values: a group's samples and their pooled
        values are summed in one reduction. Without them a group's samples are added one after another. The
        sums are computed on the metric's device.
        """
        values = values.detach().to(self.total.device, torch.float64).contiguous()
        labels = torch.zeros(len(values), dtype=torch.long) if groups is None else groups.long()
        labels = labels.to(values.device)
        pooled = values.shape[1 + len(self.shape) :]
        self.count += torch.bincount(labels, minlength=len(self.count)) * math.prod(pooled)
        if not pooled:
            self.total += torch.zeros_like(self.total).index_add_(0, labels, values)
            self.total_sq += torch.zeros_like(self.total_sq).index_add_(0, labels, values**2)
            return
        dims = (0, *range(1 + len(self.shape), values.ndim))
        for group in labels.unique().tolist():
            selected = values if groups is None else values[labels == group]
            self.total[group] += selected.sum(dim=dims)
            self.total_sq[group] += (selected**2).sum(dim=dims)

    def compute(self) -> torch.Tensor:
        """Each group's count, mean and (population) variance, ``(G, 3, *shape)``; zeros for a group without values."""
        count = self.count.view(-1, *(1,) * len(self.shape))
        mean = self.total / count.clamp(min=1)
        variance = (self.total_sq / count.clamp(min=1) - mean**2).clamp(min=0)
        return torch.stack([count.expand_as(mean), mean, variance], dim=1)


def diffad_evaluator(categories: Sequence[str] | None = None) -> Evaluator:
    """anomalib's default test metrics plus pixel AUPRO; with ``categories``, a :class:`CategoryEvaluator` that also
    reports each category's."""
    from anomalib.metrics import AUPRO, AUROC, F1Score  # noqa: PLC0415

    test_metrics = [
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        F1Score(fields=["pred_mask", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
    ]
    if categories is None:
        return Evaluator(test_metrics=test_metrics)
    return CategoryEvaluator(categories, test_metrics=test_metrics)
