# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""How selectively does a reconstruction change defects? DiffAD's gradient denoising (and DRAEM's reconstructive
subnetwork) on one MVTec-layout category.

For every test image the script reconstructs the pre-processed image and measures the mean absolute change
``|reconstruction - input|`` (in ``[0, 1]`` intensity units, averaged over RGB) separately over

- ``good_images``: all pixels of the defect-free test images,
- ``normal_pixels``: the pixels outside the ground-truth masks of the defective images,
- ``defect_pixels``: the pixels inside the masks,

and reports ``defect_pixels / normal_pixels``, the selectivity of the reconstruction (the paper's Fig. 7 claim:
defects are redrawn, normal texture is kept). It writes ``<out>/<category>_reconstruction_change.json`` and
``<out>/<category>_reconstruction_grid.png`` (input | DiffAD reconstruction | change | [DRAEM reconstruction |
change] | mask for the first defective images; with ``--no-image-panels`` only the change maps and the mask, for
data whose licence the repository does not take on). When ``--root/--category`` is absent it prints SKIP and
exits 0.

DiffAD is trained with anomalib's Engine (``--max-steps``) unless ``--ckpt`` gives a trained checkpoint of the
``--config`` preset. DRAEM is loaded from ``--draem-ckpt`` (e.g. the calibrated checkpoint that
``benchmarks/quality/compare.py`` prints) or trained for ``--draem-steps`` with Perlin-noise anomalies from an
empty source folder; its reconstructive subnetwork is applied to the ``[0, 1]`` image.

Example (MVTec 3D-AD tire (RGB), checkpoints of the quality benchmark; the official code's 100 denoising rounds
cost about 150 s per 256 px image on one CPU thread, AVX-512 BF16, hence fewer here):
    python benchmarks/reconstruction/reconstruction_change.py --root ../shared/data/mvtec3d --category tire \\
        --image-size 256 --ckpt <diffad.ckpt> --draem-ckpt <draem.ckpt> --num-denoise-steps 10 \\
        --no-image-panels --out benchmarks/reconstruction/results
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_diffad import DiffAD
from anomalib_diffad.reconstruction import GradientDenoising, fit_reconstruction_prior, reconstruct
from diffad_tools.callbacks import IdleCoreThreads
from diffad_tools.provenance import recorded_command, relative_path

REPO = Path(__file__).resolve().parents[2]

GRID_IMAGES = 6
REGIONS = ("good_images", "normal_pixels", "defect_pixels")


class ChangeMeter:
    """Running sums of the absolute change per region."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(REGIONS, 0.0)
        self.counts = dict.fromkeys(REGIONS, 0)

    def add(self, change: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``change`` and ``masks`` are ``(N, H, W)``, ``labels`` ``(N,)`` (1 = defective)."""
        for index in range(change.shape[0]):
            values, mask = change[index], masks[index]
            if not bool(labels[index]):
                self._add("good_images", values.flatten())
                continue
            self._add("normal_pixels", values[~mask])
            self._add("defect_pixels", values[mask])

    def _add(self, region: str, values: torch.Tensor) -> None:
        self.sums[region] += float(values.double().sum())
        self.counts[region] += values.numel()

    def summary(self) -> dict:
        """Mean change per region and the defect/normal ratios."""
        means = {region: self.sums[region] / max(self.counts[region], 1) for region in REGIONS}
        normal = means["normal_pixels"]
        return {
            "mean_abs_change": means,
            "pixels": dict(self.counts),
            "ratio_defect_to_normal_pixels": means["defect_pixels"] / normal if normal > 0 else None,
            "ratio_defect_to_good_images": (
                means["defect_pixels"] / means["good_images"] if means["good_images"] > 0 else None
            ),
        }


def fit(model: torch.nn.Module, datamodule: MVTecAD, root: Path, max_steps: int, accelerator: str) -> None:
    """Train ``model`` for ``max_steps`` with anomalib's Engine (validation at the end calibrates it)."""
    callbacks = [IdleCoreThreads()]  # torch threads fitted to the idle cores, as in the CPU presets
    Engine(logger=False, default_root_dir=root, max_steps=max_steps, accelerator=accelerator, devices=1,
           callbacks=callbacks).fit(
        model=model,
        datamodule=datamodule,
    )


