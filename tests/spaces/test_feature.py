# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The feature space: its settings, the standardized features as the diffused data, its cues, determinism."""

import pytest
import torch
import yaml

from anomalib_diffad.diffusion import posterior_kl_map, predict_x0_from_eps, q_sample
from anomalib_diffad.spaces import Denoiser, FeatureSpace, space_from_config
from anomalib_diffad.torch_model import DiffADModel
from tests.helpers.presets import TINY_UNET


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


FEATURE = {"image_size": (64, 64), "layers": ("blocks.2", "blocks.4")}


def _model(**arguments: object) -> DiffADModel:
    """A feature-space model with a 2-level UNet without attention, at 64 px (8 x 8 features)."""
    return DiffADModel(FeatureSpace(**TINY_UNET | {"attention_levels": ()}), **FEATURE | arguments)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_out_channels": (16, -32)}, r"block_out_channels must be .* got \[16, -32\]"),
        ({"layers_per_block": 0}, "layers_per_block must be at least 1, got 0"),
        ({"norm_num_groups": 0}, "norm_num_groups=0 must divide every level's channels"),
        ({"attention_levels": (-1,)}, r"attention_levels \[-1\] must lie in \[0, 2\)"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict, message: str) -> None:
    """Each UNet setting is checked when the space is built, with the setting and its value in the message."""
    with pytest.raises(ValueError, match=message):
        FeatureSpace(**TINY_UNET | settings)


def test_settings_round_trip_through_plain_data() -> None:
    """``to_config()`` is plain data that rebuilds the same space; the feature space has no crops or tiles."""
    space = FeatureSpace(block_out_channels=(64, 128, 128), attention_levels=())
    config = space.to_config()
    assert config == {
        "class_path": "anomalib_diffad.spaces.FeatureSpace",
        "init_args": {
            "block_out_channels": [64, 128, 128],
            "layers_per_block": 1,
            "attention_levels": [],
            "attention_head_dim": 32,
            "norm_num_groups": 16,
        },
    }
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert space_from_config(config).to_config() == config
    assert (space.train_crop_size, space.score_tile_size, space.feature_pool) == (None, None, 1)
    with pytest.raises(TypeError, match="train_crop_size"):
        FeatureSpace(train_crop_size=32)


def test_the_space_builds_a_unet_on_the_features_without_a_head() -> None:
    """The denoiser is a UNet whose input and output are the ``feature_channels`` features (eps and v)."""
    denoiser = FeatureSpace(**TINY_UNET).build_denoiser(feature_channels=24, num_classes=3)
    assert isinstance(denoiser, Denoiser)
    assert (denoiser.unet.config.in_channels, denoiser.unet.config.out_channels) == (24, 48)
    assert denoiser.feature_head is None
    assert denoiser.unet.config.num_class_embeds == 3


def test_feature_space_diffuses_standardized_backbone_features() -> None:
    """Feature space: x0 is the backbone's features at 1/8 resolution; the denoiser predicts their noise only."""
    torch.manual_seed(0)
    model = _model().train()
    images = _images(2, size=64)
    outputs = model(images)
    assert outputs.x0.shape == (2, 40 + 112, 8, 8)
    torch.testing.assert_close(outputs.x0, model.target_features(images))
    assert outputs.target_features is None
    assert outputs.prediction.features is None
    assert outputs.prediction.eps.shape == outputs.prediction.v.shape == outputs.x0.shape
    assert model.score_noise.shape == (3, 1, 152, 8, 8)


def test_feature_space_maps_are_the_shared_math_on_the_features() -> None:
    """The feature-space cues equal the diffusion module's KL and 1 - cos, computed by hand on the same tensors.

    Unlike the pixel path, the KL is not z-scored per image and the x0 estimate is not clipped to [-1, 1].
    """
    torch.manual_seed(0)
    model = _model(score_timesteps=(50, 300)).eval()
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
        model = _model().eval()
        with torch.no_grad():
            scores.append((model(images[:1]), model(images)))
    assert torch.equal(scores[0][0].anomaly_map, scores[1][0].anomaly_map)
    torch.testing.assert_close(scores[0][1].anomaly_map[:1], scores[0][0].anomaly_map, rtol=1e-5, atol=1e-5)


def test_feature_space_is_class_conditional_when_unified() -> None:
    """A unified feature-space model: the category's embedding changes the maps, and scoring needs it."""
    torch.manual_seed(0)
    model = _model(num_classes=3).eval()
    torch.nn.init.normal_(model.ema_denoiser.unet.class_embedding.weight)
    images = _images(1, size=64, seed=6)
    with torch.no_grad():
        first = model.component_scores(images, torch.tensor([0])).kl
        second = model.component_scores(images, torch.tensor([2])).kl
    assert not torch.allclose(first, second)
    with pytest.raises(ValueError, match="class_labels"):
        model(images)
