# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The patch space: its settings, a per-position denoiser, the paper's posterior KL in closed form, determinism."""

import copy
import math

import pytest
import torch
import yaml

from anomalib_diffad.diffusion import DiffusionSchedule, posterior_kl_map, q_sample
from anomalib_diffad.spaces import DenoiserOutput, PatchDenoiser, PatchSpace, space_from_config
from anomalib_diffad.torch_model import ComponentMaps, DiffADModel

PATCH = {"image_size": (64, 64), "layers": ("blocks.2", "blocks.4"), "score_timesteps": (25, 100, 25)}


def _model(**arguments: object) -> DiffADModel:
    """A patch-space model with a small MLP (32 wide, 2 blocks)."""
    return DiffADModel(PatchSpace(mlp_width=32, mlp_blocks=2), **(PATCH | arguments))


def _images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero weights everywhere (the output layers start at zero), reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def test_the_denoiser_sees_one_position_at_a_time() -> None:
    """Changing one position's input changes that position's outputs and no other position's, exactly."""
    torch.manual_seed(0)
    denoiser = PatchDenoiser(data_channels=6, width=16, num_blocks=2).eval()
    _randomize(denoiser)
    xt, t = torch.randn(2, 6, 5, 7), torch.tensor([10, 700])
    changed = xt.clone()
    changed[1, :, 2, 3] += 5.0
    with torch.no_grad():
        before, after = denoiser(xt, t), denoiser(changed, t)
    for name in ("eps", "v"):
        difference = (getattr(before, name) - getattr(after, name)).abs().sum(dim=1)
        assert difference[1, 2, 3] > 1e-3
        difference[1, 2, 3] = 0
        assert torch.equal(difference, torch.zeros_like(difference)), name


def test_the_denoiser_is_conditioned_on_timestep_and_class() -> None:
    """The same vector at another timestep, or of another class, gets another prediction."""
    denoiser = PatchDenoiser(data_channels=4, width=16, num_blocks=1, num_classes=3).eval()
    _randomize(denoiser, seed=1)
    xt = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        reference = denoiser(xt, torch.tensor([50]), torch.tensor([0])).eps
        later = denoiser(xt, torch.tensor([500]), torch.tensor([0])).eps
        other_class = denoiser(xt, torch.tensor([50]), torch.tensor([2])).eps
    assert (reference - later).abs().max() > 1e-3
    assert (reference - other_class).abs().max() > 1e-3


