# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Train and test DiffAD (a preset from ``configs/``) on one MVTec-layout category; record quality and cost.

Writes ``<out>/<dataset>_<category>.json`` with image AUROC, pixel AUROC, AUPRO, F1 (anomalib's metrics),
training time, steps, peak memory, and an ablation of the scoring settings on the same trained weights
(scoring timesteps, alpha, smoothing): scoring does not change training, so the ablation needs no retraining.

Example (MVTec 3D-AD tire, RGB; skipped when the folder is absent):
    python benchmarks/quality/diffad_quality.py --root ../shared/data/mvtec3d --category tire \
        --dataset-name "MVTec 3D-AD tire (RGB)" --image-size 256 --max-steps 3000 --out benchmarks/quality/results
"""

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC

from anomalib_diffad import DiffAD
from anomalib_diffad.anomaly_map import AnomalyMapGenerator, top_k_mean

REPO = Path(__file__).resolve().parents[2]


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_preset(config: Path) -> dict:
    """``model.init_args`` of a preset YAML."""
    return yaml.safe_load(config.read_text())["model"]["init_args"]


@torch.no_grad()
def component_maps(model: DiffAD, datamodule: MVTecAD, timesteps: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-timestep KL and feature maps of every test image, with masks and labels."""
    model.eval()
    kl_maps, feature_maps, masks, labels = [], [], [], []
    for batch in datamodule.test_dataloader():
        images = model.pre_processor.transform(batch.image)
        per_t = [model.model.component_scores(images, step_indices=[index]) for index in range(len(timesteps))]
        kl_maps.append(torch.stack([kl for kl, _ in per_t]))
        feature_maps.append(torch.stack([feature for _, feature in per_t]))
        size = images.shape[-2:]
        masks.append(torch.nn.functional.interpolate(batch.gt_mask[:, None].float(), size=size) > 0.5)
        labels.append(batch.gt_label)
    return {
        "kl": torch.cat(kl_maps, 1),
        "feature": torch.cat(feature_maps, 1),
        "mask": torch.cat(masks),
        "label": torch.cat(labels),
    }


def score_variant(maps: dict, steps: list[int], alpha: float, sigma: float, top_k: int) -> dict[str, float]:
    """anomalib metrics of one scoring setting, calibrated on the test normals' maps (as validation does)."""
    kl, feature = maps["kl"][steps].mean(0), maps["feature"][steps].mean(0)
    normal = maps["label"] == 0
    generator = AnomalyMapGenerator(alpha=alpha, sigma=sigma)
    generator.calibrate(kl[normal], feature[normal])
    anomaly_map = generator(kl, feature)
    batch = SimpleNamespace(
        anomaly_map=anomaly_map,
        pred_score=top_k_mean(anomaly_map, top_k),
        gt_mask=maps["mask"],
        gt_label=maps["label"],
    )
    results = {}
    for name, metric in {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"]),
    }.items():
        metric.update(batch)
        results[name] = float(metric.compute())
    return results


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--dataset-name", default=None, help="name to report (default: the root folder name)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "diffad.yaml")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="hard cap on training wall time")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality" / "results")
    args = parser.parse_args()

    if not (args.root / args.category).is_dir():
        print(f"SKIP: {args.root / args.category} not found")
        return
    torch.manual_seed(args.seed)
    preset = load_preset(args.config) | {"image_size": args.image_size, "lr_anneal_steps": args.max_steps}
    model = DiffAD(**preset)
    datamodule = MVTecAD(
        root=args.root,
        category=args.category,
        train_batch_size=args.batch_size,
        eval_batch_size=8,
        num_workers=0,
        seed=args.seed,
    )
    minutes = int(args.max_minutes)
    engine = Engine(
        logger=False,
        default_root_dir=args.out / "runs",
        max_steps=args.max_steps,
        max_epochs=-1,
        max_time=f"00:{minutes // 60:02d}:{minutes % 60:02d}:00",
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    train_peak = peak_rss_gib()
    steps = int(model.model.ema_updates)
    engine.trainer.limit_val_batches = 1.0
    engine.validate(model=model, datamodule=datamodule)
    start = time.perf_counter()
    test = engine.test(model=model, datamodule=datamodule)[0]
    test_seconds = time.perf_counter() - start

    timesteps = model.model.score_timesteps
    maps = component_maps(model, datamodule, timesteps)
    ablation = []
    for steps in ([0], list(range(len(timesteps)))):
        for alpha in (0.0, 0.5, 1.0):
            for sigma in (0.0, 2.0, 4.0):
                row = {"timesteps": [timesteps[i] for i in steps], "alpha": alpha, "sigma": sigma}
                ablation.append(row | score_variant(maps, steps, alpha, sigma, model.model.top_k))

    name = args.dataset_name or args.root.name
    result = {
        "dataset": name,
        "category": args.category,
        "model": "DiffAD",
        "preset": str(args.config.relative_to(REPO)),
        "image_size": args.image_size,
        "train_crop_size": preset.get("train_crop_size"),
        "test_metrics": {key: float(value) for key, value in test.items()},
        "train_steps": steps,
        "train_batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "test_images": len(datamodule.test_data),
        "peak_rss_gib_train": round(train_peak, 2),
        "peak_rss_gib_total": round(peak_rss_gib(), 2),
        "scoring_ablation": ablation,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": "python " + " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name.split()[0].lower().replace('-', '')}_{args.category}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
