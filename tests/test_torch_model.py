# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffADModel: scoring determinism, fixed noise, EMA, crops, feature head and feature standardization."""

import pytest
import torch

from anomalib_diffad.anomaly_map import feature_error_map
from anomalib_diffad.diffusion import posterior_kl_map, predict_x0_from_eps, q_sample, standardize_per_image
from anomalib_diffad.spaces import DenoiserOutput
from anomalib_diffad.spaces.pixel import aligned_crop_offsets, crop_at, tile_offsets
from anomalib_diffad.torch_model import DiffADModel

TINY = {
    "image_size": (32, 32),
    "block_out_channels": (16, 32),
    "attention_levels": (1,),
    "attention_head_dim": 16,
    "norm_num_groups": 8,
    "layers": ("blocks.0", "blocks.1"),
}


@pytest.fixture
def model() -> DiffADModel:
    torch.manual_seed(0)
    return DiffADModel(**TINY).eval()


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
    first, second, other = (DiffADModel(**TINY, noise_seed=seed) for seed in (0, 0, 1))
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
    for before, ema, param in zip(ema_before, model.ema_denoiser.parameters(), model.denoiser.parameters(), strict=True):
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


def test_aligned_crops_are_windows_of_the_images_on_the_grid() -> None:
    """Each crop is the window of its own image at a corner on the grid; scaled crops cut the same place."""
    images = torch.arange(32 * 48, dtype=torch.float32).view(1, 1, 32, 48).repeat(6, 3, 1, 1)  # value = 48 y + x
    torch.manual_seed(0)
    tops, lefts = aligned_crop_offsets(6, (32, 48), 16, grid=8)
    assert all(top % 8 == 0 and 0 <= top <= 16 for top in tops)
    assert all(left % 8 == 0 and 0 <= left <= 32 for left in lefts)
    assert len({*zip(tops, lefts, strict=True)}) > 1
    crops = crop_at(images, tops, lefts, 16)
    quarter = crop_at(images[..., ::4, ::4], tops, lefts, 16, scale=4)
    for image, crop, small, top, left in zip(images, crops, quarter, tops, lefts, strict=True):
        torch.testing.assert_close(crop, image[:, top : top + 16, left : left + 16])
        torch.testing.assert_close(small, image[:, top : top + 16 : 4, left : left + 16 : 4])


