# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0

"""Value tests of the DiffAD map fusion in :mod:`anomalib_diffad.anomaly_map`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomalib_diffad.anomaly_map import AnomalyMapGenerator, feature_error_map, top_k_mean
from anomalib_diffad.metrics import GroupedMoments


# --------------------------------------------------------------------------------------------------
# top_k_mean
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 64])
def test_top_k_mean_equals_sorted_top_k_mean(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    maps = torch.randn(4, 1, 8, 8, generator=gen)
    got = top_k_mean(maps, k)
    assert got.shape == (4,)
    for i in range(4):
        values = sorted(maps[i].flatten().tolist(), reverse=True)[:k]
        assert got[i].item() == pytest.approx(sum(values) / k, rel=1e-5, abs=1e-6)


def test_top_k_mean_known_values() -> None:
    maps = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]]], [[[0.0, 0.0], [0.0, 8.0]]]])
    assert top_k_mean(maps, 1).tolist() == [5.0, 8.0]
    assert top_k_mean(maps, 2).tolist() == [4.0, 4.0]
    assert top_k_mean(maps, 3).tolist() == pytest.approx([3.0, 8.0 / 3.0])


def test_top_k_mean_k_larger_than_pixels_is_full_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 1, 4, 4, generator=gen)
    got = top_k_mean(maps, 64)
    assert torch.allclose(got, maps.flatten(1).mean(dim=1), atol=1e-6)
    assert torch.allclose(top_k_mean(maps, 16), got)


def test_top_k_mean_accepts_three_dimensional_maps() -> None:
    maps = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    assert top_k_mean(maps, 2).tolist() == [7.5, 16.5]


# --------------------------------------------------------------------------------------------------
# feature_error_map
# --------------------------------------------------------------------------------------------------
def _bilinear_reference(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), written out in numpy."""
    in_h, in_w = image.shape

    def coords(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        src = np.clip(src, 0.0, None)
        i0 = np.minimum(np.floor(src).astype(int), in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        return i0, i1, src - i0

    y0, y1, wy = coords(out_h, in_h)
    x0, x1, wx = coords(out_w, in_w)
    top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
    bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def test_feature_error_map_same_size_is_channel_mean_squared_error() -> None:
    gen = torch.Generator().manual_seed(1)
    predicted = torch.randn(2, 5, 6, 7, generator=gen)
    target = torch.randn(2, 5, 6, 7, generator=gen)
    got = feature_error_map(predicted, target, (6, 7))
    assert got.shape == (2, 1, 6, 7)
    expected = np.mean((predicted.double().numpy() - target.double().numpy()) ** 2, axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_feature_error_map_is_mean_not_sum_over_channels() -> None:
    predicted = torch.zeros(1, 4, 2, 2)
    target = torch.zeros(1, 4, 2, 2)
    target[:, 0] = 2.0  # squared error 4 in one of four channels -> mean 1
    got = feature_error_map(predicted, target, (2, 2))
    assert torch.allclose(got, torch.ones(1, 1, 2, 2))


def test_feature_error_map_constant_error_stays_constant() -> None:
    predicted = torch.full((2, 3, 4, 4), 1.5)
    target = torch.full((2, 3, 4, 4), 0.5)
    got = feature_error_map(predicted, target, (32, 24))
    assert got.shape == (2, 1, 32, 24)
    assert torch.allclose(got, torch.ones_like(got), atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (12, 20), (5, 9)])
def test_feature_error_map_bilinear_upsampling(size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(2)
    predicted = torch.randn(2, 3, 4, 5, generator=gen)
    target = torch.randn(2, 3, 4, 5, generator=gen)
    got = feature_error_map(predicted, target, size)
    assert got.shape == (2, 1, *size)
    error = np.mean((predicted.double().numpy() - target.double().numpy()) ** 2, axis=1)
    for i in range(2):
        np.testing.assert_allclose(got[i, 0].numpy(), _bilinear_reference(error[i], *size), rtol=1e-5, atol=1e-6)
    # bilinear interpolation never leaves the range of the input
    assert got.min() >= error.min() - 1e-6
    assert got.max() <= error.max() + 1e-6


def test_feature_error_map_zero_for_equal_features() -> None:
    x = torch.randn(1, 8, 3, 3)
    assert torch.equal(feature_error_map(x, x.clone(), (6, 6)), torch.zeros(1, 1, 6, 6))


# --------------------------------------------------------------------------------------------------
# AnomalyMapGenerator
# --------------------------------------------------------------------------------------------------
def _maps(seed: int, shape: tuple[int, ...] = (3, 1, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    kl = torch.rand(shape, generator=gen) * 4 + 2  # mean ~4, sd ~1.15
    feature = torch.randn(shape, generator=gen) * 0.01 + 0.05
    return kl, feature


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_generator_default_stats_is_plain_weighted_sum(alpha: float) -> None:
    kl, feature = _maps(0)
    generator = AnomalyMapGenerator(alpha=alpha)
    got = generator(kl, feature)
    assert got.shape == kl.shape
    expected = alpha * kl.double() + (1 - alpha) * feature.double()
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-7)


def test_generator_defaults() -> None:
    generator = AnomalyMapGenerator()
    assert generator.alpha == 0.5
    assert generator.sigma == 0.0
    assert generator.kl_mean.item() == 0.0
    assert generator.kl_std.item() == 1.0
    assert generator.feature_mean.item() == 0.0
    assert generator.feature_std.item() == 1.0


def test_generator_calibrate_sets_statistics() -> None:
    kl, feature = _maps(1)
    generator = AnomalyMapGenerator(alpha=0.5)
    generator.calibrate(kl, feature)
    kl64, feature64 = kl.double().numpy(), feature.double().numpy()
    assert generator.kl_mean.item() == pytest.approx(kl64.mean(), rel=1e-5)
    assert generator.kl_std.item() == pytest.approx(kl64.std(ddof=0), rel=1e-5)
    assert generator.feature_mean.item() == pytest.approx(feature64.mean(), rel=1e-5)
    assert generator.feature_std.item() == pytest.approx(feature64.std(ddof=0), rel=1e-5)


def test_generator_calibrated_components_are_standardized() -> None:
    kl, feature = _maps(2)
    kl_only, feature_only = AnomalyMapGenerator(alpha=1.0), AnomalyMapGenerator(alpha=0.0)
    kl_only.calibrate(kl, feature)
    feature_only.calibrate(kl, feature)
    for component in (kl_only(kl, feature), feature_only(kl, feature)):
        assert component.double().mean().item() == pytest.approx(0.0, abs=1e-5)
        assert component.double().std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)

    # the fused map is the alpha-weighted sum of the two z-scored maps (numpy float64 reference)
    generator = AnomalyMapGenerator(alpha=0.3)
    generator.calibrate(kl, feature)
    kl64, feature64 = kl.double().numpy(), feature.double().numpy()
    z_kl = (kl64 - kl64.mean()) / kl64.std(ddof=0)
    z_feature = (feature64 - feature64.mean()) / feature64.std(ddof=0)
    np.testing.assert_allclose(generator(kl, feature).numpy(), 0.3 * z_kl + 0.7 * z_feature, rtol=1e-4, atol=1e-5)


def test_generator_calibration_applies_to_new_maps() -> None:
    kl, feature = _maps(3)
    generator = AnomalyMapGenerator(alpha=0.5)
    generator.calibrate(kl, feature)
    # a map one calibration-sd above the mean in both cues scores exactly 1 everywhere
    kl_new = torch.full((1, 1, 4, 4), generator.kl_mean.item() + generator.kl_std.item())
    feature_new = torch.full((1, 1, 4, 4), generator.feature_mean.item() + generator.feature_std.item())
    assert torch.allclose(generator(kl_new, feature_new), torch.ones(1, 1, 4, 4), atol=1e-5)


def test_generator_calibrate_constant_maps_is_finite() -> None:
    generator = AnomalyMapGenerator()
    generator.calibrate(torch.full((2, 1, 4, 4), 3.0), torch.full((2, 1, 4, 4), 0.25))
    assert generator.kl_std.item() > 0
    assert generator.feature_std.item() > 0
    out = generator(torch.full((1, 1, 4, 4), 3.0), torch.full((1, 1, 4, 4), 0.25))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.zeros_like(out), atol=1e-3)


def test_generator_calibrate_does_not_track_gradients() -> None:
    kl = torch.rand(2, 1, 4, 4, requires_grad=True)
    feature = torch.rand(2, 1, 4, 4, requires_grad=True)
    generator = AnomalyMapGenerator()
    generator.calibrate(kl * 2, feature * 3)
    assert not generator.kl_mean.requires_grad
    assert generator.kl_mean.grad_fn is None


@pytest.mark.parametrize("alpha", [-0.1, 1.1, 2.0, float("nan")])
def test_generator_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        AnomalyMapGenerator(alpha=alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_generator_accepts_alpha_bounds(alpha: float) -> None:
    assert AnomalyMapGenerator(alpha=alpha).alpha == alpha


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_generator_smoothing_preserves_constant_map(sigma: float) -> None:
    generator = AnomalyMapGenerator(alpha=0.5, sigma=sigma)
    out = generator(torch.full((2, 1, 48, 48), 3.0), torch.full((2, 1, 48, 48), 1.0))
    assert out.shape == (2, 1, 48, 48)
    assert torch.allclose(out, torch.full_like(out, 2.0), atol=1e-5)


def test_generator_smoothing_spreads_an_impulse() -> None:
    kl = torch.zeros(1, 1, 33, 33)
    kl[0, 0, 16, 16] = 10.0
    feature = torch.zeros_like(kl)
    sharp = AnomalyMapGenerator(alpha=1.0, sigma=0.0)(kl, feature)
    smooth = AnomalyMapGenerator(alpha=1.0, sigma=2.0)(kl, feature)
    assert torch.equal(sharp, kl)  # sigma = 0 disables smoothing
    assert smooth.max() < sharp.max()
    assert smooth.argmax() == sharp.argmax()  # the peak stays in place
    assert smooth[0, 0, 16, 18] > 0  # and mass spreads to the neighbours
    assert smooth.sum().item() == pytest.approx(10.0, rel=1e-4)  # normalized kernel, far from the border
    # the peak of a normalized 2-D Gaussian (sigma = 2) is close to 1 / (2 pi sigma^2), times the impulse
    assert smooth.max().item() == pytest.approx(10.0 / (2 * math.pi * 4.0), rel=2e-2)
    # symmetric blur
    assert torch.allclose(smooth, smooth.flip(-1), atol=1e-6)
    assert torch.allclose(smooth, smooth.transpose(-1, -2), atol=1e-6)


def test_generator_buffers_in_state_dict_and_round_trip() -> None:
    kl, feature = _maps(4)
    generator = AnomalyMapGenerator(alpha=0.4)
    generator.calibrate(kl, feature)
    state = generator.state_dict()
    assert {"kl_mean", "kl_std", "feature_mean", "feature_std"} <= set(state)
    assert state["kl_mean"].item() == pytest.approx(kl.double().mean().item(), rel=1e-5)

    restored = AnomalyMapGenerator(alpha=0.4)
    restored.load_state_dict(state)
    assert torch.equal(restored(kl, feature), generator(kl, feature))
    assert not torch.allclose(AnomalyMapGenerator(alpha=0.4)(kl, feature), generator(kl, feature))
    assert list(generator.parameters()) == []


def test_smoothing_works_on_maps_smaller_than_the_kernel() -> None:
    """Replicate padding lets a wide kernel smooth a small map; a constant map stays constant."""
    generator = AnomalyMapGenerator(alpha=0.5, sigma=4.0)
    constant = torch.full((1, 1, 12, 12), 3.0)
    torch.testing.assert_close(generator(constant, constant), torch.full((1, 1, 12, 12), 3.0))


# --------------------------------------------------------------------------------------------------
# normal map (subtract_normal_map)
# --------------------------------------------------------------------------------------------------
def test_normal_map_is_off_by_default_and_not_in_the_state_dict() -> None:
    """Without ``normal_map_size`` nothing is subtracted and checkpoints keep their keys."""
    kl, feature = _maps(5)
    generator = AnomalyMapGenerator(alpha=0.5)
    assert not generator.subtracts_normal_map
    assert "normal_map" not in generator.state_dict()
    generator.calibrate(kl, feature)
    torch.testing.assert_close(generator(kl, feature), generator.fuse(kl, feature))


@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_normal_map_is_the_mean_fused_map_of_the_calibration_images(sigma: float) -> None:
    """After calibration each map is its fused map minus the calibration images' mean fused map (float64
    reference), so the calibration images' maps average to 0 at every pixel."""
    kl, feature = _maps(6, (5, 1, 12, 12))
    kl[:, :, :, :3] += 5.0  # a band that every normal image scores high, as image borders do
    generator = AnomalyMapGenerator(alpha=0.3, sigma=sigma, normal_map_size=(12, 12))
    generator.calibrate(kl, feature)
    plain = AnomalyMapGenerator(alpha=0.3, sigma=sigma)
    plain.load_state_dict({key: value for key, value in generator.state_dict().items() if key != "normal_map"})
    fused = plain(kl, feature).double()
    torch.testing.assert_close(generator.normal_map[0].double(), fused.mean(0), rtol=1e-5, atol=1e-5)
    out = generator(kl, feature).double()
    torch.testing.assert_close(out, fused - fused.mean(0, keepdim=True), rtol=1e-5, atol=1e-5)
    assert out.mean(0).abs().max() < 1e-5
    assert fused[..., :3].mean() - fused[..., 6:].mean() > 0.4  # the band stood out before
    assert abs(out[..., :3].mean() - out[..., 6:].mean()) < 1e-5


def test_calibration_sums_of_batches_add_up() -> None:
    """Calibrating on batches (or ranks) equals calibrating on all images at once: statistics and normal map."""
    kl, feature = _maps(7, (6, 1, 8, 8))
    at_once = AnomalyMapGenerator(alpha=0.5, sigma=1.0, normal_map_size=(8, 8))
    at_once.calibrate(kl, feature)
    batched = AnomalyMapGenerator(alpha=0.5, sigma=1.0, normal_map_size=(8, 8))
    batched.calibrate_batches([(kl[:2], feature[:2], None), (kl[2:], feature[2:], None)])
    for name, buffer in at_once.state_dict().items():
        torch.testing.assert_close(batched.state_dict()[name], buffer, rtol=1e-6, atol=1e-6, msg=name)
    assert at_once.normal_map.abs().max() > 0.1
    torch.testing.assert_close(at_once.kl_mean.double(), kl.double().mean())


def test_grouped_moments_count_mean_and_variance_per_group() -> None:
    """Each group's count, mean and population variance, over samples and pooled pixels; per-sample values
    (no pooled dimensions) are moments per element; an empty group stays zero; a class label picks the group."""
    values = torch.tensor([[1.0, 3.0], [10.0, 14.0], [5.0, 7.0]])
    moments = GroupedMoments(3)
    moments.update(values[:2].view(2, 1, 2), torch.tensor([0, 2]))
    moments.update(values[2:], torch.tensor([0]))
    expected = torch.tensor([[4.0, 4.0, 5.0], [0.0, 0.0, 0.0], [2.0, 12.0, 4.0]], dtype=torch.float64)
    assert torch.equal(moments.compute(), expected)
    per_element = GroupedMoments(1, (2,))
    per_element.update(values)
    assert torch.equal(per_element.compute()[0, 0], torch.tensor([3.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(per_element.compute()[0, 1], values.double().mean(0))
    torch.testing.assert_close(per_element.compute()[0, 2], values.double().var(0, unbiased=False))


def test_normal_map_is_resized_to_the_map() -> None:
    """A normal map calibrated at 8 x 8 is bilinearly resized to a 16 x 16 map before it is subtracted."""
    generator = AnomalyMapGenerator(alpha=1.0, normal_map_size=(8, 8))
    pattern = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    generator.normal_map.copy_(pattern)
    kl = torch.full((2, 1, 16, 16), 100.0)
    expected = kl - torch.nn.functional.interpolate(pattern, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(generator(kl, torch.zeros_like(kl)), expected)
    torch.testing.assert_close(generator(pattern, torch.zeros_like(pattern)), torch.zeros(1, 1, 8, 8))


def test_normal_map_per_class_rows() -> None:
    """A unified generator keeps one normal map per class; an image gets its own class's, an unseen class 0."""
    generator = AnomalyMapGenerator(alpha=1.0, num_classes=3, normal_map_size=(2, 2))
    labels = torch.tensor([0, 0, 2])
    kl = torch.stack([torch.tensor([[0.0, 2.0], [0.0, 0.0]]), torch.tensor([[2.0, 4.0], [0.0, 0.0]]),
                      torch.tensor([[0.0, 0.0], [0.0, 6.0]])])[:, None]
    generator.calibrate(kl, torch.zeros_like(kl), labels)
    assert generator.normal_map.shape == (3, 1, 2, 2)
    assert generator.normal_map[1].abs().max() == 0  # class 1 had no images
    mean0, std0 = kl[:2].mean(), kl[:2].std(unbiased=False)
    torch.testing.assert_close(generator.normal_map[0, 0], (kl[:2, 0].mean(0) - mean0) / std0)
    out = generator(kl, torch.zeros_like(kl), labels)
    torch.testing.assert_close(out[:2].mean(0), torch.zeros(1, 2, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], torch.zeros(1, 2, 2), rtol=0, atol=1e-6)  # its class's only image
