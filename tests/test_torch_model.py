# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffADModel: scoring determinism, fixed noise, EMA, crops, feature head and feature standardization."""

import pytest
import torch

from anomalib_diffad.anomaly_map import feature_error_map
from anomalib_diffad.diffusion import posterior_kl_map, predict_x0_from_eps, q_sample, standardize_per_image
from anomalib_diffad.spaces import DenoiserOutput
from anomalib_diffad.torch_model import DiffADModel
from tests.helpers.presets import tiny_model


@pytest.fixture
def model() -> DiffADModel:
    torch.manual_seed(0)
    return tiny_model().eval()


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_scoring_is_deterministic_and_independent_of_batch(model: DiffADModel) -> None:
    """The same image gets the same score alone, twice, or inside a batch (noise is fixed per image)."""
    images = _images(3)
    with torch.no_grad():
        alone = model(images[:1])
        again = model(images[:1])
        batched = model(images)
    assert torch.equal(alone.pred_score, again.pred_score)
    assert torch.equal(alone.anomaly_map, again.anomaly_map)
    torch.testing.assert_close(batched.anomaly_map[:1], alone.anomaly_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.pred_score[:1], alone.pred_score, rtol=1e-5, atol=1e-5)


def test_noise_seed_changes_scores_and_is_reproducible() -> None:
    """Two models built with the same seed share the scoring noise; another seed draws other noise."""
    first, second, other = (tiny_model(noise_seed=seed) for seed in (0, 0, 1))
    assert torch.equal(first.score_noise, second.score_noise)
    assert not torch.equal(first.score_noise, other.score_noise)
    assert first.score_noise.shape == (3, 1, 3, 32, 32)


def test_scoring_noise_tiles_beyond_its_size(model: DiffADModel) -> None:
    """Images larger than ``image_size`` reuse the stored noise periodically, per scoring step."""
    noise = model.scoring_noise([0, 2], batch_size=2, height=48, width=40)
    assert noise.shape == (4, 3, 48, 40)
    stored = model.score_noise
    torch.testing.assert_close(noise[0, :, :32, :32], stored[0, 0])
    torch.testing.assert_close(noise[1], noise[0])  # same noise for every image of the batch
    torch.testing.assert_close(noise[2, :, 32:48, :8], stored[2, 0, :, :16, :8])


def test_scores_are_top_k_mean_of_the_map(model: DiffADModel) -> None:
    """The image score is the mean of the ``top_k`` largest anomaly-map pixels."""
    with torch.no_grad():
        output = model(_images(2))
    expected = output.anomaly_map.flatten(1).topk(model.top_k, dim=1).values.mean(1)
    torch.testing.assert_close(output.pred_score, expected)
    assert output.anomaly_map.shape == (2, 1, 32, 32)


def test_ema_update_follows_warmup_formula(model: DiffADModel) -> None:
    """After one update the EMA is ``r * ema + (1 - r) * param`` with ``r = min(decay, 2 / 11)``."""
    ema_before = [p.clone() for p in model.ema_denoiser.parameters()]
    with torch.no_grad():
        for parameter in model.denoiser.parameters():
            parameter.add_(1.0)
    model.update_ema(decay=0.997)
    rate = min(0.997, 2.0 / 11.0)
    pairs = zip(model.ema_denoiser.parameters(), model.denoiser.parameters(), strict=True)
    for before, (ema, param) in zip(ema_before, pairs, strict=True):
        torch.testing.assert_close(ema, rate * before + (1 - rate) * param)
    assert int(model.ema_updates) == 1
    assert all(not p.requires_grad for p in model.ema_denoiser.parameters())


def test_scoring_uses_ema_weights(model: DiffADModel) -> None:
    """Changing the trained weights alone leaves eval scores unchanged; the EMA weights drive scoring."""
    images = _images(1)
    with torch.no_grad():
        before = model(images).anomaly_map
        for parameter in model.denoiser.parameters():
            parameter.mul_(0.5)
        after = model(images).anomaly_map
    torch.testing.assert_close(before, after)


def test_scoring_writes_no_state_on_the_module(model: DiffADModel) -> None:
    """Eval forward is a pure function: no attribute of the model changes (export and concurrent use)."""
    before = {name: value for name, value in vars(model).items() if not name.startswith("_")}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    with torch.no_grad():
        model(_images(2))
    after = {name: value for name, value in vars(model).items() if not name.startswith("_")}
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


