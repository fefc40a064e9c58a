# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffADLoss term by term: each term equals its closed form, each weight applies, L_vb alone trains the variance.

The closed forms are written here from the papers in float64 (DDPM Eqs. 4, 7, 11; improved DDPM Eq. 15 and the
discretized decoder), independently of :mod:`anomalib_diffad.diffusion`.
"""

import math

import pytest
import torch

from anomalib_diffad.diffusion import DiffusionSchedule
from anomalib_diffad.loss import DiffADLoss
from anomalib_diffad.torch_model import DenoiserOutput, TrainOutput

T = 1000


def _schedule_f64() -> dict[str, torch.Tensor]:
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    beta_tilde = betas * (1 - abar_prev) / (1 - abar)
    return {"betas": betas, "abar": abar, "abar_prev": abar_prev, "beta_tilde": beta_tilde}


def _outputs(t: list[int], seed: int = 0, features: bool = True, x0: torch.Tensor | None = None) -> TrainOutput:
    """A batch of loss inputs with leaf predictions (gradients can be read per output)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(t)
    if x0 is None:
        x0 = torch.randint(0, 256, (n, 3, 4, 4), generator=generator).float() / 127.5 - 1  # 8-bit data in [-1, 1]
    noise = torch.randn(n, 3, 4, 4, generator=generator)
    steps = torch.tensor(t)
    s = _schedule_f64()
    xt = (s["abar"][steps].sqrt().view(-1, 1, 1, 1) * x0 + (1 - s["abar"][steps]).sqrt().view(-1, 1, 1, 1) * noise)
    eps = (noise + 0.3 * torch.randn(noise.shape, generator=generator)).requires_grad_()
    v = (torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1).requires_grad_()
    predicted = torch.randn(n, 5, 1, 1, generator=generator).requires_grad_() if features else None
    target = torch.randn(n, 5, 1, 1, generator=generator) if features else None
    return TrainOutput(
        x0=x0,
        xt=xt.float(),
        t=steps,
        noise=noise,
        prediction=DenoiserOutput(eps=eps, v=v, features=predicted),
        target_features=target,
    )