def _closed_form_kl_bits(
    x0: torch.Tensor,
    xt: torch.Tensor,
    t: int,
    eps: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """``KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))`` in bits, from the betas alone, in float64."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_bar = torch.cumprod(1 - betas, 0)
    beta, bar, bar_prev = betas[t], alphas_bar[t], alphas_bar[t - 1]
    x0, xt, eps, v = (value.double() for value in (x0, xt, eps, v))
    posterior_var = beta * (1 - bar_prev) / (1 - bar)

    def mean(start: torch.Tensor) -> torch.Tensor:
        return (beta * bar_prev.sqrt() * start + (1 - bar_prev) * (1 - beta).sqrt() * xt) / (1 - bar)

    x0_model = (xt - (1 - bar).sqrt() * eps) / bar.sqrt()
    frac = (v + 1) / 2
    model_log_var = frac * torch.log(beta) + (1 - frac) * torch.log(posterior_var)
    log_ratio = model_log_var - torch.log(posterior_var)
    kl = 0.5 * (log_ratio - 1 + torch.exp(-log_ratio) + (mean(x0) - mean(x0_model)) ** 2 / torch.exp(model_log_var))
    return kl / math.log(2)


def test_the_kl_cue_is_the_closed_form_posterior_kl_of_each_position() -> None:
    """The patch space's KL cue is the channel mean of the Gaussian posterior KL, computed here from the betas,
    and the same tensors give the same KL through the pixel path's function (which only adds clipping)."""
    model = _model().eval()
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 152, 4, 4, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    v = torch.rand(x0.shape, generator=generator) * 2 - 1
    t = torch.full((2,), 25)
    xt = q_sample(model.schedule, x0, t, torch.randn(x0.shape, generator=generator))
    kl, _ = model.diffusion_space.cues(model.schedule, x0, xt, t, DenoiserOutput(eps, v, None), x0)
    expected = _closed_form_kl_bits(x0, xt, 25, eps, v).mean(dim=1, keepdim=True)
    torch.testing.assert_close(kl.double(), expected, rtol=2e-3, atol=1e-5)
    pixel_path = posterior_kl_map(DiffusionSchedule(1000), x0, xt, t, eps, v, clip_x0=False).mean(dim=1, keepdim=True)
    torch.testing.assert_close(kl, pixel_path)


def test_training_noises_every_position_with_its_own_timestep() -> None:
    """A training batch is every position's feature vector as its own sample, with the image's class label."""
    torch.manual_seed(0)
    model = _model(num_classes=3).train()
    images, labels = _images(2), torch.tensor([2, 0])
    outputs = model(images, labels)
    features = model.target_features(images)
    assert outputs.x0.shape == (2 * 8 * 8, 152, 1, 1)
    torch.testing.assert_close(outputs.x0[8 * 8 + 3 * 8 + 5, :, 0, 0], features[1, :, 3, 5])
    torch.testing.assert_close(outputs.xt, q_sample(model.schedule, outputs.x0, outputs.t, outputs.noise))
    assert outputs.t.unique().numel() > 20  # not one timestep per image
    assert outputs.target_features is None


def test_features_are_pooled_like_patchcore_before_resizing() -> None:
    """Each layer is averaged over 3 x 3 neighbourhoods at its own resolution, then resized and concatenated."""
    model = _model().eval()
    model.standardize_features = False
    images = _images(1)
    normalized = ((images + 1) / 2 - model.imagenet_mean) / model.imagenet_std
    layers = list(model.feature_extractor(normalized).values())
    pooled = [torch.nn.functional.avg_pool2d(layer, 3, stride=1, padding=1) for layer in layers]
    expected = torch.cat([torch.nn.functional.interpolate(layer, size=(8, 8), mode="bilinear") for layer in pooled], 1)
    torch.testing.assert_close(model.target_features(images), expected)


def test_scoring_is_deterministic_and_depends_on_the_image() -> None:
    """The fixed noise draws make scoring a function: twice the same map, a model rebuilt from the same state
    the same map; a changed image region raises the map there."""
    torch.manual_seed(0)
    model = _model().eval()
    _randomize(model.ema_denoiser)
    rebuilt = _model().eval()
    rebuilt.load_state_dict(model.state_dict())
    images = _images(2)
    with torch.no_grad():
        first, second, third = model(images), model(images), rebuilt(images)
    assert torch.equal(first.anomaly_map, second.anomaly_map)
    assert torch.equal(first.anomaly_map, third.anomaly_map)
    other = images.clone()
    other[0, :, :16, :16] = 1.0
    with torch.no_grad():
        changed = model(other).anomaly_map
    assert not torch.equal(changed[0], first.anomaly_map[0])
    assert torch.equal(changed[1], first.anomaly_map[1])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mlp_width": 0}, "mlp_width must be at least 1, got 0"),
        ({"mlp_blocks": -1}, "mlp_blocks must be at least 0, got -1"),
        ({"feature_pool": 2}, "feature_pool must be an odd positive side, got 2"),
        ({"feature_pool": 0}, "feature_pool must be an odd positive side, got 0"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict, message: str) -> None:
    """A too narrow MLP, a negative block count and an even or empty pooling side each stop with a message
    naming the setting and its value."""
    with pytest.raises(ValueError, match=message):
        PatchSpace(**settings)


def test_settings_round_trip_through_plain_data() -> None:
    """``to_config()`` is plain data (YAML-safe) that rebuilds the same space; the defaults are the preset's."""
    space = PatchSpace(mlp_width=48, mlp_blocks=1, feature_pool=5)
    config = space.to_config()
    assert config == {
        "class_path": "anomalib_diffad.spaces.PatchSpace",
        "init_args": {"mlp_width": 48, "mlp_blocks": 1, "feature_pool": 5},
    }
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    rebuilt = space_from_config(config)
    assert type(rebuilt) is PatchSpace
    assert (rebuilt.mlp_width, rebuilt.mlp_blocks, rebuilt.feature_pool) == (48, 1, 5)
    assert PatchSpace().init_args() == {"mlp_width": 256, "mlp_blocks": 3, "feature_pool": 3}
    assert (PatchSpace().train_crop_size, PatchSpace().score_tile_size) == (None, None)


def test_the_space_builds_its_denoiser_from_its_settings() -> None:
    """The denoiser has the space's width and blocks, and a class embedding only for a unified model."""
    denoiser = PatchSpace(mlp_width=24, mlp_blocks=4).build_denoiser(feature_channels=10, num_classes=2)
    assert isinstance(denoiser, PatchDenoiser)
    assert len(denoiser.blocks) == 4
    assert denoiser.input.weight.shape == (24, 10)
    assert denoiser.class_embedding.weight.shape == (2, 24)
    assert PatchSpace().build_denoiser(feature_channels=10, num_classes=None).class_embedding is None


def test_normalized_passes_weigh_every_timestep_the_same() -> None:
    """With ``timestep_fusion="scaled_mean"`` each pass's cue is divided by its mean over the calibration images
    before the passes are averaged; calibrating on two batches equals calibrating on both at once."""
    torch.manual_seed(0)
    model = _model(timestep_fusion="scaled_mean").eval()
    _randomize(model.ema_denoiser, seed=3)
    first, second = _images(2, seed=1), _images(3, seed=2)
    at_once = copy.deepcopy(model)
    with torch.no_grad():
        at_once.calibrate([(torch.cat([first, second]), None)])
        model.calibrate([(first, None), (second, None)])
        for name, buffer in at_once.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], buffer, msg=name)
        raw = model.pass_maps(torch.cat([first, second]))
        test = _images(2, seed=4)
        maps = model.component_scores(test)
        test_raw = model.pass_maps(test)
    kl_scale = raw.kl.mean(dim=(1, 2, 3, 4))
    assert kl_scale.max() / kl_scale.min() > 1.5  # the timesteps' KL scales differ: the test can tell
    torch.testing.assert_close(model.pass_scale[0, 0], kl_scale)
    torch.testing.assert_close(model.pass_scale[0, 1], raw.feature.mean(dim=(1, 2, 3, 4)))
    expected = (test_raw.kl / kl_scale.view(-1, 1, 1, 1, 1)).mean(dim=0)
    torch.testing.assert_close(maps.kl, torch.nn.functional.interpolate(expected, size=(64, 64), mode="bilinear"))


