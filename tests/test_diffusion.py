# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0

"""Value tests of the DDPM / improved-DDPM equations in :mod:`anomalib_diffad.diffusion`.

Every reference is computed independently of the implementation: schedules with plain Python loops in
float64, posteriors by Bayes' rule (product of Gaussians) or by Monte Carlo regression, KLs with
``torch.distributions`` and the discretized likelihood with the exact normal CDF.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from anomalib_diffad.diffusion import (
    LN2,
    DiffusionSchedule,
    approx_standard_normal_cdf,
    discretized_gaussian_nll,
    extract,
    gaussian_kl,
    learned_range_log_variance,
    linear_beta_schedule,
    p_mean_log_variance,
    posterior_kl_map,
    predict_x0_from_eps,
    q_posterior_log_variance,
    q_posterior_mean,
    q_sample,
    standardize_per_image,
    variational_bound_terms,
)

T = 1000


# --------------------------------------------------------------------------------------------------
# Independent float64 reference of the schedule (plain Python, no torch.cumprod / linspace).
# --------------------------------------------------------------------------------------------------
def ref_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> list[float]:
    scale = 1000.0 / num_timesteps
    lo, hi = beta_start * scale, beta_end * scale
    return [lo + (hi - lo) * i / (num_timesteps - 1) for i in range(num_timesteps)]


def ref_alphas_cumprod(betas: list[float]) -> list[float]:
    out, prod = [], 1.0
    for beta in betas:
        prod *= 1.0 - beta
        out.append(prod)
    return out


class Ref:
    """Scalar closed forms for a T-step linear schedule; index ``t`` is 0-based (step t+1 of DDPM)."""

    def __init__(self, num_timesteps: int = T) -> None:
        self.betas = ref_betas(num_timesteps)
        self.abar = ref_alphas_cumprod(self.betas)

    def abar_prev(self, t: int) -> float:
        return 1.0 if t == 0 else self.abar[t - 1]

    def posterior(self, t: int, x0: float, xt: float) -> tuple[float, float]:
        """Bayes' rule: q(x_{t-1}|x_0) q(x_t|x_{t-1}) as a product of two Gaussians in x_{t-1}."""
        beta, alpha = self.betas[t], 1.0 - self.betas[t]
        ap = self.abar_prev(t)
        if t == 0:  # q(x_{-1} | x_0) is a point mass at x_0
            return x0, 0.0
        prior_mean, prior_var = math.sqrt(ap) * x0, 1.0 - ap
        # likelihood of x_t as a function of x_{t-1}: N(x_t; sqrt(alpha) x_{t-1}, beta)
        precision = 1.0 / prior_var + alpha / beta
        var = 1.0 / precision
        mean = var * (prior_mean / prior_var + math.sqrt(alpha) * xt / beta)
        return mean, var

    def posterior_var_clipped(self, t: int) -> float:
        return self.posterior(max(t, 1), 0.0, 0.0)[1]


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule(T)


@pytest.fixture(scope="module")
def ref() -> Ref:
    return Ref(T)


