# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Reconstruction panels: input | reconstruction | KL map | feature map | fused map | ground truth.

:func:`write_reconstruction_panel` draws one image's panel with matplotlib (Agg, no display needed),
optionally with a strip of the intermediate gradient-denoising steps below it (like the paper's Fig. 7).
:class:`ReconstructionPanels` is a Lightning callback that writes a panel for every image of
``anomalib predict``::

    anomalib predict --model anomalib_diffad.DiffAD --ckpt_path model.ckpt --data anomalib.data.MVTecAD \\
        --data.category bottle --trainer.callbacks anomalib_diffad.visualization.ReconstructionPanels \\
        --trainer.callbacks.output_dir panels
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.figure import Figure

from anomalib_diffad.reconstruction import (
    GradientDenoising,
    ReconstructionPrior,
    fit_reconstruction_prior,
    reconstruct,
)
from anomalib_diffad.torch_model import DiffADModel

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray


def image_to_display(image: ArrayLike) -> np.ndarray:
    """``[-1, 1]`` image ``(3, H, W)`` (tensor or array) to an ``(H, W, 3)`` float array in ``[0, 1]``."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    return np.clip((np.transpose(array, (1, 2, 0)) + 1.0) / 2.0, 0.0, 1.0)


def map_to_display(values: ArrayLike) -> np.ndarray:
    """Any ``(H, W)``/``(1, H, W)`` map to a float ``(H, W)`` array."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    return array.reshape(array.shape[-2:])


@torch.no_grad()
def diffad_maps(model: DiffADModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """DiffAD's KL map, feature map and fused (unnormalized) anomaly map ``(N, 1, H, W)`` of ``[-1, 1]`` images."""
    kl_map, feature_map = model.component_scores(images)
    return {"kl": kl_map, "feature": feature_map, "fused": model.anomaly_map_generator(kl_map, feature_map)}


def write_reconstruction_panel(
    path: str | Path,
    image: ArrayLike,
    reconstruction: ArrayLike,
    kl_map: ArrayLike,
    feature_map: ArrayLike,
    fused_map: ArrayLike,
    gt_mask: ArrayLike | None = None,
    steps: Sequence[ArrayLike] | ArrayLike | None = None,
    title: str | None = None,
) -> Path:
    """Write one image's panel as a PNG.

    Args:
        path: Output file.
        image: Input image ``(3, H, W)`` in ``[-1, 1]``.
        reconstruction: Its reconstruction ``(3, H, W)`` in ``[-1, 1]``.
        kl_map: KL map ``(H, W)`` or ``(1, H, W)``.
        feature_map: Feature map.
        fused_map: Fused anomaly map.
        gt_mask: Ground-truth mask, drawn when given.
        steps: Intermediate images ``(S, 3, H, W)``, drawn as a strip below the panel when given.
        title: Figure title (e.g. the image path).

    Returns:
        The written path.

    Example:
        >>> import tempfile, torch
        >>> x = torch.zeros(3, 16, 16)
        >>> m = torch.rand(16, 16)
        >>> path = write_reconstruction_panel(tempfile.mkdtemp() + "/p.png", x, x, m, m, m, m > 0.5, [x, x])
        >>> path.is_file()
        True
    """
    columns: list[tuple[str, np.ndarray, dict[str, Any]]] = [
        ("input", image_to_display(image), {}),
        ("reconstruction", image_to_display(reconstruction), {}),
        ("KL map", map_to_display(kl_map), {"cmap": "jet"}),
        ("feature map", map_to_display(feature_map), {"cmap": "jet"}),
        ("fused map", map_to_display(fused_map), {"cmap": "jet"}),
    ]
    if gt_mask is not None:
        columns.append(("ground truth", map_to_display(gt_mask), {"cmap": "gray", "vmin": 0, "vmax": 1}))
    strip = [] if steps is None else list(steps)
    width = max(len(columns), len(strip))
    rows = 2 if strip else 1
    figure = Figure(figsize=(2.2 * width, 2.6 * rows))  # no pyplot: no global backend, nothing to close
    axes = figure.subplots(rows, width, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (name, values, style) in zip(axes[0], columns, strict=False):
        axis.imshow(values, **style)
        axis.set_title(name, fontsize=9)
    for index, (axis, step) in enumerate(zip(axes[1] if strip else [], strip, strict=False)):
        axis.imshow(image_to_display(step))
        axis.set_title("input" if index == 0 else f"step {index}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


class ReconstructionPanels(Callback):
    """Write a reconstruction panel for every predicted image (``--trainer.callbacks``).

    The Gaussian prior is read from ``prior_path`` when that file exists; otherwise it is fitted on the
    datamodule's training images when prediction starts and saved to ``prior_path`` (default:
    ``output_dir/reconstruction_prior.pt``) for the next run. Progress is printed after every batch.

    Args:
        output_dir: Folder of the panels.
        prior_path: Saved prior (``state_dict`` of :class:`ReconstructionPrior`).
        backbone: Backbone of the prior (``None``: DiffAD's own).
        layers: Backbone layers of the prior.
        n_features: Channels of the prior's random subset.
        step_size: Algorithm 1's ``s``.
        denoise_every: Algorithm 1's ``N_d``.
        num_denoise_steps: Denoising steps (times ``denoise_every`` gradient steps).
        capture_every: Denoising steps between two images of the strip.
        show_steps: Draw the strip of intermediate steps.
        max_images: Stop writing panels after this many images (``None``: all).

    Example:
        >>> callback = ReconstructionPanels(output_dir="panels", num_denoise_steps=20)
        >>> callback.config.num_denoise_steps
        20
    """

    def __init__(
        self,
        output_dir: str | Path = "reconstructions",
        prior_path: str | Path | None = None,
        backbone: str | None = None,
        layers: Sequence[str] = ("blocks.1", "blocks.2", "blocks.4"),
        n_features: int = 100,
        step_size: float = 0.02,
        denoise_every: int = 5,
        num_denoise_steps: int = 100,
        capture_every: int = 10,
        show_steps: bool = True,
        max_images: int | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.prior_path = Path(prior_path) if prior_path else self.output_dir / "reconstruction_prior.pt"
        self.prior_args = {"backbone": backbone, "layers": tuple(layers), "n_features": n_features}
        self.config = GradientDenoising(
            step_size=step_size,
            denoise_every=denoise_every,
            num_denoise_steps=num_denoise_steps,
            capture_every=capture_every,
        )
        self.show_steps = show_steps
        self.max_images = max_images
        self.prior: ReconstructionPrior | None = None
        self._written = 0
        self._started = 0.0

    def _load_or_fit_prior(self, trainer: Trainer, pl_module: LightningModule) -> ReconstructionPrior:
        model: DiffADModel = pl_module.model
        if self.prior_path.is_file():
            backbone = self.prior_args["backbone"] or str(model.feature_extractor.backbone)
            prior = ReconstructionPrior(backbone, self.prior_args["layers"], self.prior_args["n_features"])
            prior.load_state_dict(torch.load(self.prior_path, map_location="cpu", weights_only=True))
            print(f"Reconstruction prior loaded from {self.prior_path}.", flush=True)  # noqa: T201
            return prior.to(pl_module.device)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None:
            msg = (
                f"No reconstruction prior at {self.prior_path} and no datamodule to fit one on: predict once "
                "with --data (a datamodule with training images) or pass --trainer.callbacks.prior_path."
            )
            raise RuntimeError(msg)
        if getattr(datamodule, "train_data", None) is None:
            datamodule.setup("fit")
        print("Fitting the reconstruction prior on the training images ...", flush=True)  # noqa: T201
        with torch.inference_mode(False):
            prior = fit_reconstruction_prior(pl_module, datamodule.train_dataloader(), **self.prior_args)
        self.prior_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(prior.state_dict(), self.prior_path)
        print(f"Reconstruction prior saved to {self.prior_path}.", flush=True)  # noqa: T201
        return prior

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Load or fit the prior.

        Raises:
            ValueError: For a unified model (use ``fit_reconstruction_prior`` and ``reconstruct(category=...)``).
        """
        if pl_module.model.num_classes is not None:
            msg = (
                "ReconstructionPanels handles single-category models; for a unified DiffAD call "
                "fit_reconstruction_prior(model, train_dataloader) and reconstruct(model, images, category=...)."
            )
            raise ValueError(msg)
        self.prior = self._load_or_fit_prior(trainer, pl_module)
        self._written = 0
        self._started = time.monotonic()

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,  # noqa: ANN401
        batch: Any,  # noqa: ANN401
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Reconstruct the batch and write one panel per image."""
        del batch_idx, dataloader_idx
        if self.prior is None or (self.max_images is not None and self._written >= self.max_images):
            return
        count = batch.image.shape[0]
        if self.max_images is not None:
            count = min(count, self.max_images - self._written)
        images = batch.image[:count]
        reconstruction, steps = reconstruct(pl_module, images, return_steps=True, prior=self.prior, config=self.config)
        with torch.no_grad():
            kl_maps, feature_maps = pl_module.model.component_scores(images)
        fused = getattr(outputs, "anomaly_map", None)
        gt_masks = getattr(batch, "gt_mask", None)
        paths = getattr(batch, "image_path", None) or [None] * count
        for index in range(count):
            name = Path(paths[index]).stem if paths[index] else f"image_{self._written:05d}"
            parent = Path(paths[index]).parent.name if paths[index] else ""
            write_reconstruction_panel(
                self.output_dir / parent / f"{name}.png",
                images[index],
                reconstruction[index],
                kl_maps[index],
                feature_maps[index],
                fused[index] if fused is not None else kl_maps[index],
                gt_mask=None if gt_masks is None else gt_masks[index],
                steps=steps[:, index] if self.show_steps else None,
                title=str(paths[index]) if paths[index] else None,
            )
            self._written += 1
        total = self.max_images or _predict_size(trainer)
        elapsed = time.monotonic() - self._started
        print(  # noqa: T201
            f"Reconstruction panels: {self._written}/{total or '?'} images, {elapsed:.0f} s, in {self.output_dir}",
            flush=True,
        )


def _predict_size(trainer: Trainer) -> int | None:
    """Number of images to predict, when the dataloaders know it."""
    loaders = trainer.predict_dataloaders
    loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
    try:
        return sum(len(loader.dataset) for loader in loaders if loader is not None)
    except (TypeError, AttributeError):
        return None