def test_each_class_gets_its_own_pass_scales() -> None:
    """A unified model sums and scales each class's passes apart; a class without images keeps its scales."""
    model = _model(timestep_fusion="scaled_mean", num_classes=3).eval()
    _randomize(model.ema_denoiser, seed=5)
    images, labels = _images(3, seed=6), torch.tensor([0, 2, 2])
    with torch.no_grad():
        model.calibrate([(images, labels)])
        raw = model.pass_maps(images, labels)
    torch.testing.assert_close(model.pass_scale[0, 0], raw.kl[:, 0].mean(dim=(1, 2, 3)))
    torch.testing.assert_close(model.pass_scale[2, 0], raw.kl[:, 1:].mean(dim=(1, 2, 3, 4)))
    assert torch.equal(model.pass_scale[1], torch.ones(2, 3))


def _log_vectors(kl: torch.Tensor) -> torch.Tensor:
    """Each position's vector of log KLs ``(positions, S)`` of pass maps ``(S, N, 1, h, w)``."""
    return kl.log().movedim(0, -1).reshape(-1, kl.shape[0]).double()


def test_gaussian_fusion_is_the_mahalanobis_distance_of_the_log_kls() -> None:
    """The ``"gaussian"`` fusion fits the mean and the (shrunk) covariance of every calibration position's log
    KLs, in two batches as at once, and maps each test position to its Mahalanobis distance from them; a subset
    of the passes uses their marginal Gaussian."""
    model = _model(timestep_fusion="gaussian").eval()
    _randomize(model.ema_denoiser, seed=3)
    first, second = _images(2, seed=1), _images(3, seed=2)
    at_once = copy.deepcopy(model)
    with torch.no_grad():
        at_once.calibrate([(torch.cat([first, second]), None)])
        model.calibrate([(first, None), (second, None)])
        for name, buffer in at_once.state_dict().items():  # the MLP's float sums depend on the batch a little
            torch.testing.assert_close(model.state_dict()[name], buffer, rtol=1e-4, atol=1e-4, msg=name)
        calibration = _log_vectors(model.pass_maps(torch.cat([first, second])).kl)
        test = _images(2, seed=4)
        maps = model.component_scores(test)
        test_kl = model.pass_maps(test).kl
        second_pass = model.component_scores(test, step_indices=[1])
    covariance = torch.cov(calibration.T, correction=0)
    covariance = 0.9 * covariance + 0.1 * torch.diag(torch.diagonal(covariance))
    assert covariance[0, 1] / covariance[0, 0] > 0.1  # the passes are correlated: the off-diagonal terms count
    torch.testing.assert_close(model.pass_mean[0], calibration.mean(dim=0).float())
    torch.testing.assert_close(model.pass_covariance[0], covariance.float())
    centred = _log_vectors(test_kl) - calibration.mean(dim=0)
    distance = ((centred @ torch.linalg.inv(covariance)) * centred).sum(dim=1).sqrt()
    expected = distance.float().view(2, 1, 8, 8)
    torch.testing.assert_close(maps.kl, torch.nn.functional.interpolate(expected, size=(64, 64), mode="bilinear"))
    marginal = (centred[:, 1] / covariance[1, 1].sqrt()).abs().float().view(2, 1, 8, 8)
    marginal = torch.nn.functional.interpolate(marginal, size=(64, 64), mode="bilinear")
    torch.testing.assert_close(second_pass.kl, marginal)


