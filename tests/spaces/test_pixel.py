# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The pixel space (the paper's): its settings, training crops on the targets' grid and tiled scoring."""

import pytest
import torch
import yaml

from anomalib_diffad.spaces import Denoiser, PixelSpace, space_from_config
from anomalib_diffad.spaces.unet import aligned_crop_offsets, crop_at, tile_offsets
from tests.helpers.presets import TINY_UNET, tiny_model


def _images(n: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_out_channels": ()}, r"block_out_channels must be one or more positive channel counts, got \[\]"),
        ({"block_out_channels": (16, 0)}, r"block_out_channels must be .* got \[16, 0\]"),
        ({"layers_per_block": 0}, "layers_per_block must be at least 1, got 0"),
        ({"norm_num_groups": 12}, r"norm_num_groups=12 must divide every level's channels \(.*=\[16, 32\]\)"),
        ({"attention_levels": (2,)}, r"attention_levels \[2\] must lie in \[0, 2\)"),
        ({"attention_head_dim": 12}, r"attention_head_dim=12 must divide the channels \[32\] of the attention levels"),
        ({"train_crop_size": 30}, "train_crop_size=30 must be a positive multiple of 4"),
        ({"train_crop_size": 0}, "train_crop_size=0 must be a positive multiple of 4"),
        ({"score_tile_size": 20}, "score_tile_size=20 must be a positive multiple of 8"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict, message: str) -> None:
    """Each UNet setting, the crop side (on the 4-pixel target grid) and the tile side (twice the UNet grid) is
    checked when the space is built, with the setting and its value in the message."""
    with pytest.raises(ValueError, match=message):
        PixelSpace(**TINY_UNET | settings)


def test_the_crop_grid_follows_the_unet_depth() -> None:
    """Crops lie on the coarser of the targets' 4-pixel grid and the UNet's downsampling (8 px for 4 levels)."""
    assert PixelSpace(**TINY_UNET).crop_grid == 4
    assert PixelSpace(train_crop_size=64).crop_grid == 8
    with pytest.raises(ValueError, match="train_crop_size=36 must be a positive multiple of 8"):
        PixelSpace(train_crop_size=36)


def test_image_size_and_pass_normalization_are_checked_with_the_model() -> None:
    """Tiles larger than the image, and pass normalization of the per-image z-scored KL, are refused."""
    with pytest.raises(ValueError, match=r"score_tile_size=64 needs at most the image size \(32, 32\)"):
        tiny_model({"score_tile_size": 64})
    for fusion in ("scaled_mean", "gaussian"):
        with pytest.raises(ValueError, match=f"timestep_fusion='{fusion}' needs positive cues"):
            tiny_model(timestep_fusion=fusion)


def test_settings_round_trip_through_plain_data() -> None:
    """``to_config()`` is plain data (YAML-safe, lists) that rebuilds the same space; the defaults are the
    CPU preset's UNet, whole images and no tiles."""
    space = PixelSpace(block_out_channels=(16, 32, 64), layers_per_block=2, attention_levels=(2,),
                       attention_head_dim=16, norm_num_groups=8, train_crop_size=32, score_tile_size=64)  # fmt: skip
    config = space.to_config()
    assert config == {
        "class_path": "anomalib_diffad.spaces.PixelSpace",
        "init_args": {
            "block_out_channels": [16, 32, 64],
            "layers_per_block": 2,
            "attention_levels": [2],
            "attention_head_dim": 16,
            "norm_num_groups": 8,
            "train_crop_size": 32,
            "score_tile_size": 64,
        },
    }
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert space_from_config(config).to_config() == config
    assert PixelSpace().init_args() == {
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 1,
        "attention_levels": [3],
        "attention_head_dim": 32,
        "norm_num_groups": 16,
        "train_crop_size": None,
        "score_tile_size": None,
    }


def test_the_space_builds_a_unet_with_a_feature_head() -> None:
    """The denoiser is a UNet on RGB with the space's levels and a head predicting ``feature_channels``."""
    denoiser = PixelSpace(**TINY_UNET).build_denoiser(feature_channels=24, num_classes=None)
    assert isinstance(denoiser, Denoiser)
    assert denoiser.unet.config.block_out_channels == (16, 32)
    assert denoiser.unet.config.in_channels == 3
    assert denoiser.feature_head[-1].out_channels == 24
    assert PixelSpace().data_shape(24, (64, 48)) == (3, 64, 48)


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
    model = tiny_model({"train_crop_size": 32}, image_size=(64, 64), layers=("blocks.2", "blocks.4"))
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
    tiled = tiny_model({"score_tile_size": 32}, image_size=(64, 64)).eval()
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
    whole = tiny_model(image_size=(64, 64)).eval()
    whole.load_state_dict(tiled.state_dict())
    one_tile = tiny_model({"score_tile_size": 64}, image_size=(64, 64)).eval()
    one_tile.load_state_dict(tiled.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(one_tile(_images(2, 64)).anomaly_map, whole(_images(2, 64)).anomaly_map)
        assert not torch.allclose(tiled(_images(2, 64)).anomaly_map, whole(_images(2, 64)).anomaly_map)
