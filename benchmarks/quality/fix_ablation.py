# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Ablation of three training and calibration choices of the pixel preset, each replaced alone, same data and steps.

- ``fixed``: the package as it is.
- ``crop_targets``: the feature head's targets are the backbone's features of the training crop itself, not
  the whole image's features cut at the crop's place (what scoring compares against).
- ``clipped_vb``: ``L_vb`` uses the clipped ``x_0`` estimate in the model's posterior mean.

Every variant trains the same preset for the same number of steps with the same seeds, then scores the test
set with its fusion calibrated two ways: on its first 32 training images (the package's rule) and on the test
set's normal images. The second is reported, not used: it fits on test images.

Example (the built-in brick data at 128 px):
    python benchmarks/quality/fix_ablation.py --root datasets/textures --category brick --image-size 128 \
        --steps 150 --seeds 0 1
"""

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_diffad import diffusion
from anomalib_diffad.anomaly_map import AnomalyMapGenerator, top_k_mean
from anomalib_diffad.diffusion import q_sample
from anomalib_diffad.spaces.unet import aligned_crop_offsets, crop_at
from anomalib_diffad.torch_model import DiffADModel, TrainOutput
from benchmarks.quality.compare import (
    REPO,
    build_model,
    calibration_loader,
    diffad_component_maps,
    threshold_free_metrics,
)
from diffad_tools.callbacks import IdleCoreThreads, ReleaseFreedMemory
from diffad_tools.provenance import recorded_command

VARIANTS = ("fixed", "crop_targets", "clipped_vb")


def crop_target_outputs(
    self: DiffADModel,
    images: torch.Tensor,
    class_labels: torch.Tensor | None = None,
) -> TrainOutput:
    """Training outputs with the crop's own features as targets, computed on the crop."""
    size = self.train_crop_size
    tops, lefts = aligned_crop_offsets(images.shape[0], images.shape[-2:], size, self.diffusion_space.crop_grid)
    x0 = crop_at(images, tops, lefts, size)
    with torch.no_grad():
        target = self.target_features(x0)
    t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    xt = q_sample(self.schedule, x0, t, noise)
    prediction = self.denoiser(xt, t, class_labels)
    return TrainOutput(x0=x0, xt=xt, t=t, noise=noise, prediction=prediction, target_features=target)


@contextlib.contextmanager
def undone(variant: str) -> Iterator[None]:
    """Undo one fix while training (``fixed``: change nothing)."""
    patches = []
    if variant == "crop_targets":
        patches = [(DiffADModel, "training_outputs", crop_target_outputs)]
    elif variant == "clipped_vb":
        mean_log_variance = diffusion.p_mean_log_variance  # posterior_kl_map and the L_0 term both call it

        def clipped(*args: torch.Tensor, clip_x0: bool = True) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ARG001
            return mean_log_variance(*args[:5], clip_x0=True)

        patches = [(diffusion, "p_mean_log_variance", clipped)]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in originals:
            setattr(owner, name, value)


def calibrated_metrics(model: torch.nn.Module, test: dict, calibration: dict) -> dict[str, float]:
    """Threshold-free metrics of the test maps, the fusion fitted on ``calibration``'s maps."""
    generator = model.model.anomaly_map_generator
    fusion = AnomalyMapGenerator(alpha=generator.alpha, sigma=generator.sigma)
    fusion.calibrate(calibration["kl"].mean(0), calibration["feature"].mean(0))
    anomaly_map = fusion(test["kl"].mean(0), test["feature"].mean(0))
    return threshold_free_metrics(top_k_mean(anomaly_map, model.model.top_k), anomaly_map, test["label"], test["mask"])


def run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one variant with one seed; its metrics under both calibrations."""
    torch.manual_seed(seed)
    work = Path(tempfile.mkdtemp(prefix=f"fix_ablation_{variant}_"))
    model, _ = build_model("diffad", args, work)
    datamodule = MVTecAD(
        root=args.root, category=args.category, train_batch_size=8, eval_batch_size=8, num_workers=0, seed=seed,
        val_split_mode="from_train", val_split_ratio=0.2,
    )
    engine = Engine(
        logger=False, default_root_dir=work, accelerator="cpu", devices=1, max_steps=args.steps, max_epochs=-1,
        limit_val_batches=0, enable_progress_bar=False, callbacks=[IdleCoreThreads(), ReleaseFreedMemory()],
    )
    start = time.perf_counter()
    with undone(variant):
        engine.fit(model=model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    test = diffad_component_maps(model, datamodule.test_dataloader())
    test_seconds = time.perf_counter() - start
    calibration = calibration_loader(model, datamodule)
    train_maps = diffad_component_maps(model, calibration)
    normal = test["label"] == 0
    test_normals = {key: test[key][:, normal] for key in ("kl", "feature")}
    row = {
        "variant": variant,
        "seed": seed,
        "train_steps": engine.trainer.global_step,
        "train_seconds": round(seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "fusion_on_training_images": calibrated_metrics(model, test, train_maps),
        "fusion_on_test_normals": calibrated_metrics(model, test, test_normals),
    }
    # The same weights scored in overlapping tiles (do GroupNorm and attention need the training crop's size?).
    if args.tile:
        model.model.diffusion_space.score_tile_size = args.tile
        start = time.perf_counter()
        tiled = diffad_component_maps(model, datamodule.test_dataloader())
        row["tiled_test_seconds"] = round(time.perf_counter() - start, 1)
        train_tiled = diffad_component_maps(model, calibration)
        row[f"tiles_{args.tile}_fusion_on_training_images"] = calibrated_metrics(model, tiled, train_tiled)
    return row


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/diffad.yaml"), help="DiffAD pixel preset")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument(
        "--tile", type=int, default=None, help="also score each model in overlapping tiles of this side",
    )
    out = REPO / "benchmarks" / "quality" / "results" / "ablations" / "fix_ablation.json"
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    args.max_steps = args.steps
    if not (args.root / args.category).is_dir():
        sys.exit(f"{args.root / args.category} not found (the built-in data: python -m diffad_tools.textures)")
    result = {
        "dataset": f"{args.root.name}/{args.category}",
        "image_size": args.image_size,
        "preset": str(args.config),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": recorded_command(sys.argv, REPO),
        "runs": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for variant in args.variants:
            result["runs"].append(run(variant, seed, args))
            print(json.dumps(result["runs"][-1]), flush=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every run: an interruption keeps them


if __name__ == "__main__":
    main()