def test_gaussian_fusion_flags_an_unusual_profile_over_the_timesteps_whatever_its_level() -> None:
    """A position whose log KLs move against the calibration normals' correlation by half as much scores twice as
    high as one whose log KLs all rise together, although its mean KL is lower: the fusion measures the KL's
    profile over the noise levels."""
    model = _model(timestep_fusion="gaussian", score_timesteps=(25, 100)).eval()
    generator = torch.Generator().manual_seed(0)
    level = torch.randn(1, 64, 1, 8, 8, generator=generator)
    normal = (level + 0.1 * torch.randn(2, 64, 1, 8, 8, generator=generator)).exp()  # the passes move together
    model.pass_maps = lambda *_args: ComponentMaps(normal, normal)
    model.fit_pass_statistics([(torch.zeros(1), None)])
    together = torch.tensor([1.0, 1.0]).view(2, 1, 1, 1, 1).exp()
    against = torch.tensor([0.5, -0.5]).view(2, 1, 1, 1, 1).exp()
    assert together.mean() > against.mean()
    distances = model.pass_distance(torch.cat([together, against], dim=1), None, [0, 1]).flatten()
    assert distances[1] > 2 * distances[0]


def test_scaled_mean_and_gaussian_adds_the_standardized_level_and_distance() -> None:
    """``"scaled_mean_and_gaussian"``: the scaled mean (the ``"scaled_mean"`` map) and the Mahalanobis distance
    (the ``"gaussian"`` map), each standardized by its mean and standard deviation over the calibration
    positions, added."""
    models = {}
    for fusion in ("scaled_mean", "gaussian", "scaled_mean_and_gaussian"):
        torch.manual_seed(0)  # the same feature extractor
        models[fusion] = _model(timestep_fusion=fusion).eval()
        _randomize(models[fusion].ema_denoiser, seed=3)
    calibration, test = _images(4, seed=1), _images(2, seed=4)
    with torch.no_grad():
        for model in models.values():
            model.calibrate([(calibration, None)])
        means, distance = models["scaled_mean_and_gaussian"].fused_passes(calibration)
        level, gaussian = (models[fusion].component_scores(test).kl for fusion in ("scaled_mean", "gaussian"))
        both = models["scaled_mean_and_gaussian"].component_scores(test).kl
    parts = torch.cat([means.kl, distance], dim=1).double()
    mean, std = parts.mean(dim=(0, 2, 3)), parts.std(dim=(0, 2, 3), correction=0)
    statistics = models["scaled_mean_and_gaussian"].fusion_statistics[0]
    torch.testing.assert_close(statistics, torch.stack([mean, std], dim=1).float())
    torch.testing.assert_close(both, (level - mean[0]) / std[0] + (gaussian - mean[1]) / std[1], check_dtype=False)
    assert float(((level - mean[0]) / std[0]).std()) > 0.3  # both parts count
    assert float(((gaussian - mean[1]) / std[1]).std()) > 0.3


