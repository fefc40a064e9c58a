# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Gradient denoising (the paper's Algorithm 1): reconstruct a defect-free version of an image.

A PaDiM Gaussian ``N(mu_p, Sigma_p)`` per feature position is fitted on normal training images. The image
is then pushed down the Mahalanobis loss ``L = sum_p sqrt((f_p(x) - mu_p)^T Sigma_p^-1 (f_p(x) - mu_p))``: each
gradient ``g = -grad_x L``, normalised to unit standard deviation, is treated as diffusion noise, so one step
``x <- sqrt(1 - s^2) x + s g`` is a forward-diffusion step of variance ``s^2``. Every ``N_d`` steps one
reverse step of the EMA denoiser removes that "noise" again. Defective regions, whose features are far from
the Gaussian, receive the largest gradients and are redrawn; normal regions are left nearly untouched.

It is a visualisation tool (paper Fig. 7); DiffAD's anomaly scores do not use it. The official code runs
100 rounds of 5 gradient steps (``s = 0.02``) and one posterior-mean step at ``t = 8`` of its 250-step
respaced chain (``t = 32`` of the 1000-step chain, stride 4); those are the defaults of
:class:`GradientDenoising`. :func:`fit_reconstruction_prior` and :func:`reconstruct` run it on a ``DiffAD``;
:class:`ReconstructionPrior` and :func:`gradient_denoise` on the torch modules.

Example:
    >>> import torch
    >>> from anomalib_diffad.reconstruction import unit_variance_step
    >>> x, g = torch.randn(100_000), torch.randn(100_000)
    >>> round(unit_variance_step(x, g, 0.5).std().item(), 1)
    1.0
"""

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from anomalib_diffad.backbone import load_pretrained_weights
from anomalib_diffad.diffusion import DiffusionSchedule, predict_x0_from_eps
from anomalib_diffad.torch_model import IMAGENET_MEAN, IMAGENET_STD, DiffADModel

if TYPE_CHECKING:
    from anomalib_diffad.lightning_model import DiffAD


# --------------------------------------------------------------------------- #
# Equations
# --------------------------------------------------------------------------- #
def squared_mahalanobis(embedding: torch.Tensor, mean: torch.Tensor, inv_covariance: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of every feature position to its own Gaussian (PaDiM Eq. 2, squared).

    Args:
        embedding: Features ``(N, C, H, W)``.
        mean: Per-position means ``(C, H * W)`` (anomalib's ``MultiVariateGaussian.mean``).
        inv_covariance: Per-position inverse covariances ``(H * W, C, C)``.

    Returns:
        ``(f - mu)^T Sigma^-1 (f - mu)`` per position, ``(N, 1, H, W)``; differentiable in ``embedding``.
    """
    batch, channels, height, width = embedding.shape
    delta = embedding.reshape(batch, channels, height * width) - mean
    distance = torch.einsum("ncp,pcd,ndp->np", delta, inv_covariance, delta)
    return distance.reshape(batch, 1, height, width)


def mahalanobis_loss(squared_distance: torch.Tensor, squared: bool = True, eps: float = 1e-12) -> torch.Tensor:
    """Per-image mean over positions of the Mahalanobis loss ``(N,)``.

    Args:
        squared_distance: Squared distances ``(N, 1, h, w)`` from :func:`squared_mahalanobis`.
        squared: ``True``: the paper's ``(f - mu)^T Sigma^-1 (f - mu)``, whose gradient grows with the distance,
            so the most anomalous positions dominate. ``False``: the official code's unsquared distance (the
            PaDiM map), whose gradient has about the same size at every position.
        eps: Keeps the square root differentiable at 0.
    """
    distance = squared_distance if squared else squared_distance.clamp(min=0).add(eps).sqrt()
    return distance.flatten(1).mean(dim=1)