def _model_mean_log_var(outputs: TrainOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse-step mean (posterior mean at the unclipped x0 estimate) and learned log variance, float64."""
    s = _schedule_f64()
    t = outputs.t
    view = (-1, 1, 1, 1)
    abar, abar_prev, beta = (s[k][t].view(view) for k in ("abar", "abar_prev", "betas"))
    xt, eps, v = outputs.xt.double(), outputs.prediction.eps.detach().double(), outputs.prediction.v.detach().double()
    x0_hat = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
    mean = (beta * abar_prev.sqrt() * x0_hat + (1 - abar_prev) * (1 - beta).sqrt() * xt) / (1 - abar)
    log_tilde = torch.log(torch.where(t == 0, s["beta_tilde"][1], s["beta_tilde"][t])).view(view)
    frac = (v + 1) / 2
    return mean, frac * torch.log(beta) + (1 - frac) * log_tilde


def _expected_kl_bits(outputs: TrainOutput) -> torch.Tensor:
    """Per-sample mean of KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits."""
    s = _schedule_f64()
    t = outputs.t
    view = (-1, 1, 1, 1)
    abar, abar_prev, beta = (s[k][t].view(view) for k in ("abar", "abar_prev", "betas"))
    x0, xt = outputs.x0.double(), outputs.xt.double()
    true_mean = (beta * abar_prev.sqrt() * x0 + (1 - abar_prev) * (1 - beta).sqrt() * xt) / (1 - abar)
    true_var = s["beta_tilde"][t].view(view)
    mean, log_var = _model_mean_log_var(outputs)
    var = log_var.exp()
    kl = 0.5 * (log_var - true_var.log() - 1 + true_var / var + (true_mean - mean) ** 2 / var)
    return kl.mean(dim=(1, 2, 3)) / math.log(2)


def test_simple_term_is_the_noise_mse() -> None:
    """``L_simple`` is the mean squared error between predicted and true noise."""
    outputs = _outputs([5, 300, 999])
    losses = DiffADLoss(DiffusionSchedule(T))(outputs)
    expected = ((outputs.prediction.eps.detach().double() - outputs.noise.double()) ** 2).mean()
    torch.testing.assert_close(losses["simple"].double(), expected, rtol=1e-6, atol=0)


def test_vb_term_is_the_posterior_kl_in_bits_for_t_above_zero() -> None:
    """``L_vb`` at ``t > 0`` is the batch mean of the Gaussian KL between the true and the model posteriors."""
    outputs = _outputs([1, 20, 401, 999])
    losses = DiffADLoss(DiffusionSchedule(T))(outputs)
    torch.testing.assert_close(losses["vb"].double(), _expected_kl_bits(outputs).mean(), rtol=2e-4, atol=1e-6)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def test_vb_term_is_the_decoder_nll_at_t_zero() -> None:
    """At ``t = 0``, ``L_vb`` is the negative log2 probability of the 8-bit bin of ``x_0`` (edge bins open),
    or the Gaussian negative log2 density for continuous data (``discrete=False``)."""
    x0 = torch.tensor([-1.0, -0.5, 0.0, 1.0]).repeat(12)[:48].view(1, 3, 4, 4)
    outputs = _outputs([0], x0=x0)
    mean, log_var = _model_mean_log_var(outputs)
    std, x = log_var.mul(0.5).exp(), x0.double()
    upper = torch.where(x > 0.999, torch.ones_like(x), _normal_cdf((x - mean + 1 / 255) / std))
    lower = torch.where(x < -0.999, torch.zeros_like(x), _normal_cdf((x - mean - 1 / 255) / std))
    expected = -torch.log2(upper - lower).mean()
    losses = DiffADLoss(DiffusionSchedule(T))(outputs)
    # the loss uses improved DDPM's tanh approximation of the normal CDF (error < 2e-4 per bin)
    torch.testing.assert_close(losses["vb"].double(), expected, rtol=1e-2, atol=0)
    density = 0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 / log_var.exp())
    continuous = DiffADLoss(DiffusionSchedule(T), discrete=False)(outputs)
    torch.testing.assert_close(continuous["vb"].double(), density.mean() / math.log(2), rtol=1e-4, atol=0)


def test_feature_term_is_the_feature_mse_and_zero_without_targets() -> None:
    """``L_feat`` is the MSE between predicted and target features; 0 in feature space (no targets)."""
    outputs = _outputs([10, 500])
    losses = DiffADLoss(DiffusionSchedule(T))(outputs)
    expected = ((outputs.prediction.features.detach() - outputs.target_features) ** 2).mean()
    torch.testing.assert_close(losses["feature"], expected)
    assert losses["feature"].item() > 0.1
    assert float(DiffADLoss(DiffusionSchedule(T))(_outputs([10, 500], features=False))["feature"]) == 0.0


def test_each_weight_scales_its_term() -> None:
    """``loss = w_simple L_simple + w_vb L_vb + w_feat L_feat`` with each weight on its own term."""
    outputs = _outputs([3, 250, 700])
    losses = DiffADLoss(DiffusionSchedule(T), simple_weight=2.0, vb_weight=3.0, feature_weight=5.0)(outputs)
    unweighted = DiffADLoss(DiffusionSchedule(T))(outputs)
    for name in ("simple", "vb", "feature"):
        torch.testing.assert_close(losses[name], unweighted[name])
    expected = 2.0 * unweighted["simple"] + 3.0 * unweighted["vb"] + 5.0 * unweighted["feature"]
    torch.testing.assert_close(losses["loss"], expected)


@pytest.mark.parametrize("t", [[0, 0], [7, 600]], ids=["decoder", "kl"])
def test_variance_is_trained_by_vb_only_and_vb_does_not_move_the_mean(t: list[int]) -> None:
    """The variance output gets its whole gradient from ``L_vb``; ``L_vb`` sends none to the noise prediction
    (improved DDPM's stop-gradient on the mean), ``L_simple`` none to the variance."""
    outputs = _outputs(t)
    eps, v = outputs.prediction.eps, outputs.prediction.v
    losses = DiffADLoss(DiffusionSchedule(T))(outputs)
    grad_vb = torch.autograd.grad(losses["vb"], (eps, v), retain_graph=True, allow_unused=True)
    assert grad_vb[0] is None or float(grad_vb[0].abs().max()) == 0.0
    assert grad_vb[1] is not None
    assert float(grad_vb[1].abs().max()) > 0.0
    grad_total = torch.autograd.grad(losses["loss"], v, retain_graph=True)[0]
    torch.testing.assert_close(grad_total, grad_vb[1])
    grad_simple = torch.autograd.grad(losses["simple"], (eps, v), retain_graph=True, allow_unused=True)
    assert grad_simple[1] is None or float(grad_simple[1].abs().max()) == 0.0
    torch.testing.assert_close(grad_simple[0], 2 * (eps.detach() - outputs.noise) / eps.numel())