def test_each_class_gets_its_own_gaussian() -> None:
    """A unified model fits each class's Gaussian on its images and scores each image with its class's; a class
    without images keeps the identity."""
    model = _model(timestep_fusion="gaussian", num_classes=3).eval()
    _randomize(model.ema_denoiser, seed=5)
    images, labels = _images(3, seed=6), torch.tensor([0, 2, 2])
    with torch.no_grad():
        model.calibrate([(images, labels)])
        kl = model.pass_maps(images, labels).kl
        maps = model.component_scores(images, labels)
    torch.testing.assert_close(model.pass_mean[0], _log_vectors(kl[:, :1]).mean(dim=0).float())
    torch.testing.assert_close(model.pass_mean[2], _log_vectors(kl[:, 1:]).mean(dim=0).float())
    assert torch.equal(model.pass_covariance[1], torch.eye(3))
    with torch.no_grad():  # alone, with its class's Gaussian (the MLP's float sums depend on the batch a little)
        alone = model.component_scores(images[1:2], labels[1:2]).kl
        other_class = model.component_scores(images[1:2], labels[:1]).kl
    torch.testing.assert_close(alone, maps.kl[1:2], rtol=1e-3, atol=1e-4)
    assert (other_class - alone).abs().max() > 1e-2


def test_training_timesteps_are_drawn_below_train_timesteps() -> None:
    """``train_timesteps`` bounds the timesteps training draws (every vector its own); by default they span all
    ``T``; scoring timesteps outside the trained range are refused."""
    torch.manual_seed(0)
    bounded = _model(train_timesteps=120).train()
    t = bounded.training_outputs(_images(2)).t
    assert t.numel() == 2 * 8 * 8  # one timestep per position of each image
    assert 100 <= int(t.max()) < 120  # 128 draws below 120: the largest is below 100 with probability 1e-10
    default = _model().train().training_outputs(_images(2)).t
    assert int(default.max()) >= 900  # below 900 with probability 1.4e-6
    with pytest.raises(ValueError, match=r"score_timesteps \(25, 100, 25\) must lie in \[0, 100\)"):
        _model(train_timesteps=100)
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="train_timesteps must lie in"):
            _model(train_timesteps=bad)
