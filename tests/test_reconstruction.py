# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Gradient denoising (Algorithm 1): the equations, the loop, the DiffAD API, the panels and the callback."""

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMapGenerator
from PIL import Image

from anomalib_diffad import DiffAD, DiffADModel
from anomalib_diffad.diffusion import DiffusionSchedule, q_posterior_mean
from anomalib_diffad.reconstruction import (
    GradientDenoising,
    ReconstructionPrior,
    fit_reconstruction_prior,
    gradient_denoise,
    mahalanobis_loss,
    normalize_per_image,
    prior_gradient,
    reconstruct,
    squared_mahalanobis,
    strided_posterior_mean,
    unit_variance_step,
)
from anomalib_diffad.spaces import PixelSpace
from anomalib_diffad.visualization import ReconstructionPanels, diffad_maps, write_reconstruction_panel
from diffad_tools.textures import DEFECT_TYPES, make_defect_sample
from tests.helpers.presets import TINY_MODEL_ARGS

# Integration threshold: mean |reconstruction - input| inside the defect masks over the mean outside, pooled
# over one sample of each of the four defect types. Observed 2.0-2.3 with the fixture below (25 epochs of the
# tiny preset on 8 images); the per-defect minimum (the thin scratch) was 1.6.
POOLED_CHANGE_RATIO = 1.5
PER_DEFECT_CHANGE_RATIO = 1.2
RANDOM_MODEL_ARGS = {
    "space": PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8),
    "image_size": (32, 32),
    "layers": ("blocks.0", "blocks.1", "blocks.2"),
    "score_timesteps": (20,),
}