def load_weights(model: torch.nn.Module, ckpt: Path) -> torch.nn.Module:
    """Load the torch model's weights (``model.*``) of an anomalib checkpoint into ``model``.

    Only the torch model: the checkpoint's evaluator, post-processor and visualizer may differ from the defaults.
    """
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.model.load_state_dict(
        {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")},
    )
    return model


def diffad_model(args: argparse.Namespace, datamodule: MVTecAD, work: Path) -> DiffAD:
    """DiffAD of the ``--config`` preset at ``--image-size``: ``--ckpt``'s weights, or trained ``--max-steps``."""
    preset = yaml.safe_load(args.config.read_text())["model"]["init_args"] | {"image_size": args.image_size}
    model = DiffAD(**preset)
    if args.ckpt:
        return load_weights(model, args.ckpt)
    fit(model, datamodule, work / "diffad", args.max_steps, args.accelerator)
    return model


def draem_reconstructor(args: argparse.Namespace, datamodule: MVTecAD, work: Path) -> torch.nn.Module | None:
    """DRAEM's reconstructive subnetwork from ``--draem-ckpt`` or ``--draem-steps`` of training (``None``: off)."""
    if args.draem_ckpt is None and args.draem_steps <= 0:
        return None
    from anomalib.models import Draem

    source = work / "empty_anomaly_source"
    source.mkdir(exist_ok=True)
    model = Draem(dtd_dir=source, pre_processor=Draem.configure_pre_processor(image_size=(args.image_size,) * 2))
    if args.draem_ckpt:
        load_weights(model, args.draem_ckpt)
    else:
        fit(model, datamodule, work / "draem", args.draem_steps, args.accelerator)
    return model.model.reconstructive_subnetwork.eval()


def write_grid(rows: list[dict], path: Path, image_panels: bool) -> None:
    """One row per image: input, each reconstruction with its change map, and the mask (only the change maps
    and the mask without ``image_panels``)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    names = [key for key in ("diffad", "draem") if key in rows[0]]
    columns = (2 + 2 * len(names)) if image_panels else (1 + len(names))
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.2 * columns, 2.2 * len(rows)), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row, entry in zip(axes, rows, strict=True):
        panels = [("input", entry["input"], {})] if image_panels else []
        for name in names:
            if image_panels:
                panels.append((f"{name} reconstruction", entry[name], {}))
            panels.append((f"{name} |change|", entry[f"{name}_change"], {"cmap": "inferno", "vmin": 0, "vmax": 0.5}))
        panels.append(("mask", entry["mask"], {"cmap": "gray", "vmin": 0, "vmax": 1}))
        for axis, (title, values, style) in zip(row, panels, strict=False):
            axis.imshow(values, **style)
            axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in ``[0, 1]`` to an ``(H, W, 3)`` array."""
    return image.clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="MVTec-layout dataset root")
    parser.add_argument("--category", required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--config", type=Path, default=Path("configs/diffad.yaml"), help="DiffAD preset")
    parser.add_argument("--ckpt", type=Path, default=None, help="trained DiffAD checkpoint (skips training)")
    parser.add_argument("--draem-ckpt", type=Path, default=None, help="trained DRAEM checkpoint (skips training)")
    parser.add_argument("--max-steps", type=int, default=2500, help="DiffAD training steps")
    parser.add_argument("--draem-steps", type=int, default=0, help="DRAEM training steps (0: no DRAEM)")
    parser.add_argument("--num-denoise-steps", type=int, default=100)
    parser.add_argument("--denoise-every", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.02)
    parser.add_argument("--prior-features", type=int, default=100)
    parser.add_argument("--max-images", type=int, default=None, help="test images to reconstruct (default: all)")
    parser.add_argument(
        "--defective-only", action="store_true",
        help="reconstruct only the defective test images (the defect/normal pixel ratio needs no others)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-image-panels", dest="image_panels", action="store_false",
        help="grid without input and reconstruction pixels (change maps and masks only)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/reconstruction"))
    args = parser.parse_args(argv)

    if not (args.root / args.category).is_dir():
        print(f"SKIP: {args.root / args.category} not found")
        return 0
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reconstruction_change_"))
    datamodule = MVTecAD(
        root=args.root,
        category=args.category,
        train_batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=0,
        seed=args.seed,
    )
    started = time.monotonic()
    model = diffad_model(args, datamodule, work)
    draem = draem_reconstructor(args, datamodule, work)
    train_seconds = time.monotonic() - started
    device = torch.device("cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu")
    model = model.to(device).eval()
    draem = draem.to(device) if draem is not None else None
    datamodule.setup()
    prior = fit_reconstruction_prior(model, datamodule.train_dataloader(), n_features=args.prior_features)
    config = GradientDenoising(
        step_size=args.step_size,
        denoise_every=args.denoise_every,
        num_denoise_steps=args.num_denoise_steps,
    )
    size = (args.image_size, args.image_size)
    meters = {"diffad": ChangeMeter(), **({"draem": ChangeMeter()} if draem is not None else {})}
    grid: list[dict] = []
    seen = 0
    started = time.monotonic()
    for batch in datamodule.test_dataloader():
        if args.max_images is not None and seen >= args.max_images:
            break
        images01 = F.interpolate(batch.image.to(device), size=size, mode="bilinear", antialias=True).clamp(0, 1)
        masks = batch.gt_mask.to(device).float().unsqueeze(1) if batch.gt_mask.ndim == 3 else batch.gt_mask.float()
        masks = F.interpolate(masks.to(device), size=size, mode="nearest")[:, 0] > 0.5
        labels = batch.gt_label.to(device)
        if args.defective_only:
            keep = labels.bool()
            if not bool(keep.any()):
                continue
            images01, masks, labels = images01[keep], masks[keep], labels[keep]
        outputs = {"diffad": (reconstruct(model, images01 * 2 - 1, prior=prior, config=config) + 1) / 2}
        if draem is not None:
            with torch.no_grad():
                outputs["draem"] = draem(images01)
        for name, reconstruction in outputs.items():
            meters[name].add((reconstruction.clamp(0, 1) - images01).abs().mean(dim=1), masks, labels)
        for index in range(images01.shape[0]):
            if len(grid) < GRID_IMAGES and bool(labels[index]):
                entry = {"input": to_hwc(images01[index]), "mask": masks[index].cpu().numpy()}
                for name, reconstruction in outputs.items():
                    entry[name] = to_hwc(reconstruction[index])
                    change = (reconstruction[index].clamp(0, 1) - images01[index]).abs().mean(0)
                    entry[f"{name}_change"] = change.cpu().numpy()
                grid.append(entry)
        seen += images01.shape[0]
        print(f"reconstructed {seen} test images, {time.monotonic() - started:.0f} s", flush=True)

    record = {
        "category": args.category,
        "root": relative_path(args.root, REPO),
        "image_size": args.image_size,
        "images": seen,
        "diffad": {"settings": asdict(config) | {"prior_features": args.prior_features}, **meters["diffad"].summary()},
        "train_seconds": round(train_seconds, 1),
        "reconstruct_seconds": round(time.monotonic() - started, 1),
        "device": str(device),
        "command": recorded_command(sys.argv, REPO),
    }
    if "draem" in meters:
        settings = {"checkpoint": args.draem_ckpt.name} if args.draem_ckpt else {"steps": args.draem_steps}
        record["draem"] = {"settings": settings, **meters["draem"].summary()}
    json_path = args.out / f"{args.category}_reconstruction_change.json"
    json_path.write_text(json.dumps(record, indent=2, default=str))
    if grid:
        write_grid(grid, args.out / f"{args.category}_reconstruction_grid.png", args.image_panels)
    print(json.dumps({name: record[name]["ratio_defect_to_normal_pixels"] for name in meters}))
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