def _record_denoiser_calls(denoiser: torch.nn.Module) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    """Record ``(xt, t, output)`` of every call of ``denoiser``."""
    calls: list = []

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: DenoiserOutput) -> None:
        calls.append((args[0].detach(), args[1].detach(), output))

    return calls, denoiser.register_forward_hook(hook, with_kwargs=True)


def _expected_pixel_maps(
    model: DiffADModel,
    images: torch.Tensor,
    calls: list,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's pixel-space cues of one image from the denoiser's inputs and outputs, with the shared math:
    the posterior KL with the x0 estimate clipped to [-1, 1], z-scored per image and timestep, channel mean;
    the channel-mean squared error of the predicted features, upsampled; both averaged over the timesteps."""
    xt = torch.cat([call[0] for call in calls])
    t = torch.cat([call[1] for call in calls])
    eps = torch.cat([call[2].eps for call in calls])
    v = torch.cat([call[2].v for call in calls])
    features = torch.cat([call[2].features for call in calls])
    x0 = images.expand(len(t), -1, -1, -1)
    kl = standardize_per_image(posterior_kl_map(model.schedule, x0, xt, t, eps, v, clip_x0=True))
    targets = model.target_features(images).expand(len(t), -1, -1, -1)
    feature = feature_error_map(features, targets, tuple(images.shape[-2:]))
    return kl.mean(dim=1, keepdim=True).mean(dim=0, keepdim=True), feature.mean(dim=0, keepdim=True)


def _implied_noise(model: DiffADModel, images: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noise that ``q_sample`` added to ``images`` to give ``x_t``."""
    abar = model.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (xt - abar.sqrt() * images) / (1 - abar).sqrt()


def test_component_scores_returns_both_maps(model: DiffADModel) -> None:
    """The KL and feature maps of the EMA denoiser's predictions on ``x_t = q_sample(x_0, t, noise)`` at the
    scoring timesteps, with the same fixed noise for every image; they fuse into the eval forward's map."""
    first, second = _images(1, seed=1), _images(1, seed=2)
    calls, handle = _record_denoiser_calls(model.ema_denoiser)
    with torch.no_grad():
        maps = model.component_scores(first)
        first_calls = list(calls)
        model.component_scores(second)
        handle.remove()
        output = model(first)
        expected_kl, expected_feature = _expected_pixel_maps(model, first, first_calls)
    xt, t = (torch.cat([call[i] for call in first_calls]) for i in (0, 1))
    xt_second, t_second = (torch.cat([call[i] for call in calls[len(first_calls) :]]) for i in (0, 1))
    assert sorted(t.tolist()) == sorted(model.score_timesteps)
    assert torch.equal(t, t_second)
    noise = _implied_noise(model, first, xt, t)
    torch.testing.assert_close(_implied_noise(model, second, xt_second, t), noise, rtol=1e-4, atol=1e-4)
    assert 0.8 < float(noise.std()) < 1.2
    assert abs(float(noise.mean())) < 0.1
    torch.testing.assert_close(maps.kl, expected_kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.feature, expected_feature, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.anomaly_map_generator(maps.kl, maps.feature), output.anomaly_map)


class _StubDenoiser(torch.nn.Module):
    """A denoiser with known outputs: ``eps = -0.5 x_t + 0.1 t / T``, ``v = tanh(x_t)``, features from ``x_t``.

    Its ``x_0`` estimate, ``(x_t + sqrt(1 - abar) 0.5 x_t) / sqrt(abar) + ...``, leaves [-1, 1] at every
    scoring timestep, so clipping it matters.
    """

    def __init__(self, feature_channels: int) -> None:
        super().__init__()
        self.feature_channels = feature_channels

    def forward(self, xt: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> DenoiserOutput:
        del class_labels
        eps = -0.5 * xt + 0.1 * t.view(-1, 1, 1, 1) / 1000
        pooled = torch.nn.functional.avg_pool2d(xt, 4).mean(dim=1, keepdim=True)
        scale = torch.linspace(-1, 1, self.feature_channels).view(1, -1, 1, 1)
        return DenoiserOutput(eps=eps, v=torch.tanh(xt), features=scale * pooled + 0.2 * scale**2)


def test_pixel_space_maps_are_the_shared_math_on_the_images(model: DiffADModel) -> None:
    """With a denoiser of known outputs, the pixel-space cues equal the per-image z-scored posterior KL of the
    clipped x0 estimate and the feature-prediction error, computed here from the same tensors; dropping the
    z-scoring or the clipping changes the maps."""
    channels = sum(model.feature_extractor.out_dims)
    model.ema_denoiser = _StubDenoiser(channels)
    images = _images(1, seed=8)
    calls, handle = _record_denoiser_calls(model.ema_denoiser)
    with torch.no_grad():
        maps = model.component_scores(images)
        handle.remove()
        expected_kl, expected_feature = _expected_pixel_maps(model, images, calls)
        xt, t = torch.cat([c[0] for c in calls]), torch.cat([c[1] for c in calls])
        eps, v = torch.cat([c[2].eps for c in calls]), torch.cat([c[2].v for c in calls])
        x0 = images.expand(len(t), -1, -1, -1)
        estimate = predict_x0_from_eps(model.schedule, xt, t, eps, clip=False)
        unclipped = standardize_per_image(posterior_kl_map(model.schedule, x0, xt, t, eps, v, clip_x0=False))
        raw = posterior_kl_map(model.schedule, x0, xt, t, eps, v, clip_x0=True)
    assert sorted(t.tolist()) == sorted(model.score_timesteps)
    assert float((estimate.abs() > 1).float().mean()) > 0.3  # the clipping is exercised
    torch.testing.assert_close(maps.kl, expected_kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.feature, expected_feature, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps.kl.mean(), torch.tensor(0.0), rtol=0, atol=1e-5)  # z-scored per image
    assert (unclipped.mean(dim=(0, 1)) - maps.kl[0, 0]).abs().max() > 0.1
    assert (raw.mean(dim=(0, 1)) - maps.kl[0, 0]).abs().max() > 0.1


def test_training_outputs_shapes() -> None:
    """Train mode crops, noises with ``x_t = q_sample(x_0, t, noise)``, and returns the denoiser's eps, variance
    and quarter-resolution features of ``x_t``; the targets are the frozen features of the crop's place."""
    torch.manual_seed(3)
    model = tiny_model({"train_crop_size": 16}).train()
    outputs = model(_images(4))
    channels = sum(model.feature_extractor.out_dims)
    assert outputs.x0.shape == outputs.xt.shape == outputs.noise.shape == (4, 3, 16, 16)
    assert outputs.prediction.features.shape == outputs.target_features.shape == (4, channels, 4, 4)
    assert ((outputs.t >= 0) & (outputs.t < 1000)).all()
    assert len(set(outputs.t.tolist())) > 1
    torch.testing.assert_close(outputs.xt, q_sample(model.schedule, outputs.x0, outputs.t, outputs.noise))
    assert 0.7 < float(outputs.noise.std()) < 1.3
    with torch.no_grad():
        prediction = model.denoiser(outputs.xt, outputs.t)
    for name in ("eps", "v", "features"):
        torch.testing.assert_close(getattr(outputs.prediction, name), getattr(prediction, name), msg=name)
    assert outputs.prediction.eps.requires_grad
    assert not outputs.target_features.requires_grad


def test_feature_statistics_standardize_training_features(model: DiffADModel) -> None:
    """After fitting, the target features of the fitting images have per-channel mean 0 and std 1."""
    batches = [_images(4, seed=seed) for seed in range(3)]
    model.fit_feature_statistics(batches)
    assert bool(model.feature_statistics_fitted)
    features = torch.cat([model.target_features(batch) for batch in batches])
    torch.testing.assert_close(features.mean(dim=(0, 2, 3)), torch.zeros(features.shape[1]), atol=1e-4, rtol=0)
    std = features.permute(1, 0, 2, 3).flatten(1).std(dim=1, unbiased=False)
    active = model.feature_channel_std.flatten() > 1e-3
    torch.testing.assert_close(std[active], torch.ones(int(active.sum())), atol=1e-3, rtol=0)


def test_class_labels_change_the_prediction() -> None:
    """With class embeddings, the class label is an input of the denoiser."""
    torch.manual_seed(0)
    model = tiny_model(num_classes=3).eval()
    torch.nn.init.normal_(model.ema_denoiser.unet.class_embedding.weight)
    images = _images(1)
    with torch.no_grad():
        first = model.component_scores(images, torch.tensor([0]))[0]
        second = model.component_scores(images, torch.tensor([2]))[0]
        default = model.component_scores(images)[0]
    assert not torch.allclose(first, second)
    torch.testing.assert_close(default, first)


def test_invalid_score_timesteps_are_rejected() -> None:
    """Scoring timesteps outside [0, T) fail at construction with a clear message."""
    with pytest.raises(ValueError, match="score_timesteps"):
        tiny_model(score_timesteps=(20, 1000))