def _random_gaussian(channels: int, positions: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.randn(channels, positions, generator=generator, dtype=torch.float64)
    factors = torch.randn(positions, channels, channels, generator=generator, dtype=torch.float64)
    covariance = factors @ factors.transpose(1, 2) + 0.5 * torch.eye(channels, dtype=torch.float64)
    return mean, covariance


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Run this module's CPU-heavy loops on one thread (many small ops; extra threads only add contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- #
# Equations
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("step_size", [0.02, 0.3, 0.9])
def test_unit_variance_step_keeps_unit_variance(step_size: float) -> None:
    """``sqrt(1 - s^2) x + s g`` of independent unit-variance x and g has unit variance."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    g = torch.randn(1_000_000, generator=generator, dtype=torch.float64)
    assert unit_variance_step(x, g, step_size).var().item() == pytest.approx(1.0, abs=5e-3)
    ones = torch.ones(3)
    expected = math.sqrt(1 - step_size**2) + step_size
    torch.testing.assert_close(unit_variance_step(ones, ones, step_size), torch.full((3,), expected))


def test_squared_mahalanobis_matches_closed_form() -> None:
    """Per-position ``(f - mu)^T Sigma^-1 (f - mu)`` equals a solve-based closed form and PaDiM's distance^2."""
    generator = torch.Generator().manual_seed(1)
    batch, channels, height, width = 2, 5, 3, 4
    mean, covariance = _random_gaussian(channels, height * width, generator)
    embedding = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    distance = squared_mahalanobis(embedding, mean, torch.linalg.inv(covariance))
    assert distance.shape == (batch, 1, height, width)
    vectors = embedding.reshape(batch, channels, -1)
    for n in range(batch):
        for p in range(height * width):
            delta = vectors[n, :, p] - mean[:, p]
            expected = delta @ torch.linalg.solve(covariance[p], delta)
            assert distance[n, 0].reshape(-1)[p].item() == pytest.approx(expected.item(), rel=1e-9)
    padim = PadimMapGenerator.compute_distance(embedding, [mean, torch.linalg.inv(covariance)]) ** 2
    torch.testing.assert_close(distance, padim)
    identity = torch.eye(channels, dtype=torch.float64).expand(height * width, -1, -1)
    euclidean = ((vectors - mean) ** 2).sum(1).reshape(batch, 1, height, width)
    torch.testing.assert_close(squared_mahalanobis(embedding, mean, identity), euclidean)


def test_mahalanobis_loss_squared_and_unsquared() -> None:
    """The loss averages d^2 (paper) or d (official code) over positions, per image."""
    squared = torch.tensor([[[[4.0, 16.0]]], [[[1.0, 9.0]]]])
    torch.testing.assert_close(mahalanobis_loss(squared), torch.tensor([10.0, 5.0]))
    torch.testing.assert_close(mahalanobis_loss(squared, squared=False), torch.tensor([3.0, 2.0]))


def test_normalize_per_image_gives_unit_std_and_is_scale_free() -> None:
    """Each image's gradient is divided by its own standard deviation."""
    generator = torch.Generator().manual_seed(2)
    grad = torch.randn(3, 3, 8, 8, generator=generator) * torch.tensor([1e-6, 1.0, 1e3]).view(3, 1, 1, 1)
    normalized = normalize_per_image(grad)
    torch.testing.assert_close(normalized.flatten(1).std(dim=1), torch.ones(3))
    torch.testing.assert_close(normalize_per_image(grad * 7.0), normalized)


def test_strided_posterior_mean_generalizes_the_one_step_posterior() -> None:
    """Stride 1 is DDPM's posterior mean; a stride past t returns x0; the weights sum like the clean signal."""
    schedule = DiffusionSchedule(1000)
    generator = torch.Generator().manual_seed(3)
    x0, xt = torch.randn(2, 4, 3, 5, 5, generator=generator)
    t = torch.tensor([1, 32, 400, 999])
    torch.testing.assert_close(strided_posterior_mean(schedule, x0, xt, t, 1), q_posterior_mean(schedule, x0, xt, t))
    torch.testing.assert_close(strided_posterior_mean(schedule, x0, xt, t, 1000), x0)
    # A noise-free x_t = sqrt(abar_t) x0 maps to sqrt(abar_s) x0, the noise-free x_s.
    abar = schedule.alphas_cumprod
    clean = abar[t].sqrt().view(-1, 1, 1, 1) * x0
    expected = abar[t - 4].sqrt().view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(strided_posterior_mean(schedule, x0, clean, t.clamp(min=4), 4)[1:], expected[1:])


def test_config_rejects_impossible_settings() -> None:
    """Step sizes outside (0, 1) and zero counts are refused."""
    with pytest.raises(ValueError, match="step_size"):
        GradientDenoising(step_size=1.0)
    with pytest.raises(ValueError, match="denoise_every"):
        GradientDenoising(denoise_every=0)


# --------------------------------------------------------------------------- #
# Prior and loop on random-weight networks
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def random_setup() -> dict:
    """A random-weight tiny DiffAD torch model and a prior fitted on noise images (32 px)."""
    torch.manual_seed(0)
    model = DiffADModel(**RANDOM_MODEL_ARGS).eval()
    prior = ReconstructionPrior(layers=("blocks.1", "blocks.2"), n_features=12)
    prior.copy_backbone(model.feature_extractor)
    prior.fit((torch.rand(6, 3, 32, 32) * 2 - 1).split(3))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    return {"model": model, "prior": prior, "images": images}


def test_prior_gradient_descends_the_loss(random_setup: dict) -> None:
    """A small step along the normalised negative gradient lowers the Mahalanobis loss of every image."""
    prior, images = random_setup["prior"], random_setup["images"]
    g = prior_gradient(prior, images)
    torch.testing.assert_close(g.flatten(1).std(dim=1), torch.ones(2))
    with torch.no_grad():
        before = mahalanobis_loss(prior.distance(images))
        after = mahalanobis_loss(prior.distance(images + 1e-3 * g))
    assert (after < before).all()


def test_prior_state_dict_round_trip(random_setup: dict) -> None:
    """A saved prior reloads into a fresh one (dynamic Gaussian buffers) and gives the same distances."""
    prior, images = random_setup["prior"], random_setup["images"]
    fresh = ReconstructionPrior(layers=("blocks.1", "blocks.2"), n_features=12)
    assert not fresh.fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        fresh.distance(images)
    fresh.load_state_dict(prior.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.distance(images), prior.distance(images))


def test_gradient_denoise_steps_batching_and_inference_mode(random_setup: dict) -> None:
    """Steps hold the input, every capture and the result; a batch equals its images run one by one; the loop
    runs under ``inference_mode`` (Lightning's predict)."""
    model, prior, images = random_setup["model"], random_setup["prior"], random_setup["images"]
    config = GradientDenoising(num_denoise_steps=5, denoise_every=2, capture_every=2, step_size=0.1)
    with torch.inference_mode():
        output = gradient_denoise(images, prior, model.ema_denoiser, model.schedule, config, return_steps=True)
    assert output.steps.shape == (4, 2, 3, 32, 32)  # input, after denoising steps 2 and 4, final (5)
    torch.testing.assert_close(output.steps[0], images)
    torch.testing.assert_close(output.steps[-1], output.reconstruction)
    assert not torch.equal(output.reconstruction, images)
    single = gradient_denoise(images[1:], prior, model.ema_denoiser, model.schedule, config).reconstruction
    torch.testing.assert_close(single, output.reconstruction[1:], rtol=1e-4, atol=1e-4)


def test_fit_reconstruction_prior_pre_processes_and_keeps_the_prior() -> None:
    """On a DiffAD, the prior is fitted on the pre-processed images with the model's own backbone weights (the
    same Gaussian as fitting a prior by hand), kept on the model, and an empty dataloader is refused."""
    torch.manual_seed(0)
    model = DiffAD(**RANDOM_MODEL_ARGS, pretrained_weights=None)
    options = {"layers": ("blocks.1", "blocks.2"), "n_features": 12}
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="No images"):
        fit_reconstruction_prior(model, [], **options)
    raw = torch.rand(6, 3, 40, 40)
    prior = fit_reconstruction_prior(model, [(raw[:3], None), raw[3:]], **options)
    expected = ReconstructionPrior(**options)
    expected.copy_backbone(model.model.feature_extractor)
    expected.fit(model.pre_processor.transform(images) for images in raw.split(3))
    for name in ("mean", "inv_covariance"):
        value = getattr(prior.padim.gaussian, name)
        torch.testing.assert_close(value, getattr(expected.padim.gaussian, name), rtol=0, atol=0)
    assert model.reconstruction_priors == {None: prior}
    assert set(model.state_dict()) == keys