def test_crop_training_targets_equal_the_whole_image_targets_at_that_place() -> None:
    """The feature target of a training crop is the whole image's target at the crop's place, exactly.

    Targets computed on the crop itself (the previous behaviour) see the crop's borders as image borders and
    differ from what scoring compares against; that difference is asserted too, so the test shows the bug.
    """
    torch.manual_seed(0)
    model = DiffADModel(**(TINY | {"image_size": (64, 64), "layers": ("blocks.2", "blocks.4")}), train_crop_size=32)
    model.train()
    images = _images(4, size=64, seed=5)
    outputs = model(images)
    assert model.diffusion_space.crop_grid == 4  # the stride of the feature targets
    whole = model.target_features(images)
    for index in range(4):
        matches = [
            (top, left)
            for top in range(0, 33, 4)
            for left in range(0, 33, 4)
            if torch.equal(images[index, :, top : top + 32, left : left + 32], outputs.x0[index])
        ]
        assert len(matches) == 1, matches
        top, left = matches[0]
        expected = whole[index, :, top // 4 : top // 4 + 8, left // 4 : left // 4 + 8]
        torch.testing.assert_close(outputs.target_features[index], expected, rtol=0, atol=0)
    on_crops = model.target_features(outputs.x0)
    assert (on_crops - outputs.target_features).pow(2).mean() > 0.05


def test_crop_size_must_lie_on_the_grid() -> None:
    """A crop side off the targets' 4-pixel grid is refused with the grid in the message."""
    with pytest.raises(ValueError, match="multiple of 4"):
        DiffADModel(**TINY, train_crop_size=30)


def test_tile_offsets_cover_the_side_at_half_tile_stride() -> None:
    """Windows start every half tile; the last one ends flush with the side."""
    assert tile_offsets(64, 32) == [0, 16, 32]
    assert tile_offsets(80, 32) == [0, 16, 32, 48]
    assert tile_offsets(72, 32) == [0, 16, 32, 40]
    assert tile_offsets(32, 32) == [0]


def test_tiled_scoring_averages_the_denoiser_over_overlapping_tiles() -> None:
    """Each position gets the mean of the predictions of the tiles that cover it (one tile at a corner,
    four in the middle); with one tile as large as the image, tiled scoring is whole-image scoring."""
    torch.manual_seed(0)
    tiled = DiffADModel(**TINY | {"image_size": (64, 64)}, score_tile_size=32).eval()
    xt, t = _images(2, 64), torch.tensor([20, 400])
    with torch.no_grad():
        output = tiled.diffusion_space.tiled_denoise(tiled.ema_denoiser, xt, t, None)
        corner = tiled.ema_denoiser(xt[..., :32, :32], t)
        corners = [(top, left) for top in (16, 32) for left in (16, 32)]  # the four tiles over [32:48, 32:48]
        middle = [tiled.ema_denoiser(xt[..., top : top + 32, left : left + 32], t) for top, left in corners]
    torch.testing.assert_close(output.eps[..., :16, :16], corner.eps[..., :16, :16])
    torch.testing.assert_close(output.v[..., :16, :16], corner.v[..., :16, :16])
    torch.testing.assert_close(output.features[..., :4, :4], corner.features[..., :4, :4])
    mean = torch.stack([
        p.eps[..., 32 - top : 48 - top, 32 - left : 48 - left] for p, (top, left) in zip(middle, corners, strict=True)
    ]).mean(0)
    torch.testing.assert_close(output.eps[..., 32:48, 32:48], mean)
    whole = DiffADModel(**TINY | {"image_size": (64, 64)}).eval()
    whole.load_state_dict(tiled.state_dict())
    one_tile = DiffADModel(**TINY | {"image_size": (64, 64)}, score_tile_size=64).eval()
    one_tile.load_state_dict(tiled.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(one_tile(_images(2, 64)).anomaly_map, whole(_images(2, 64)).anomaly_map)
        assert not torch.allclose(tiled(_images(2, 64)).anomaly_map, whole(_images(2, 64)).anomaly_map)


def test_score_tiles_must_fit_the_pixel_space_and_the_grid() -> None:
    """Tiles need pixel space, at most the image size, and a multiple of twice the UNet's grid."""
    with pytest.raises(ValueError, match="at most the image size"):
        DiffADModel(**TINY, score_tile_size=64)
    with pytest.raises(ValueError, match="multiple of 8"):
        DiffADModel(**TINY, score_tile_size=20)


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
    assert sorted(t.tolist()) == sorted(model.score_timesteps) and torch.equal(t, t_second)
    noise = _implied_noise(model, first, xt, t)
    torch.testing.assert_close(_implied_noise(model, second, xt_second, t), noise, rtol=1e-4, atol=1e-4)
    assert 0.8 < float(noise.std()) < 1.2 and abs(float(noise.mean())) < 0.1
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


def test_training_outputs_shapes(model: DiffADModel) -> None:
    """Train mode crops, noises with ``x_t = q_sample(x_0, t, noise)``, and returns the denoiser's eps, variance
    and quarter-resolution features of ``x_t``; the targets are the frozen features of the crop's place."""
    model.train()
    model.diffusion_space.train_crop_size = 16
    torch.manual_seed(3)
    outputs = model(_images(4))
    channels = sum(model.feature_extractor.out_dims)
    assert outputs.x0.shape == outputs.xt.shape == outputs.noise.shape == (4, 3, 16, 16)
    assert outputs.prediction.features.shape == outputs.target_features.shape == (4, channels, 4, 4)
    assert ((outputs.t >= 0) & (outputs.t < 1000)).all() and len(set(outputs.t.tolist())) > 1
    torch.testing.assert_close(outputs.xt, q_sample(model.schedule, outputs.x0, outputs.t, outputs.noise))
    assert 0.7 < float(outputs.noise.std()) < 1.3
    with torch.no_grad():
        prediction = model.denoiser(outputs.xt, outputs.t)
    for name in ("eps", "v", "features"):
        torch.testing.assert_close(getattr(outputs.prediction, name), getattr(prediction, name), msg=name)
    assert outputs.prediction.eps.requires_grad and not outputs.target_features.requires_grad


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
    model = DiffADModel(**TINY, num_classes=3).eval()
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
        DiffADModel(**TINY, score_timesteps=(20, 1000))


FEATURE = TINY | {"image_size": (64, 64), "layers": ("blocks.2", "blocks.4"), "attention_levels": ()}


def test_feature_space_diffuses_standardized_backbone_features() -> None:
    """Feature space: x0 is the backbone's features at 1/8 resolution; the denoiser predicts their noise only."""
    torch.manual_seed(0)
    model = DiffADModel(space="feature", **FEATURE).train()
    images = _images(2, size=64)
    outputs = model(images)
    assert outputs.x0.shape == (2, 40 + 112, 8, 8)
    torch.testing.assert_close(outputs.x0, model.target_features(images))
    assert outputs.target_features is None and outputs.prediction.features is None
    assert outputs.prediction.eps.shape == outputs.prediction.v.shape == outputs.x0.shape
    assert model.score_noise.shape == (3, 1, 152, 8, 8)


def test_feature_space_maps_are_the_shared_math_on_the_features() -> None:
    """The feature-space cues equal the diffusion module's KL and 1 - cos, computed by hand on the same tensors.

    Unlike the pixel path, the KL is not z-scored per image and the x0 estimate is not clipped to [-1, 1].
    """
    from anomalib_diffad.diffusion import posterior_kl_map, predict_x0_from_eps, q_sample

    torch.manual_seed(0)
    model = DiffADModel(space="feature", **FEATURE, score_timesteps=(50, 300)).eval()
    images = _images(2, size=64, seed=3)
    with torch.no_grad():
        maps = model.component_scores(images)
        x0 = model.target_features(images).repeat(2, 1, 1, 1)
        t = torch.tensor([50, 50, 300, 300])
        noise = model.score_noise[:, 0].repeat_interleave(2, dim=0)
        xt = q_sample(model.schedule, x0, t, noise)
        prediction = model.ema_denoiser(xt, t)
        kl = posterior_kl_map(model.schedule, x0, xt, t, prediction.eps, prediction.v, clip_x0=False)
        estimate = predict_x0_from_eps(model.schedule, xt, t, prediction.eps, clip=False)
        cosine = torch.nn.functional.cosine_similarity(x0, estimate, dim=1)
    kl_map = kl.mean(dim=1).view(2, 2, 8, 8).mean(dim=0)
    distance = (1 - cosine).view(2, 2, 8, 8).mean(dim=0)
    up = torch.nn.functional.interpolate
    expected_kl = up(kl_map[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    expected_feature = up(distance[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps.kl, expected_kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.feature, expected_feature, rtol=1e-4, atol=1e-5)
    assert float(maps.kl.mean()) > 0.0  # not z-scored per image: every KL is positive


def test_feature_space_scoring_is_deterministic() -> None:
    """Two models with the same seed score an image identically, alone or in a batch."""
    images = _images(3, size=64, seed=4)
    scores = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DiffADModel(space="feature", **FEATURE).eval()
        with torch.no_grad():
            scores.append((model(images[:1]), model(images)))
    assert torch.equal(scores[0][0].anomaly_map, scores[1][0].anomaly_map)
    torch.testing.assert_close(scores[0][1].anomaly_map[:1], scores[0][0].anomaly_map, rtol=1e-5, atol=1e-5)


def test_feature_space_refuses_crops_and_unknown_spaces() -> None:
    """Feature space trains on whole images; an unknown space is named in the error."""
    with pytest.raises(ValueError, match="whole images"):
        DiffADModel(space="feature", **FEATURE, train_crop_size=32)
    with pytest.raises(ValueError, match="space must be one of"):
        DiffADModel(space="latent", **FEATURE)


def test_feature_space_is_class_conditional_when_unified() -> None:
    """A unified feature-space model: the category's embedding changes the maps, and scoring needs it."""
    torch.manual_seed(0)
    model = DiffADModel(space="feature", **FEATURE, num_classes=3).eval()
    torch.nn.init.normal_(model.ema_denoiser.unet.class_embedding.weight)
    images = _images(1, size=64, seed=6)
    with torch.no_grad():
        first = model.component_scores(images, torch.tensor([0])).kl
        second = model.component_scores(images, torch.tensor([2])).kl
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="class_labels"):
        model(images)