def _t(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------------
def test_linear_beta_schedule_endpoints_and_linearity() -> None:
    betas = linear_beta_schedule(T)
    assert betas.dtype == torch.float64
    assert betas.shape == (T,)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    diffs = betas[1:] - betas[:-1]
    assert torch.allclose(diffs, torch.full_like(diffs, (0.02 - 1e-4) / (T - 1)), rtol=1e-9, atol=0)
    assert torch.allclose(betas, torch.tensor(ref_betas(T), dtype=torch.float64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("num_timesteps", [100, 250, 4000])
def test_linear_beta_schedule_rescaled_for_other_t(num_timesteps: int) -> None:
    betas = linear_beta_schedule(num_timesteps)
    scale = 1000.0 / num_timesteps
    assert betas.shape == (num_timesteps,)
    assert betas[0].item() == pytest.approx(1e-4 * scale, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02 * scale, rel=1e-12)
    ref_values = torch.tensor(ref_betas(num_timesteps), dtype=torch.float64)
    assert torch.allclose(betas, ref_values, rtol=1e-12, atol=0)


def test_linear_beta_schedule_custom_range() -> None:
    betas = linear_beta_schedule(500, beta_start=2e-4, beta_end=0.01)
    assert betas[0].item() == pytest.approx(4e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)


def test_schedule_alphas_cumprod_matches_python_loop(schedule: DiffusionSchedule, ref: Ref) -> None:
    abar = torch.tensor(ref.abar, dtype=torch.float64)
    assert schedule.alphas_cumprod.dtype == torch.float32
    assert torch.allclose(schedule.alphas_cumprod.double(), abar, rtol=1e-5, atol=0)
    assert torch.allclose(schedule.sqrt_alphas_cumprod.double(), abar.sqrt(), rtol=1e-5, atol=0)
    assert torch.allclose(schedule.sqrt_one_minus_alphas_cumprod.double(), (1 - abar).sqrt(), rtol=1e-5, atol=0)
    assert torch.allclose(schedule.sqrt_recip_alphas_cumprod.double(), 1 / abar.sqrt(), rtol=1e-5, atol=0)
    assert torch.allclose(schedule.sqrt_recipm1_alphas_cumprod.double(), (1 / abar - 1).sqrt(), rtol=1e-5, atol=0)
    assert torch.allclose(schedule.betas.double(), torch.tensor(ref.betas, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(schedule.log_betas.double(), torch.tensor(ref.betas, dtype=torch.float64).log(), rtol=1e-6)
    # known value for the DDPM schedule: abar_T ~ 4.04e-5
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-3)


def test_schedule_posterior_variance_closed_form(schedule: DiffusionSchedule, ref: Ref) -> None:
    # beta_tilde_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), written directly (not via Bayes)
    expected = [ref.betas[t] * (1 - ref.abar[t - 1]) / (1 - ref.abar[t]) for t in range(1, T)]
    got = schedule.posterior_log_variance_clipped.double()
    assert torch.allclose(got[1:].exp(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=0)
    # beta_tilde_0 = 0, so its log is clipped to the value at t = 1
    assert got[0].item() == got[1].item()
    assert math.isfinite(got[0].item())
    # and the Bayes-rule variance agrees with the closed form
    for t in (1, 2, 10, 500, T - 1):
        assert ref.posterior(t, 0.3, -0.2)[1] == pytest.approx(expected[t - 1], rel=1e-9)


def test_schedule_posterior_mean_coefficients(schedule: DiffusionSchedule, ref: Ref) -> None:
    coef1 = [ref.betas[t] * math.sqrt(ref.abar_prev(t)) / (1 - ref.abar[t]) for t in range(T)]
    coef2 = [(1 - ref.abar_prev(t)) * math.sqrt(1 - ref.betas[t]) / (1 - ref.abar[t]) for t in range(T)]
    assert torch.allclose(schedule.posterior_mean_coef1.double(), torch.tensor(coef1, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(schedule.posterior_mean_coef2.double(), torch.tensor(coef2, dtype=torch.float64), rtol=1e-5)
    # at the first step the posterior collapses onto x_0
    assert schedule.posterior_mean_coef1[0].item() == pytest.approx(1.0, abs=1e-6)
    assert schedule.posterior_mean_coef2[0].item() == pytest.approx(0.0, abs=1e-12)


def test_schedule_buffers_are_float32_and_not_persistent(schedule: DiffusionSchedule) -> None:
    names = dict(schedule.named_buffers())
    assert {"betas", "alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1"} <= set(names)
    assert all(buf.dtype == torch.float32 and buf.shape == (T,) for buf in names.values())
    assert schedule.state_dict() == {}
    assert schedule.num_timesteps == T


def test_extract_gathers_and_reshapes() -> None:
    coefficients = torch.arange(10, dtype=torch.float32) * 0.5
    t = _t(3, 0, 9)
    out = extract(coefficients, t, 4)
    assert out.shape == (3, 1, 1, 1)
    assert out.flatten().tolist() == [1.5, 0.0, 4.5]
    assert extract(coefficients, t, 2).shape == (3, 1)


# --------------------------------------------------------------------------------------------------
# Forward process and its posterior
# --------------------------------------------------------------------------------------------------
def test_q_sample_without_noise_is_scaled_x0(schedule: DiffusionSchedule, ref: Ref) -> None:
    x0 = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    t = _t(0, 1, 400, T - 1)
    xt = q_sample(schedule, x0, t, torch.zeros_like(x0))
    for i, ti in enumerate(t.tolist()):
        assert torch.allclose(xt[i].double(), math.sqrt(ref.abar[ti]) * x0[i].double(), rtol=1e-5, atol=1e-7)


def test_q_sample_with_unit_x0_and_noise_is_closed_form(schedule: DiffusionSchedule, ref: Ref) -> None:
    t = _t(0, 250, 999)
    xt = q_sample(schedule, torch.full((3, 1, 1, 1), 0.5), t, torch.full((3, 1, 1, 1), -2.0))
    expected = [0.5 * math.sqrt(ref.abar[i]) - 2.0 * math.sqrt(1 - ref.abar[i]) for i in t.tolist()]
    assert torch.allclose(xt.flatten().double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t_value", [0, 100, 500, T - 1])
def test_q_sample_empirical_moments(schedule: DiffusionSchedule, ref: Ref, t_value: int) -> None:
    n, x0_value = 200_000, 0.7
    gen = torch.Generator().manual_seed(t_value)
    x0 = torch.full((n, 1), x0_value)
    xt = q_sample(schedule, x0, torch.full((n,), t_value, dtype=torch.long), torch.randn(n, 1, generator=gen))
    abar = ref.abar[t_value]
    mean, var = xt.double().mean().item(), xt.double().var().item()
    expected_var = 1 - abar
    assert mean == pytest.approx(math.sqrt(abar) * x0_value, abs=5 * math.sqrt(expected_var / n) + 1e-6)
    # sd of the sample variance of a Gaussian is var * sqrt(2 / n)
    assert var == pytest.approx(expected_var, abs=5 * expected_var * math.sqrt(2 / n))


@pytest.mark.parametrize("t_value", [0, 1, 7, 300, T - 1])
def test_q_posterior_mean_matches_bayes_rule(schedule: DiffusionSchedule, ref: Ref, t_value: int) -> None:
    gen = torch.Generator().manual_seed(t_value + 1)
    x0 = torch.rand(2, 1, 3, 3, generator=gen) * 2 - 1
    xt = torch.randn(2, 1, 3, 3, generator=gen)
    got = q_posterior_mean(schedule, x0, xt, _t(t_value, t_value))
    expected = torch.tensor(
        [ref.posterior(t_value, a, b)[0] for a, b in zip(x0.flatten().tolist(), xt.flatten().tolist(), strict=True)],
        dtype=torch.float64,
    ).reshape(got.shape)
    assert got.shape == xt.shape
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5)


def test_q_posterior_mean_mixed_timesteps_broadcast(schedule: DiffusionSchedule, ref: Ref) -> None:
    t = _t(0, 5, 999)
    x0 = torch.tensor([0.25, -0.5, 0.9]).reshape(3, 1, 1, 1).expand(3, 2, 2, 2)
    xt = torch.tensor([-1.0, 0.3, 1.2]).reshape(3, 1, 1, 1).expand(3, 2, 2, 2)
    got = q_posterior_mean(schedule, x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        expected = ref.posterior(ti, x0[i, 0, 0, 0].item(), xt[i, 0, 0, 0].item())[0]
        assert torch.allclose(got[i].double(), torch.full((2, 2, 2), expected, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("t_value", [10, 500])
def test_q_posterior_monte_carlo_regression(schedule: DiffusionSchedule, t_value: int) -> None:
    """Sample the forward chain x0 -> x_{t-1} -> x_t; regress x_{t-1} on x_t to recover mean and variance."""
    n, x0_value = 400_000, 0.6
    gen = torch.Generator().manual_seed(123 + t_value)
    ref = Ref(T)
    ap, beta = ref.abar[t_value - 1], ref.betas[t_value]
    x_prev = math.sqrt(ap) * x0_value + math.sqrt(1 - ap) * torch.randn(n, dtype=torch.float64, generator=gen)
    x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, dtype=torch.float64, generator=gen)
    cov = ((x_prev - x_prev.mean()) * (x_t - x_t.mean())).mean()
    slope = (cov / x_t.var(unbiased=False)).item()
    intercept = (x_prev.mean() - slope * x_t.mean()).item()
    residual_var = (x_prev - intercept - slope * x_t).var().item()

    coef2 = schedule.posterior_mean_coef2[t_value].item()
    coef1 = schedule.posterior_mean_coef1[t_value].item()
    var = schedule.posterior_log_variance_clipped[t_value].exp().item()
    assert slope == pytest.approx(coef2, rel=5e-3)
    # standard error of an OLS intercept: sqrt(s^2 (1/n + mean(x)^2 / (n var(x))))
    se_intercept = math.sqrt(residual_var * (1 / n + x_t.mean().item() ** 2 / (n * x_t.var().item())))
    assert intercept == pytest.approx(coef1 * x0_value, abs=5 * se_intercept)
    assert residual_var == pytest.approx(var, rel=5 * math.sqrt(2 / n))


def test_q_posterior_log_variance(schedule: DiffusionSchedule, ref: Ref) -> None:
    t = _t(0, 1, 2, 600, T - 1)
    got = q_posterior_log_variance(schedule, t, 4)
    assert got.shape == (5, 1, 1, 1)
    expected = torch.tensor([math.log(ref.posterior_var_clipped(i)) for i in t.tolist()], dtype=torch.float64)
    assert torch.allclose(got.flatten().double(), expected, rtol=1e-5, atol=1e-5)
    assert got[0].item() == got[1].item()


# --------------------------------------------------------------------------------------------------
# Reverse process
# --------------------------------------------------------------------------------------------------
def test_predict_x0_from_eps_inverts_q_sample(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 2, 4, 4, generator=gen) * 1.5  # beyond [-1, 1] on purpose
    noise = torch.randn(5, 2, 4, 4, generator=gen)
    t = _t(0, 3, 100, 400, 700)
    xt = q_sample(schedule, x0, t, noise)
    x0_hat = predict_x0_from_eps(schedule, xt, t, noise, clip=False)
    assert torch.allclose(x0_hat, x0, atol=2e-4)
    assert x0_hat.abs().max() > 1.0


def test_predict_x0_from_eps_closed_form(schedule: DiffusionSchedule, ref: Ref) -> None:
    t = _t(50, 999)
    xt = torch.tensor([0.4, -0.8]).reshape(2, 1, 1, 1)
    eps = torch.tensor([-0.3, 0.7]).reshape(2, 1, 1, 1)
    got = predict_x0_from_eps(schedule, xt, t, eps, clip=False).flatten().tolist()
    for i, ti in enumerate(t.tolist()):
        abar = ref.abar[ti]
        expected = (xt[i].item() - math.sqrt(1 - abar) * eps[i].item()) / math.sqrt(abar)
        assert got[i] == pytest.approx(expected, rel=1e-4)


def test_predict_x0_from_eps_clips(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 1, 8, 8, generator=gen) * 3
    noise = torch.randn(3, 1, 8, 8, generator=gen)
    t = _t(10, 200, 900)
    xt = q_sample(schedule, x0, t, noise)
    clipped = predict_x0_from_eps(schedule, xt, t, noise, clip=True)
    assert clipped.min() >= -1.0
    assert clipped.max() <= 1.0
    assert (clipped == 1.0).any()
    assert (clipped == -1.0).any()
    assert torch.allclose(clipped, x0.clamp(-1, 1), atol=5e-4)
    # default is clip=True
    assert torch.equal(predict_x0_from_eps(schedule, xt, t, noise), clipped)


@pytest.mark.parametrize("t_value", [0, 1, 42, T - 1])
def test_learned_range_log_variance_endpoints_and_midpoint(
    schedule: DiffusionSchedule,
    ref: Ref,
    t_value: int,
) -> None:
    log_beta = math.log(ref.betas[t_value])
    log_beta_tilde = math.log(ref.posterior_var_clipped(t_value))
    t = _t(t_value)

    def at(v: float) -> float:
        out = learned_range_log_variance(schedule, torch.full((1, 1, 2, 2), v), t)
        assert out.shape == (1, 1, 2, 2)
        assert torch.all(out == out[0, 0, 0, 0])
        return out[0, 0, 0, 0].item()

    assert at(1.0) == pytest.approx(log_beta, rel=1e-5)
    assert at(-1.0) == pytest.approx(log_beta_tilde, rel=1e-5)
    assert at(0.0) == pytest.approx(0.5 * (log_beta + log_beta_tilde), rel=1e-5)
    assert at(0.5) == pytest.approx(0.75 * log_beta + 0.25 * log_beta_tilde, rel=1e-5)


def test_learned_range_log_variance_is_elementwise(schedule: DiffusionSchedule, ref: Ref) -> None:
    v = torch.tensor([[-1.0, 1.0], [0.0, -0.5]]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    t = _t(3, 800)
    out = learned_range_log_variance(schedule, v, t)
    for i, ti in enumerate(t.tolist()):
        lo, hi = math.log(ref.posterior_var_clipped(ti)), math.log(ref.betas[ti])
        expected = [(vv + 1) / 2 * hi + (1 - (vv + 1) / 2) * lo for vv in v[i].flatten().tolist()]
        assert torch.allclose(out[i].flatten().double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)


@pytest.mark.parametrize("t_value", [0, 1, 50, 500, 900])
def test_p_mean_with_true_eps_is_true_posterior_mean(schedule: DiffusionSchedule, ref: Ref, t_value: int) -> None:
    gen = torch.Generator().manual_seed(10 + t_value)
    x0 = torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1  # within [-1, 1]: clipping is a no-op
    noise = torch.randn(2, 3, 4, 4, generator=gen)
    t = _t(t_value, t_value)
    xt = q_sample(schedule, x0, t, noise)
    v = torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1
    mean, log_var = p_mean_log_variance(schedule, xt, t, noise, v)
    expected = torch.tensor(
        [ref.posterior(t_value, a, b)[0] for a, b in zip(x0.flatten().tolist(), xt.flatten().tolist(), strict=True)],
        dtype=torch.float64,
    ).reshape(mean.shape)
    assert mean.shape == xt.shape
    assert torch.allclose(mean.double(), expected, atol=2e-4)
    assert torch.allclose(log_var, learned_range_log_variance(schedule, v, t))


def test_p_mean_uses_clipped_x0(schedule: DiffusionSchedule, ref: Ref) -> None:
    """With x0 = 3 the predicted x0 is clipped to 1, so the mean is the posterior mean at x0 = 1."""
    t_value = 5
    t = _t(t_value)
    x0 = torch.full((1, 1, 1, 1), 3.0)
    noise = torch.full((1, 1, 1, 1), 0.4)
    xt = q_sample(schedule, x0, t, noise)
    mean, _ = p_mean_log_variance(schedule, xt, t, noise, torch.zeros_like(xt))
    assert mean.item() == pytest.approx(ref.posterior(t_value, 1.0, xt.item())[0], rel=1e-4)
    unclipped = ref.posterior(t_value, 3.0, xt.item())[0]
    coef1 = ref.betas[t_value] * math.sqrt(ref.abar[t_value - 1]) / (1 - ref.abar[t_value])
    assert abs(mean.item() - unclipped) == pytest.approx(2.0 * coef1, rel=1e-3)
    assert abs(mean.item() - unclipped) > 0.3


# --------------------------------------------------------------------------------------------------
# KL and likelihood
# --------------------------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(2, 50, dtype=torch.float64, generator=gen)
    lv1, lv2 = torch.randn(2, 50, dtype=torch.float64, generator=gen) * 2
    got = gaussian_kl(m1, lv1, m2, lv2)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert got.shape == (50,)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert (got >= 0).all()


def test_gaussian_kl_zero_for_identical_and_known_values() -> None:
    m = torch.tensor([0.0, 1.5, -3.0])
    lv = torch.tensor([0.0, -2.0, 1.0])
    assert torch.allclose(gaussian_kl(m, lv, m, lv), torch.zeros(3), atol=1e-7)
    # KL(N(1, 1) || N(0, 1)) = 1/2 ; KL(N(0, 1) || N(0, 4)) = (ln 4 - 1 + 1/4) / 2
    assert gaussian_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)).item() == (
        pytest.approx(0.5)
    )
    kl = gaussian_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.log(4.0)))
    assert kl.item() == pytest.approx(0.5 * (math.log(4.0) - 1 + 0.25), rel=1e-6)
    # asymmetry: KL(p||q) != KL(q||p) in general
    kl_rev = gaussian_kl(torch.tensor(0.0), torch.tensor(math.log(4.0)), torch.tensor(0.0), torch.tensor(0.0))
    assert kl_rev.item() == pytest.approx(0.5 * (-math.log(4.0) - 1 + 4.0), rel=1e-6)


def test_gaussian_kl_broadcasts() -> None:
    out = gaussian_kl(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 3, 3), torch.zeros(1))
    assert out.shape == (2, 1, 3, 3)
    assert torch.allclose(out, torch.full_like(out, 0.5))


def test_approx_standard_normal_cdf_close_to_erf() -> None:
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    approx = approx_standard_normal_cdf(x)
    assert (approx - exact).abs().max() < 2e-4
    assert approx_standard_normal_cdf(torch.tensor(0.0)).item() == 0.5
    assert torch.allclose(approx + approx_standard_normal_cdf(-x), torch.ones_like(x), atol=1e-12)  # symmetry


def _exact_bin_probability(x0: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    dist = Normal(mean.double(), (0.5 * log_var.double()).exp())
    x = x0.double()
    upper = torch.where(x > 0.999, torch.ones_like(x), dist.cdf(x + 1 / 255))
    lower = torch.where(x < -0.999, torch.zeros_like(x), dist.cdf(x - 1 / 255))
    return upper - lower


def test_discretized_gaussian_nll_matches_exact_normal_cdf() -> None:
    gen = torch.Generator().manual_seed(4)
    levels = torch.randint(0, 256, (4000,), generator=gen)
    x0 = levels.float() / 127.5 - 1.0
    mean = x0 + torch.randn(4000, generator=gen) * 0.01
    log_var = torch.empty(4000).uniform_(math.log(0.005**2), math.log(0.05**2), generator=gen)
    nll = discretized_gaussian_nll(x0, mean, log_var)
    assert nll.shape == x0.shape
    assert (nll >= 0).all()
    exact = _exact_bin_probability(x0, mean, log_var)
    prob = torch.exp(-nll.double())
    relevant = exact > 1e-2
    assert relevant.sum() > 3000
    assert torch.allclose(prob[relevant], exact[relevant], rtol=3e-3, atol=3e-4)


def test_discretized_gaussian_nll_scalar_value() -> None:
    # x0 = 0, mean = 0, std = 1/255: probability of [-1/255, 1/255] is P(|Z| < 1) = 0.682689...
    nll = discretized_gaussian_nll(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2 * math.log(1 / 255)]))
    assert math.exp(-nll.item()) == pytest.approx(0.6826894921, abs=1e-3)


def test_discretized_gaussian_nll_edge_bins_are_open() -> None:
    log_var = torch.full((2,), 2 * math.log(0.1))
    # mean far outside the data range: the edge bin takes all the mass beyond it
    nll_low = discretized_gaussian_nll(torch.tensor([-1.0, -1.0 + 2 / 255]), torch.full((2,), -1.5), log_var)
    nll_high = discretized_gaussian_nll(torch.tensor([1.0, 1.0 - 2 / 255]), torch.full((2,), 1.5), log_var)
    exact_low = Normal(-1.5, 0.1).cdf(torch.tensor(-1.0 + 1 / 255)).item()
    exact_high = 1 - Normal(1.5, 0.1).cdf(torch.tensor(1.0 - 1 / 255)).item()
    assert nll_low[0].item() == pytest.approx(-math.log(exact_low), abs=1e-3)
    assert nll_high[0].item() == pytest.approx(-math.log(exact_high), abs=1e-3)
    assert nll_low[0].item() < 1e-3  # almost all mass
    assert nll_high[0].item() < 1e-3
    # the neighbouring bins are closed and get a tiny mass
    assert nll_low[1].item() > 10
    assert nll_high[1].item() > 10


@pytest.mark.parametrize(("mean", "std"), [(0.0, 0.3), (0.95, 0.05), (-0.99, 0.2), (0.2, 0.004), (1.3, 0.5)])
def test_discretized_gaussian_probabilities_sum_to_one(mean: float, std: float) -> None:
    x0 = torch.arange(256, dtype=torch.float32) / 127.5 - 1.0
    nll = discretized_gaussian_nll(x0, torch.full_like(x0, mean), torch.full_like(x0, 2 * math.log(std)))
    total = torch.exp(-nll.double()).sum().item()
    assert total == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# DiffAD's pixel score and the variational bound
# --------------------------------------------------------------------------------------------------
def _ref_posterior_kl_bits(
    ref: Ref,
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
    clip: bool = True,
) -> torch.Tensor:
    """Float64 reference of KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits, via Bayes and torch.distributions.

    ``clip``: the model's x0 estimate is clipped to [-1, 1] (scoring) or not (the training bound).
    """
    out = torch.empty(x0.shape, dtype=torch.float64)
    for i, ti in enumerate(t.tolist()):
        abar = ref.abar[ti]
        log_lo, log_hi = math.log(ref.posterior_var_clipped(ti)), math.log(ref.betas[ti])
        for idx in range(x0[i].numel()):
            a, b, e, vv = (z[i].flatten()[idx].item() for z in (x0, xt, eps, v))
            x0_hat = (b - math.sqrt(1 - abar) * e) / math.sqrt(abar)
            x0_hat = min(max(x0_hat, -1.0), 1.0) if clip else x0_hat
            true_mean, _ = ref.posterior(ti, a, b)
            model_mean, _ = ref.posterior(ti, x0_hat, b)
            frac = (vv + 1) / 2
            model_var = math.exp(frac * log_hi + (1 - frac) * log_lo)
            true_var = ref.posterior_var_clipped(ti)
            kl = kl_divergence(
                Normal(torch.tensor(true_mean, dtype=torch.float64), torch.tensor(math.sqrt(true_var))),
                Normal(torch.tensor(model_mean, dtype=torch.float64), torch.tensor(math.sqrt(model_var))),
            )
            out[i].view(-1)[idx] = kl / math.log(2.0)
    return out


def test_posterior_kl_map_zero_for_true_noise_and_posterior_variance(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(4, 3, 6, 6, generator=gen) * 2 - 1
    noise = torch.randn(4, 3, 6, 6, generator=gen)
    t = _t(0, 1, 300, 999)
    xt = q_sample(schedule, x0, t, noise)
    kl = posterior_kl_map(schedule, x0, xt, t, noise, -torch.ones_like(x0))
    assert kl.shape == x0.shape
    assert kl.abs().max() < 1e-4


def test_posterior_kl_map_positive_otherwise(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(6)
    x0 = torch.rand(3, 1, 5, 5, generator=gen) * 2 - 1
    noise = torch.randn(3, 1, 5, 5, generator=gen)
    # wrong variance, true noise (at large t beta and beta_tilde coincide in float32, so use small t)
    t_small = _t(1, 10, 60)
    xt_small = q_sample(schedule, x0, t_small, noise)
    kl_var = posterior_kl_map(schedule, x0, xt_small, t_small, noise, torch.ones_like(x0))
    assert (kl_var > 0).all()
    t = _t(2, 300, 800)
    xt = q_sample(schedule, x0, t, noise)
    # true variance, wrong noise
    kl_mean = posterior_kl_map(schedule, x0, xt, t, noise + 0.5, -torch.ones_like(x0))
    assert (kl_mean > 0).all()
    # a bigger noise error gives a bigger KL (equal where both predicted x0 are clipped to the same bound)
    kl_more = posterior_kl_map(schedule, x0, xt, t, noise + 1.0, -torch.ones_like(x0))
    assert (kl_more >= kl_mean).all()
    assert (kl_more[0] > kl_mean[0]).all()  # t = 2: the predicted x0 stays inside [-1, 1]


def test_posterior_kl_map_matches_independent_reference(schedule: DiffusionSchedule, ref: Ref) -> None:
    gen = torch.Generator().manual_seed(7)
    x0 = torch.rand(3, 2, 3, 3, generator=gen) * 2 - 1
    noise = torch.randn(3, 2, 3, 3, generator=gen)
    t = _t(1, 100, 700)
    xt = q_sample(schedule, x0, t, noise)
    eps = noise + 0.3 * torch.randn(3, 2, 3, 3, generator=gen)
    v = torch.rand(3, 2, 3, 3, generator=gen) * 2 - 1
    got = posterior_kl_map(schedule, x0, xt, t, eps, v)
    expected = _ref_posterior_kl_bits(ref, x0, xt, t, eps, v)
    assert got.shape == x0.shape
    assert torch.allclose(got.double(), expected, rtol=2e-3, atol=1e-4)
    assert (expected > 1e-2).any()


def test_posterior_kl_map_is_gaussian_kl_in_bits(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(8)
    x0 = torch.rand(2, 1, 4, 4, generator=gen) * 2 - 1
    t = _t(20, 600)
    xt = q_sample(schedule, x0, t, torch.randn(2, 1, 4, 4, generator=gen))
    eps = torch.randn(2, 1, 4, 4, generator=gen)
    v = torch.rand(2, 1, 4, 4, generator=gen) * 2 - 1
    true_mean = q_posterior_mean(schedule, x0, xt, t)
    true_log_var = q_posterior_log_variance(schedule, t, 4)
    model_mean, model_log_var = p_mean_log_variance(schedule, xt, t, eps, v)
    nats = gaussian_kl(true_mean, true_log_var, model_mean, model_log_var)
    got = posterior_kl_map(schedule, x0, xt, t, eps, v)
    assert pytest.approx(math.log(2.0), rel=1e-15) == LN2
    assert torch.allclose(got, nats / math.log(2.0), rtol=1e-6, atol=1e-9)


def _quantized(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=gen).float() / 127.5 - 1.0


def test_variational_bound_terms_shape_and_per_timestep_terms(schedule: DiffusionSchedule, ref: Ref) -> None:
    gen = torch.Generator().manual_seed(9)
    shape = (4, 3, 5, 5)
    x0 = _quantized(shape, gen)
    noise = torch.randn(shape, generator=gen)
    t = _t(0, 5, 0, 300)
    xt = q_sample(schedule, x0, t, noise)
    eps = noise + 0.05 * torch.randn(shape, generator=gen)
    v = torch.rand(shape, generator=gen) * 2 - 1
    terms = variational_bound_terms(schedule, x0, xt, t, eps, v)
    assert terms.shape == (4,)

    kl_bits = posterior_kl_map(schedule, x0, xt, t, eps, v, clip_x0=False).mean(dim=(1, 2, 3))
    model_mean, model_log_var = p_mean_log_variance(schedule, xt, t, eps, v, clip_x0=False)
    nll_bits = discretized_gaussian_nll(x0, model_mean, model_log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
    assert torch.allclose(terms[[1, 3]], kl_bits[[1, 3]], rtol=1e-6)
    assert torch.allclose(terms[[0, 2]], nll_bits[[0, 2]], rtol=1e-6)

    # independent float64 references: decoder NLL with the exact normal CDF, KL via Bayes + torch.distributions
    exact_prob = _exact_bin_probability(x0, model_mean, model_log_var)
    exact_nll_bits = (-exact_prob.clamp(min=1e-12).log()).mean(dim=(1, 2, 3)) / math.log(2.0)
    assert torch.allclose(terms[[0, 2]].double(), exact_nll_bits[[0, 2]], rtol=1e-2)
    ref_kl_bits = _ref_posterior_kl_bits(ref, x0[[1, 3]], xt[[1, 3]], t[[1, 3]], eps[[1, 3]], v[[1, 3]], clip=False)
    assert torch.allclose(terms[[1, 3]].double(), ref_kl_bits.mean(dim=(1, 2, 3)), rtol=2e-3)


@pytest.mark.parametrize("t_value", [5, 300])
def test_variational_bound_uses_unclipped_x0_and_scoring_clips(
    schedule: DiffusionSchedule,
    ref: Ref,
    t_value: int,
) -> None:
    """An eps whose x0 estimate leaves [-1, 1]: L_vb is the KL at the unclipped estimate, the score map clips.

    Closed form with a shared x_t: the means differ by ``coef1 * (x0 - x0_hat)``, so the KL in nats is
    ``0.5 * (lv2 - lv1 - 1 + exp(lv1 - lv2) + coef1^2 (x0 - x0_hat)^2 exp(-lv2))``.
    """
    t = _t(t_value)
    x0 = torch.full((1, 1, 1, 1), 0.5)
    noise = torch.full((1, 1, 1, 1), 0.3)
    xt = q_sample(schedule, x0, t, noise)
    abar = ref.abar[t_value]
    x0_hat = 2.5  # an eps that implies this x0: well outside the data range
    eps = torch.full_like(xt, (xt.item() - math.sqrt(abar) * x0_hat) / math.sqrt(1 - abar))
    v = torch.full_like(xt, 0.2)
    coef1 = ref.betas[t_value] * math.sqrt(ref.abar_prev(t_value)) / (1 - abar)
    lv1 = math.log(ref.posterior_var_clipped(t_value))
    lv2 = 0.6 * math.log(ref.betas[t_value]) + 0.4 * lv1

    def kl_bits(estimate: float) -> float:
        nats = 0.5 * (lv2 - lv1 - 1 + math.exp(lv1 - lv2) + coef1**2 * (0.5 - estimate) ** 2 * math.exp(-lv2))
        return nats / math.log(2.0)

    bound = variational_bound_terms(schedule, x0, xt, t, eps, v).item()
    score = posterior_kl_map(schedule, x0, xt, t, eps, v).item()
    assert bound == pytest.approx(kl_bits(x0_hat), rel=2e-3)
    assert score == pytest.approx(kl_bits(1.0), rel=2e-3)
    assert bound > 1.5 * score  # the two differ: clipping is not in the bound


def test_variational_bound_terms_t0_is_decoder_nll_not_kl(schedule: DiffusionSchedule) -> None:
    """At t == 0 the posterior has zero variance: the term must be the NLL, not the (clipped) KL."""
    gen = torch.Generator().manual_seed(11)
    shape = (2, 1, 4, 4)
    x0 = _quantized(shape, gen)
    noise = torch.randn(shape, generator=gen)
    t = _t(0, 0)
    xt = q_sample(schedule, x0, t, noise)
    v = torch.zeros(shape)
    terms = variational_bound_terms(schedule, x0, xt, t, noise, v)
    kl = posterior_kl_map(schedule, x0, xt, t, noise, v).mean(dim=(1, 2, 3))
    model_mean, model_log_var = p_mean_log_variance(schedule, xt, t, noise, v)
    nll = discretized_gaussian_nll(x0, model_mean, model_log_var).mean(dim=(1, 2, 3)) / LN2
    assert torch.allclose(terms, nll)
    assert not torch.allclose(terms, kl, rtol=1e-2)


def test_variational_bound_terms_gradient_flows_to_v_only(schedule: DiffusionSchedule) -> None:
    gen = torch.Generator().manual_seed(12)
    shape = (3, 2, 4, 4)
    x0 = _quantized(shape, gen)
    noise = torch.randn(shape, generator=gen)
    t = _t(0, 50, 700)
    xt = q_sample(schedule, x0, t, noise)
    eps = (noise + 0.2 * torch.randn(shape, generator=gen)).requires_grad_(True)
    v = (torch.rand(shape, generator=gen) * 2 - 1).requires_grad_(True)
    variational_bound_terms(schedule, x0, xt, t, eps, v).sum().backward()
    assert eps.grad is None or torch.count_nonzero(eps.grad) == 0
    assert v.grad is not None
    assert v.grad.abs().sum() > 0
    assert torch.isfinite(v.grad).all()
    # every sample (both the NLL and the KL branch) sends gradient to its v
    assert (v.grad.abs().flatten(1).sum(dim=1) > 0).all()


# --------------------------------------------------------------------------------------------------
# Per-image standardization
# --------------------------------------------------------------------------------------------------
def test_standardize_per_image_zero_mean_unit_std() -> None:
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(5, 3, 8, 8, generator=gen) * torch.tensor([0.1, 1, 3, 10, 100]).reshape(5, 1, 1, 1)
    x = x + torch.tensor([-5.0, 0, 2, 50, 1e3]).reshape(5, 1, 1, 1)
    x = x + torch.tensor([0.0, 1.0, -2.0]).reshape(1, 3, 1, 1)  # per-channel offsets: statistics are per image
    out = standardize_per_image(x.double())
    assert out.shape == x.shape
    flat = out.flatten(1)
    assert torch.allclose(flat.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(flat.std(dim=1), torch.ones(5, dtype=torch.float64), atol=1e-6)
    # closed form on one image
    ref_img = x[2].double().flatten()
    expected = (ref_img - ref_img.sum() / ref_img.numel()) / math.sqrt(
        ((ref_img - ref_img.mean()) ** 2).sum().item() / (ref_img.numel() - 1),
    )
    assert torch.allclose(out[2].flatten(), expected, atol=1e-6)
    # channels keep their relative offsets (statistics are not per channel)
    assert out[2, 1].mean() > out[2, 0].mean() > out[2, 2].mean()


def test_standardize_per_image_affine_invariant() -> None:
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    a = torch.tensor([0.5, 7.0, 123.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    b = torch.tensor([-3.0, 10.0, 0.25], dtype=torch.float64).reshape(3, 1, 1, 1)
    assert torch.allclose(standardize_per_image(a * x + b), standardize_per_image(x), atol=1e-6)
    # a sign flip flips the result
    assert torch.allclose(standardize_per_image(-x), -standardize_per_image(x), atol=1e-6)


def test_standardize_per_image_is_per_sample() -> None:
    x = torch.stack([torch.arange(16.0).reshape(1, 4, 4), 100 * torch.arange(16.0).reshape(1, 4, 4) - 7])
    out = standardize_per_image(x)
    assert torch.allclose(out[0], out[1], atol=1e-5)


def test_standardize_per_image_constant_is_finite() -> None:
    out = standardize_per_image(torch.full((2, 1, 3, 3), 4.0))
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.zeros_like(out))