def test_fit_reconstruction_prior_per_category_of_an_unnamed_unified_model() -> None:
    """A unified DiffAD without category names gets one prior per class index, each fitted on its own images
    only; a category without images and a batch without categories are refused."""
    torch.manual_seed(0)
    model = DiffAD(**RANDOM_MODEL_ARGS, num_classes=3, pretrained_weights=None)
    options = {"layers": ("blocks.1", "blocks.2"), "n_features": 12}
    raw = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    batches = [
        SimpleNamespace(image=images, category=category)
        for images, category in zip(raw.split(3), labels.split(3), strict=True)
    ]
    with pytest.raises(ValueError, match="Category '2': no training images"):
        fit_reconstruction_prior(model, batches, **options)
    with pytest.raises(ValueError, match="need batches with a category"):
        fit_reconstruction_prior(model, [raw], categories=[0], **options)
    priors = fit_reconstruction_prior(model, batches, categories=[1, 0], **options)
    assert sorted(priors) == [0, 1]
    for index, prior in priors.items():
        expected = ReconstructionPrior(**options)
        expected.copy_backbone(model.model.feature_extractor)
        expected.fit([model.pre_processor.transform(raw[labels == index])])
        torch.testing.assert_close(prior.padim.gaussian.mean, expected.padim.gaussian.mean, rtol=1e-5, atol=1e-5)


