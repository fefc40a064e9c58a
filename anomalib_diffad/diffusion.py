# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Gaussian diffusion math of DDPM with learned variance, one function per equation.

The notation follows Ho et al. (2020, "DDPM") and Nichol & Dhariwal (2021, "improved DDPM"), which the
DiffAD paper builds on. Schedules are precomputed by :class:`DiffusionSchedule` and indexed by timestep;
every other function is pure tensor math so that it traces cleanly for ONNX/OpenVINO export.

Shapes: images are ``(N, C, H, W)``; ``t`` is an integer tensor ``(N,)``; per-timestep coefficients are
gathered with :func:`extract` into ``(N, 1, 1, 1)`` so that they broadcast over the image.
"""

import math
from typing import NamedTuple

import torch
from torch import nn

LN2 = math.log(2.0)


class DenoiserOutput(NamedTuple):
    """Outputs of one denoiser pass (every space's denoiser returns one)."""

    eps: torch.Tensor
    """Predicted noise, shaped like ``x_t``."""
    v: torch.Tensor
    """Raw variance interpolation output in [-1, 1], shaped like ``x_t``."""
    features: torch.Tensor | None
    """Predicted pretrained-CNN features at 1/4 resolution ``(N, C_f, H/4, W/4)``; ``None`` without a head."""


def linear_beta_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear variance schedule beta_1..beta_T of DDPM (float64 for accurate cumulative products).

    The endpoints are given for T=1000 and rescaled by 1000/T, as in improved DDPM.
    """
    scale = 1000.0 / num_timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)


def extract(coefficients: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``coefficients[t]`` and reshape to ``(N, 1, ..., 1)`` to broadcast over ``ndim``-d tensors."""
    return coefficients[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class DiffusionSchedule(nn.Module):
    """Precomputed schedule quantities of a DDPM, stored as float32 buffers indexed by timestep.

    Buffers are non-persistent: they are a deterministic function of ``num_timesteps`` and the beta range,
    so they are rebuilt at construction and never stored in a checkpoint.

    Args:
        num_timesteps: Number of diffusion steps ``T``.
        beta_start: First beta of the linear schedule (for T=1000).
        beta_end: Last beta of the linear schedule (for T=1000).

    Example:
        >>> schedule = DiffusionSchedule(1000)
        >>> schedule.alphas_cumprod.shape
        torch.Size([1000])
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        self.num_timesteps = num_timesteps
        betas = linear_beta_schedule(num_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # beta_tilde_0 is 0; like improved DDPM, clip its log to beta_tilde_1.
        posterior_log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        values = {
            "betas": betas,
            "log_betas": torch.log(betas),
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
        }
        for name, value in values.items():
            self.register_buffer(name, value.float(), persistent=False)


def q_sample(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process sample ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM Eq. 4)."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior_mean(schedule: DiffusionSchedule, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean of the forward posterior ``q(x_{t-1} | x_t, x_0)`` (DDPM Eq. 7, mu_tilde)."""
    coef1 = extract(schedule.posterior_mean_coef1, t, xt.ndim)
    coef2 = extract(schedule.posterior_mean_coef2, t, xt.ndim)
    return coef1 * x0 + coef2 * xt


def q_posterior_log_variance(schedule: DiffusionSchedule, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Clipped log variance of ``q(x_{t-1} | x_t, x_0)``: ``log beta_tilde_t`` (DDPM Eq. 7)."""
    return extract(schedule.posterior_log_variance_clipped, t, ndim)


def predict_x0_from_eps(
    schedule: DiffusionSchedule,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    clip: bool = True,
) -> torch.Tensor:
    """Invert q_sample for ``x_0`` given predicted noise; clip to the data range [-1, 1] when ``clip``."""
    x0 = (
        extract(schedule.sqrt_recip_alphas_cumprod, t, xt.ndim) * xt
        - extract(schedule.sqrt_recipm1_alphas_cumprod, t, xt.ndim) * eps
    )
    return x0.clamp(-1.0, 1.0) if clip else x0


def learned_range_log_variance(schedule: DiffusionSchedule, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Learned log variance interpolating ``log beta_t`` and ``log beta_tilde_t`` (improved DDPM Eq. 15).

    ``v`` is the raw network output in [-1, 1]; the interpolation weight is ``(v + 1) / 2``.
    """
    frac = (v + 1.0) / 2.0
    max_log = extract(schedule.log_betas, t, v.ndim)
    min_log = extract(schedule.posterior_log_variance_clipped, t, v.ndim)
    return frac * max_log + (1.0 - frac) * min_log


def p_mean_log_variance(
    schedule: DiffusionSchedule,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    clip_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log variance of the reverse step ``p_theta(x_{t-1} | x_t)``.

    The mean is the posterior mean at the ``x_0`` predicted from ``eps`` (DDPM Eq. 11 via x_0), clipped to
    the data range when ``clip_x0`` (a sampling and scoring device; training uses the unclipped estimate, as
    guided-diffusion does); the log variance is the learned range (improved DDPM Eq. 15).
    """
    x0 = predict_x0_from_eps(schedule, xt, t, eps, clip=clip_x0)
    return q_posterior_mean(schedule, x0, xt, t), learned_range_log_variance(schedule, v, t)


def gaussian_kl(
    mean1: torch.Tensor,
    log_var1: torch.Tensor,
    mean2: torch.Tensor,
    log_var2: torch.Tensor,
) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2)))`` in nats."""
    return 0.5 * (
        log_var2 - log_var1 - 1.0 + torch.exp(log_var1 - log_var2) + (mean1 - mean2) ** 2 * torch.exp(-log_var2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF used by improved DDPM's decoder likelihood."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood in nats of 8-bit data ``x0`` in [-1, 1] under a discretized Gaussian (DDPM L_0)."""
    centered = x0 - mean
    inv_std = torch.exp(-0.5 * log_var)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x0 < -0.999,
        log_cdf_plus,
        torch.where(x0 > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return -log_probs


def gaussian_nll(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Negative log-density in nats of continuous data ``x0`` under ``N(mean, exp(log_var))`` (feature space L_0)."""
    return 0.5 * (math.log(2.0 * math.pi) + log_var + (x0 - mean) ** 2 * torch.exp(-log_var))


def posterior_kl_map(
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Per-pixel ``KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` in bits: DiffAD's pixel-level score.

    Scoring clips the model's ``x_0`` estimate to the data range, as the paper's code does (``clip_x0``).
    """
    true_mean = q_posterior_mean(schedule, x0, xt, t)
    true_log_var = q_posterior_log_variance(schedule, t, xt.ndim)
    model_mean, model_log_var = p_mean_log_variance(schedule, xt, t, eps, v, clip_x0)
    return gaussian_kl(true_mean, true_log_var, model_mean, model_log_var) / LN2


def variational_bound_terms(
    schedule: DiffusionSchedule,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    discrete: bool = True,
) -> torch.Tensor:
    """Per-sample variational-bound term L_vb in bits with the mean stopped (improved DDPM Sec. 3.1).

    The predicted noise is detached so that L_vb trains only the variance, leaving the mean to L_simple.
    ``t > 0`` gives the posterior KL ``L_{t-1}``; ``t == 0`` gives the decoder NLL ``L_0``: discretized for
    8-bit images (``discrete``), a Gaussian density for continuous data (features). The model's mean uses the
    unclipped ``x_0`` estimate (clipping is a sampling device, not part of the bound).
    """
    eps = eps.detach()
    kl = posterior_kl_map(schedule, x0, xt, t, eps, v, clip_x0=False).mean(dim=tuple(range(1, x0.ndim)))
    model_mean, model_log_var = p_mean_log_variance(schedule, xt, t, eps, v, clip_x0=False)
    nll = discretized_gaussian_nll if discrete else gaussian_nll
    decoder_nll = nll(x0, model_mean, model_log_var).mean(dim=tuple(range(1, x0.ndim))) / LN2
    return torch.where(t == 0, decoder_nll, kl)


def standardize_per_image(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Z-score each sample over all of its non-batch elements (the paper's per-image KL normalization)."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + eps)