def normalize_per_image(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each image's gradient by its standard deviation over all pixels and channels (unit variance)."""
    std = grad.flatten(1).std(dim=1).view(-1, *([1] * (grad.ndim - 1)))
    return grad / (std + eps)


def unit_variance_step(x: torch.Tensor, g: torch.Tensor, step_size: float) -> torch.Tensor:
    """Algorithm 1's update ``x <- sqrt(1 - s^2) x + s g``: a forward-diffusion step with ``beta = s^2``.

    For independent unit-variance ``x`` and ``g`` the result has unit variance again.
    """
    return math.sqrt(1.0 - step_size**2) * x + step_size * g


def strided_posterior_mean(
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    stride: int,
) -> torch.Tensor:
    """Mean of ``q(x_{t-k} | x_t, x_0)`` for a stride ``k`` (DDPM Eq. 7 between non-adjacent steps).

    ``mean = sqrt(abar_s) (1 - abar_t / abar_s) / (1 - abar_t) x_0``
    ``+ sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) x_t`` with ``s = t - k``; ``k = 1`` is
    :func:`~anomalib_diffad.diffusion.q_posterior_mean`, and ``k > t`` (``abar_s = 1``) returns ``x_0``. A stride
    of 4 is one step of the official code's 250-step respaced chain.
    """
    # float64 from the betas: in float32, 1 - abar_t / abar_s loses most of its digits at small t.
    alphas_cumprod = torch.cumprod(1.0 - schedule.betas.detach().cpu().double(), dim=0)
    t_cpu = t.detach().cpu()
    s = t_cpu - stride
    abar_t = alphas_cumprod[t_cpu]
    abar_s = torch.where(s >= 0, alphas_cumprod[s.clamp(min=0)], torch.ones_like(abar_t))
    coef_x0 = abar_s.sqrt() * (1.0 - abar_t / abar_s) / (1.0 - abar_t)
    coef_xt = (abar_t / abar_s).sqrt() * (1.0 - abar_s) / (1.0 - abar_t)
    shape = (t.shape[0], *([1] * (xt.ndim - 1)))
    coef_x0 = coef_x0.to(device=xt.device, dtype=xt.dtype).reshape(shape)
    coef_xt = coef_xt.to(device=xt.device, dtype=xt.dtype).reshape(shape)
    return coef_x0 * x0 + coef_xt * xt


def denoise_step(
    denoiser: nn.Module,
    schedule: DiffusionSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    stride: int,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """One reverse step without sampling noise: ``x`` read as ``x_t``, mapped to ``E[x_{t-k} | x_t, x0_theta]``.

    ``x0_theta`` is the denoiser's clipped ``x_0`` prediction (as in ``p_mean_variance``).
    """
    prediction = denoiser(x, t, class_labels)
    x0 = predict_x0_from_eps(schedule, x, t, prediction.eps, clip=True)
    return strided_posterior_mean(schedule, x0, x, t, stride)


# --------------------------------------------------------------------------- #
# The Gaussian prior
# --------------------------------------------------------------------------- #
class ReconstructionPrior(nn.Module):
    """PaDiM's per-position Gaussian of normal features: the target distribution of gradient denoising.

    The feature extractor, random channel subset and ``MultiVariateGaussian`` are anomalib's
    :class:`~anomalib.models.image.padim.torch_model.PadimModel`; the Gaussian is stored in its buffers
    (``padim.gaussian.mean`` / ``inv_covariance``), so ``state_dict()`` saves and restores a fitted prior.
    Nothing is loaded in ``__init__``: fill the backbone with :meth:`copy_backbone` or
    :meth:`load_pretrained_backbone`, then call :meth:`fit` (or use :func:`fit_reconstruction_prior`).

    Args:
        backbone: timm backbone (paper: ``wide_resnet50_2``).
        layers: Backbone layers, highest resolution first; embeddings live at the first layer's resolution
            (paper: ``layer1``-``layer3``, 1/4 resolution).
        n_features: Size of the random channel subset (paper: 500 of 1792).
        seed: Seed of the channel subset.

    Example:
        >>> import torch
        >>> prior = ReconstructionPrior(layers=("blocks.1", "blocks.2"), n_features=16)
        >>> prior.fit([torch.rand(4, 3, 32, 32) * 2 - 1])
        >>> prior.distance(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Iterable[str] = ("blocks.1", "blocks.2", "blocks.4"),
        n_features: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.padim = PadimModel(backbone=backbone, layers=list(layers), pre_trained=False, n_features=n_features)
        generator = torch.Generator().manual_seed(seed)
        self.padim.idx.copy_(torch.randperm(self.padim.n_features_original, generator=generator)[:n_features])
        self.padim.feature_extractor.requires_grad_(False)
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has filled the Gaussian."""
        return self.padim.gaussian.mean.numel() > 0

    def copy_backbone(self, extractor: TimmFeatureExtractor) -> None:
        """Copy the weights of another extractor of the same backbone (e.g. DiffAD's own, no I/O)."""
        if str(extractor.backbone) != str(self.padim.backbone):
            msg = f"Cannot copy '{extractor.backbone}' weights into a '{self.padim.backbone}' prior."
            raise ValueError(msg)
        source = extractor.feature_extractor.state_dict()
        target = self.padim.feature_extractor.feature_extractor
        missing = [name for name in target.state_dict() if name not in source]
        if missing:
            msg = f"The source extractor lacks {missing[:3]} ...; use load_pretrained_backbone instead."
            raise ValueError(msg)
        target.load_state_dict({name: source[name] for name in target.state_dict()})

    def load_pretrained_backbone(self, pretrained_weights: str | None = "auto") -> None:
        """Load pretrained weights with :func:`anomalib_diffad.backbone.load_pretrained_weights`."""
        load_pretrained_weights(self.padim.feature_extractor, pretrained_weights)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """PaDiM embedding ``(N, n_features, h, w)`` of ``[-1, 1]`` images; differentiable in ``images``.

        The timm network is called directly: ``TimmFeatureExtractor.forward`` runs under ``no_grad``.
        """
        network = self.padim.feature_extractor.feature_extractor.eval()
        normalized = ((images + 1.0) / 2.0 - self.imagenet_mean) / self.imagenet_std
        features = dict(zip(self.padim.layers, network(normalized), strict=True))
        return self.padim.generate_embedding(features)

    def distance(self, images: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance ``(N, 1, h, w)`` of every position of ``[-1, 1]`` images."""
        if not self.fitted:
            msg = "The reconstruction prior is not fitted: call fit() (or fit_reconstruction_prior) first."
            raise RuntimeError(msg)
        gaussian = self.padim.gaussian
        return squared_mahalanobis(self.embed(images), gaussian.mean, gaussian.inv_covariance)

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit the per-position Gaussian (PaDiM's covariance, ``+0.01 I``) on batches of normal ``[-1, 1]`` images.

        Raises:
            ValueError: If there is no image.
        """
        self.fit_embeddings([self.embed(images) for images in batches])

    @torch.no_grad()
    def fit_embeddings(self, embeddings: list[torch.Tensor]) -> None:
        """Fit the Gaussian on :meth:`embed` outputs of normal images.

        Raises:
            ValueError: If there is no embedding.
        """
        if not embeddings:
            msg = "No images to fit the reconstruction prior on."
            raise ValueError(msg)
        self.padim.memory_bank = embeddings
        self.padim.fit()


# --------------------------------------------------------------------------- #
# Algorithm 1
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class GradientDenoising:
    """Settings of Algorithm 1 (defaults: the official code).

    Args:
        step_size: ``s``, the standard deviation of each gradient "noise" step (paper: 0.02).
        denoise_every: ``N_d``, gradient steps between two denoising steps (paper: 5).
        num_denoise_steps: Denoising steps; the run makes ``num_denoise_steps * denoise_every`` gradient steps
            (code: 100, i.e. 500 gradient steps).
        denoise_timestep: Timestep ``t`` at which the image is read as ``x_t`` (code: 8 of 250, i.e. 32).
        denoise_stride: The reverse step goes from ``t`` to ``t - denoise_stride`` (code: 4; a stride above
            ``denoise_timestep`` jumps to the predicted ``x_0``).
        capture_every: With ``return_steps``, record the image after every this many denoising steps.
        squared_loss: Descend the squared Mahalanobis distance (paper) instead of the distance (official
            code); see :func:`mahalanobis_loss`.
    """

    step_size: float = 0.02
    denoise_every: int = 5
    num_denoise_steps: int = 100
    denoise_timestep: int = 32
    denoise_stride: int = 4
    capture_every: int = 10
    squared_loss: bool = True

    def __post_init__(self) -> None:
        """Reject settings that cannot run."""
        if not 0.0 < self.step_size < 1.0:
            msg = f"step_size must lie in (0, 1), got {self.step_size}."
            raise ValueError(msg)
        for name in ("denoise_every", "num_denoise_steps", "denoise_stride", "capture_every"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1, got {getattr(self, name)}."
                raise ValueError(msg)


class Reconstruction(NamedTuple):
    """Output of :func:`gradient_denoise`."""

    reconstruction: torch.Tensor
    """Reconstructed images ``(N, 3, H, W)`` in (about) ``[-1, 1]``."""
    steps: torch.Tensor | None
    """With ``return_steps``: ``(S, N, 3, H, W)``, the input, every ``capture_every``-th denoised image and
    the final one; otherwise ``None``."""


def prior_gradient(prior: ReconstructionPrior, x: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """``g = -grad_x L`` of the Mahalanobis loss, normalised to unit standard deviation per image."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        # Sum over images: each image gets the gradient of its own loss.
        loss = mahalanobis_loss(prior.distance(x), squared=squared).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return normalize_per_image(-grad)


def gradient_denoise(
    images: torch.Tensor,
    prior: ReconstructionPrior,
    denoiser: nn.Module,
    schedule: DiffusionSchedule,
    config: GradientDenoising | None = None,
    class_labels: torch.Tensor | None = None,
    return_steps: bool = False,
) -> Reconstruction:
    """Run Algorithm 1 on a batch of pre-processed ``[-1, 1]`` images.

    Works under ``torch.no_grad``/``inference_mode`` (e.g. in Lightning's predict loop) and on any device:
    the prior follows the images' device.

    Args:
        images: Images ``(N, 3, H, W)`` in ``[-1, 1]``.
        prior: A fitted :class:`ReconstructionPrior`.
        denoiser: Denoiser returning ``DenoiserOutput`` (use DiffAD's ``ema_denoiser``).
        schedule: The diffusion schedule the denoiser was trained with.
        config: Step size and counts (default: :class:`GradientDenoising`'s).
        class_labels: Class labels for a class-conditional denoiser.
        return_steps: Also return intermediate images.

    Returns:
        The reconstructions and, on request, the intermediate steps.
    """
    config = config or GradientDenoising()
    if config.denoise_timestep >= schedule.num_timesteps:
        msg = f"denoise_timestep {config.denoise_timestep} must be below {schedule.num_timesteps}."
        raise ValueError(msg)
    prior.to(images.device)
    with torch.inference_mode(False), torch.no_grad():
        x = images.detach().clone()
        labels = None if class_labels is None else class_labels.clone()
        t = torch.full((x.shape[0],), config.denoise_timestep, device=x.device, dtype=torch.long)
        steps = [x] if return_steps else []
        for index in range(1, config.num_denoise_steps + 1):
            for _ in range(config.denoise_every):
                x = unit_variance_step(x, prior_gradient(prior, x, config.squared_loss), config.step_size)
            x = denoise_step(denoiser, schedule, x, t, config.denoise_stride, labels)
            if return_steps and (index % config.capture_every == 0 or index == config.num_denoise_steps):
                steps.append(x)
    return Reconstruction(reconstruction=x, steps=torch.stack(steps) if return_steps else None)


# --------------------------------------------------------------------------- #
# DiffAD's reconstruction API
# --------------------------------------------------------------------------- #
def _new_prior(
    torch_model: DiffADModel,
    backbone: str | None,
    layers: Iterable[str],
    n_features: int,
    pretrained_weights: str | None,
    seed: int,
) -> ReconstructionPrior:
    """An unfitted prior with pretrained weights (the model's own backbone: copied, no I/O), on its device."""
    own_backbone = str(torch_model.feature_extractor.backbone)
    prior = ReconstructionPrior(backbone or own_backbone, layers, n_features, seed)
    if backbone is None or backbone == own_backbone:
        prior.copy_backbone(torch_model.feature_extractor)
    else:
        prior.load_pretrained_backbone(pretrained_weights)
    return prior.to(next(torch_model.parameters()).device)


def _model_batches(
    model: "DiffAD",
    dataloader: Iterable[Any],
    max_batches: int | None,
) -> Iterator[tuple[Any, torch.Tensor]]:
    """Each batch with its images on the model's device, through the model's pre-processor if it has one."""
    transform = getattr(model.pre_processor, "transform", None)
    device = next(model.model.parameters()).device
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            return
        images = batch.image if hasattr(batch, "image") else batch[0] if isinstance(batch, list | tuple) else batch
        images = images.to(device)
        yield batch, transform(images) if transform else images


@torch.no_grad()
def fit_reconstruction_prior(
    model: "DiffAD",
    dataloader: Iterable[Any],
    categories: Sequence[str | int] | None = None,
    *,
    backbone: str | None = None,
    layers: Iterable[str] = ("blocks.1", "blocks.2", "blocks.4"),
    n_features: int = 100,
    pretrained_weights: str | None = "auto",
    seed: int = 0,
    max_batches: int | None = None,
) -> ReconstructionPrior | dict[int, ReconstructionPrior]:
    """Fit the Gaussian prior of normal features that :func:`reconstruct` uses, and keep it on the model.

    A unified model gets one prior per category, each fitted on the images of its category only (the batches'
    ``category``: a :class:`~anomalib_diffad.data.multi.MultiCategory` train dataloader); the dataloader is read
    once and every batch embedded once (same backbone and channel subset, one Gaussian each). The priors are not
    part of the checkpoint or the exported graph: refit them after loading, or save their ``state_dict`` (the
    ``ReconstructionPanels`` callback does).

    Args:
        model: A ``DiffAD``; its pre-processor is applied to the batches.
        dataloader: Batches of normal training images (e.g. ``datamodule.train_dataloader()``): anomalib
            ``Batch`` objects, ``(images, ...)`` tuples or tensors.
        categories: Unified model: the categories to fit, by name or index (default: all).
        backbone: Backbone of the prior; ``None`` uses the model's own (weights copied, no I/O).
        layers: Backbone layers of the embedding, highest resolution first.
        n_features: Channels kept by PaDiM's random subset.
        pretrained_weights: Weight source for a backbone other than the model's (see
            :mod:`anomalib_diffad.backbone`).
        seed: Seed of the channel subset.
        max_batches: Use at most this many batches (``None``: all).

    Returns:
        The fitted prior, on the model's device; for a unified model, every prior kept so far by category index.

    Raises:
        ValueError: If there is no image; unified model: if a category is unknown, a batch has no ``category``,
            or the dataloader has no image of a category.

    Example:
        >>> import torch
        >>> from anomalib_diffad import DiffAD
        >>> from anomalib_diffad.reconstruction import GradientDenoising, fit_reconstruction_prior, reconstruct
        >>> from anomalib_diffad.spaces import PixelSpace
        >>> space = PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8)
        >>> model = DiffAD(space, image_size=32, layers=("blocks.0", "blocks.1"), pretrained_weights=None)
        >>> prior = fit_reconstruction_prior(model, [torch.rand(4, 3, 32, 32)], layers=("blocks.1",), n_features=8)
        >>> images = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> reconstruct(model, images, config=GradientDenoising(num_denoise_steps=1, denoise_every=1)).shape
        torch.Size([2, 3, 32, 32])
    """
    unified = model.model.num_classes is not None
    keys = [model.categories.index(key) for key in categories or range(model.model.num_classes)] if unified else [None]
    prior = _new_prior(model.model, backbone, layers, n_features, pretrained_weights, seed)
    embeddings: dict[int | None, list[torch.Tensor]] = {key: [] for key in keys}
    for batch, images in _model_batches(model, dataloader, max_batches):
        embedded = prior.embed(images)
        if not unified:
            embeddings[None].append(embedded)
            continue
        labels = getattr(batch, "category", None)
        if labels is None:
            msg = "Per-category priors need batches with a category (use MultiCategory)."
            raise ValueError(msg)
        labels = labels.to(embedded.device)
        for key, values in embeddings.items():
            selected = labels == key
            if bool(selected.any()):
                values.append(embedded[selected])
    fitted = {}
    for key, values in embeddings.items():
        if unified and not values:
            msg = (
                f"Category {model.categories.all_names[key]!r}: no training images of it in the dataloader. "
                "Pass categories=[...] to fit only some."
            )
            raise ValueError(msg)
        fitted[key] = copy.deepcopy(prior)
        fitted[key].fit_embeddings(values)
    # A plain dict attribute, not a submodule: the state_dict and the exported graph stay unchanged.
    model.reconstruction_priors = getattr(model, "reconstruction_priors", {}) | fitted
    return model.reconstruction_priors if unified else fitted[None]


def reconstruct(
    model: "DiffAD",
    images: torch.Tensor,
    return_steps: bool = False,
    *,
    prior: ReconstructionPrior | None = None,
    config: GradientDenoising | None = None,
    category: str | int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradient-denoising reconstruction (paper Algorithm 1) of pre-processed ``[-1, 1]`` images by a DiffAD.

    Runs :func:`gradient_denoise` on the EMA weights, on the images' device; usable inside ``no_grad`` and
    predict. A unified model reconstructs images of one category at a time: with that category's class
    embedding and prior. See :func:`fit_reconstruction_prior` for an example.

    Args:
        model: A pixel-space ``DiffAD``.
        images: Images ``(N, 3, H, W)`` as the model sees them (after the pre-processor).
        return_steps: Also return the intermediate images ``(S, N, 3, H, W)``.
        prior: Gaussian of normal features (default: the one :func:`fit_reconstruction_prior` kept on the model;
            for a unified model, the category's).
        config: Step size and counts (default: the official code's).
        category: Unified model: the images' category (default: the selected one).

    Returns:
        The reconstructions, or ``(reconstructions, steps)`` when ``return_steps``.

    Raises:
        ValueError: If no prior is given and none was fitted, a unified model gets no category, or the model
            diffuses features.
    """
    torch_model = model.model
    space = torch_model.diffusion_space
    if not space.discrete:  # only the pixel space diffuses the (8-bit) images
        msg = (
            "Gradient-denoising reconstruction works in pixel space; "
            f"this DiffAD diffuses features ({type(space).__name__})."
        )
        raise ValueError(msg)
    index, labels = None, None
    if torch_model.num_classes is not None:
        index = model.categories.selected if category is None else model.categories.index(category)
        if index is None:
            msg = "A unified DiffAD reconstructs one category at a time: pass category=... or categories.select(...)."
            raise ValueError(msg)
        labels = torch.full((images.shape[0],), index, dtype=torch.long, device=images.device)
    prior = prior if prior is not None else getattr(model, "reconstruction_priors", {}).get(index)
    if prior is None:
        msg = (
            "No reconstruction prior: call fit_reconstruction_prior(model, datamodule.train_dataloader()) once, "
            "or pass prior=..."
        )
        raise ValueError(msg)
    output = gradient_denoise(
        images,
        prior,
        torch_model.ema_denoiser,
        torch_model.schedule,
        config,
        class_labels=labels,
        return_steps=return_steps,
    )
    return (output.reconstruction, output.steps) if return_steps else output.reconstruction