def _tensor_attributes(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor a module tree holds: parameters, buffers, and plain tensor attributes (which ``.to`` skips)."""
    for name, submodule in module.named_modules():
        for key, value in vars(submodule).items():
            if torch.is_tensor(value):
                yield f"{name}.{key}", value
        for key, value in [*submodule.named_parameters(recurse=False), *submodule.named_buffers(recurse=False)]:
            yield f"{name}.{key}", value


def test_every_tensor_follows_the_modules_device(random_setup: dict) -> None:
    """The CPU side of the CUDA test below: after ``.to(device)`` every tensor the model, its schedule and the
    prior hold is on that device (``meta`` here), so none is left behind on the CPU."""
    model = DiffADModel(**RANDOM_MODEL_ARGS)
    prior = ReconstructionPrior(layers=("blocks.1", "blocks.2"), n_features=12)
    prior.load_state_dict(random_setup["prior"].state_dict())
    placed = {name: tensor.device.type for module in (model.to("meta"), prior.to("meta"))
              for name, tensor in _tensor_attributes(module)}  # fmt: skip
    assert placed
    assert {name: device for name, device in placed.items() if device != "meta"} == {}


def test_gradient_denoise_creates_its_tensors_on_the_images_device(random_setup: dict) -> None:
    """With ``meta`` as the default device, the loop on CPU inputs still runs and gives the same result: every
    tensor it creates follows the images' device, not the default one (what the CUDA test checks on a GPU)."""
    model, prior, images = random_setup["model"], random_setup["prior"], random_setup["images"]
    config = GradientDenoising(num_denoise_steps=2, denoise_every=2)
    reference = gradient_denoise(images, prior, model.ema_denoiser, model.schedule, config).reconstruction
    with torch.device("meta"):
        moved = gradient_denoise(images, prior, model.ema_denoiser, model.schedule, config).reconstruction
    torch.testing.assert_close(moved, reference, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradient_denoise_on_gpu_matches_cpu(random_setup: dict) -> None:
    """The loop is device-agnostic: on CUDA it reproduces the CPU result."""
    model, prior, images = random_setup["model"], random_setup["prior"], random_setup["images"]
    config = GradientDenoising(num_denoise_steps=2, denoise_every=2)
    cpu = gradient_denoise(images, prior, model.ema_denoiser, model.schedule, config).reconstruction
    model.cuda()
    try:
        gpu = gradient_denoise(images.cuda(), prior, model.ema_denoiser, model.schedule, config).reconstruction
    finally:
        model.cpu()
        prior.cpu()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- #
# Integration: a fitted tiny DiffAD on the synthetic textures
# --------------------------------------------------------------------------- #
def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="brick", train_batch_size=4, eval_batch_size=4, num_workers=0)


@pytest.fixture(scope="module")
def fitted(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny preset trained 25 epochs (50 steps) on 8 brick images, and its reconstruction prior."""
    torch.manual_seed(0)
    root_dir = tmp_path_factory.mktemp("reconstruction")
    model = DiffAD(**(TINY_MODEL_ARGS | {"lr": 2e-3}))
    engine = Engine(
        logger=False,
        default_root_dir=root_dir,
        max_epochs=25,
        check_val_every_n_epoch=25,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    datamodule = _datamodule(dataset_root)
    engine.fit(model=model, datamodule=datamodule)
    model.eval()
    prior = fit_reconstruction_prior(model, datamodule.train_dataloader(), n_features=60)
    return {"model": model, "prior": prior, "engine": engine, "root_dir": root_dir}


def _defect_batch() -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = [], []
    for defect in DEFECT_TYPES:
        _, image, mask = make_defect_sample("brick", defect, image_size=64, seed=11, index=0)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0)
        masks.append(torch.from_numpy(mask > 0))
    return torch.stack(images), torch.stack(masks)


def test_reconstruction_changes_defects_more_than_normal_pixels(fitted: dict) -> None:
    """Algorithm 1 moves the pixels inside synthetic defects much more than the normal pixels."""
    images, masks = _defect_batch()
    model, prior = fitted["model"], fitted["prior"]
    reconstruction = reconstruct(model, images, prior=prior, config=GradientDenoising(num_denoise_steps=10))
    change = (reconstruction - images).abs().mean(dim=1)
    ratios = [(change[i][masks[i]].mean() / change[i][~masks[i]].mean()).item() for i in range(len(images))]
    pooled = (change[masks].mean() / change[~masks].mean()).item()
    per_defect = {name: round(ratio, 2) for name, ratio in zip(DEFECT_TYPES, ratios, strict=True)}
    print(f"change ratio inside/outside: pooled {pooled:.2f}, per defect {per_defect}")  # noqa: T201
    assert pooled > POOLED_CHANGE_RATIO
    assert min(ratios) > PER_DEFECT_CHANGE_RATIO


def test_reconstruct_api_and_panel(fitted: dict, tmp_path: Path) -> None:
    """``reconstruct`` returns steps on request; the panel shows maps, mask and the strip of steps."""
    images, masks = _defect_batch()
    model, prior = fitted["model"], fitted["prior"]
    config = GradientDenoising(num_denoise_steps=2, denoise_every=1, capture_every=1)
    reconstruction, steps = reconstruct(model, images[:1], return_steps=True, prior=prior, config=config)
    assert reconstruction.shape == (1, 3, 64, 64)
    assert steps.shape == (3, 1, 3, 64, 64)
    maps = diffad_maps(model.model, images[:1])
    assert {name: tuple(value.shape) for name, value in maps.items()} == dict.fromkeys(maps, (1, 1, 64, 64))
    args = (images[0], reconstruction[0], maps["kl"][0], maps["feature"][0], maps["fused"][0])
    plain = write_reconstruction_panel(tmp_path / "plain.png", *args)
    full = write_reconstruction_panel(tmp_path / "full.png", *args, gt_mask=masks[0], steps=steps[:, 0], title="t")
    with Image.open(plain) as small, Image.open(full) as large:
        assert large.size[0] > small.size[0]  # one more column (ground truth)
        assert large.size[1] > small.size[1]  # the strip of steps
        assert np.asarray(large.convert("L")).std() > 0


def test_reconstruct_uses_the_prior_kept_on_the_model(fitted: dict, dataset_root: Path) -> None:
    """``reconstruct(model, images)`` needs no prior argument once ``fit_reconstruction_prior`` ran; the kept
    prior is not part of the checkpoint."""
    images, _ = _defect_batch()
    config = GradientDenoising(num_denoise_steps=1, denoise_every=1)
    fresh = DiffAD(**(TINY_MODEL_ARGS | {"lr": 2e-3}))
    fresh.load_state_dict(fitted["model"].state_dict())
    fresh.eval()
    with pytest.raises(ValueError, match="No reconstruction prior"):
        reconstruct(fresh, images[:1], config=config)
    keys = set(fresh.state_dict())
    datamodule = _datamodule(dataset_root)
    datamodule.setup()
    prior = fit_reconstruction_prior(fresh, datamodule.train_dataloader(), n_features=60)
    assert set(fresh.state_dict()) == keys
    torch.manual_seed(0)
    kept = reconstruct(fresh, images[:1], config=config)
    torch.manual_seed(0)
    torch.testing.assert_close(kept, reconstruct(fresh, images[:1], prior=prior, config=config), rtol=0, atol=0)
    torch.manual_seed(0)
    reference = reconstruct(fitted["model"], images[:1], prior=fitted["prior"], config=config)
    torch.testing.assert_close(kept, reference, rtol=0, atol=1e-3)  # same prior up to summation order


def test_callback_writes_panels_during_predict(fitted: dict, dataset_root: Path, tmp_path: Path) -> None:
    """``ReconstructionPanels`` fits and saves the prior, then writes one panel per image up to ``max_images``."""
    callback = ReconstructionPanels(output_dir=tmp_path, n_features=20, num_denoise_steps=1, max_images=3)
    engine = Engine(
        logger=False,
        default_root_dir=fitted["root_dir"],
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[callback],
    )
    engine.predict(model=fitted["model"], datamodule=_datamodule(dataset_root))
    assert (tmp_path / "reconstruction_prior.pt").is_file()
    assert len(list(tmp_path.rglob("*.png"))) == 3
