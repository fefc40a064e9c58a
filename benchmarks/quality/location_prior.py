# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""How much of a pixel metric is location: a model-free centre prior, and each model's map split in two.

On object categories the defects lie on the object, which sits near the image centre, so a map that only says
"near the centre" already ranks defect pixels above background. This script measures that and splits each
trained model's map into the part every normal image shares and the part the image itself adds:

- ``centre prior``: minus the distance to the image centre. No model, no data: the floor that pixel AUROC and
  AUPRO must clear before a map says anything about a defect.
- ``<model>, mean normal map``: the same constant map for every test image, the mean of the model's maps over
  the validation normals (normal training images held out by ``val_split_mode from_train``, as in
  ``compare.py``; never a test image).
- ``<model>, map``: the model's raw map (image score: its own).
- ``<model>, map minus mean normal map``: what the image adds to the constant (image score: the mean of its
  64 largest pixels).

Models are the ``calibrated checkpoint`` files that ``compare.py`` prints (``--diffad`` with its preset,
``--patchcore``). Writes one JSON; the pictures are in the README's text, not here.

Example (MVTec 3D-AD tire, RGB, the checkpoints of the committed tire comparison):
    python benchmarks/quality/location_prior.py --root ../shared/data/mvtec3d --category tire --image-size 256 \
        --diffad <DiffAD feature calibrated.ckpt> --diffad-config configs/diffad_feature.yaml \
        --patchcore <PatchCore calibrated.ckpt> --out benchmarks/quality/results/ablations/location_prior_tire.json
"""

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from anomalib import PrecisionType
from anomalib.data import MVTecAD
from anomalib.models import AnomalibModule

from anomalib_diffad.anomaly_map import top_k_mean
from benchmarks.quality.compare import REPO, load_diffad_checkpoint, threshold_free_metrics
from diffad_tools.baselines import lite0_patchcore
from diffad_tools.provenance import recorded_command, relative_path

TOP_K = 64
"""Pixels averaged into the image score of a residual map (DiffAD's default ``top_k``)."""


def centre_prior(height: int, width: int) -> torch.Tensor:
    """``(1, 1, H, W)`` map of minus each pixel's distance to the image centre."""
    rows = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    cols = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    return -torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2)[None, None]


@torch.no_grad()
def raw_maps(model: AnomalibModule, dataloader: Iterable) -> dict[str, torch.Tensor]:
    """The model's raw anomaly maps and image scores (no post-processing) with masks and labels at map size."""
    model.eval()
    maps, scores, masks, labels = [], [], [], []
    for batch in dataloader:
        output = model.model(model.pre_processor.transform(batch.image))
        size = output.anomaly_map.shape[-2:]
        maps.append(output.anomaly_map.reshape(len(batch.image), 1, *size).float())
        scores.append(output.pred_score.reshape(-1).float())
        gt_mask = batch.gt_mask if batch.gt_mask is not None else torch.zeros(len(batch.image), *size)
        masks.append(torch.nn.functional.interpolate(gt_mask[:, None].float(), size=size)[:, 0] > 0.5)
        labels.append(batch.gt_label)
    return {"map": torch.cat(maps), "score": torch.cat(scores), "mask": torch.cat(masks), "label": torch.cat(labels)}


def pixel_metrics(maps: torch.Tensor, test: dict[str, torch.Tensor]) -> dict[str, float]:
    """Pixel AUROC and AUPRO of ``maps`` (broadcast over the test images) against the test masks."""
    maps = maps.expand(len(test["label"]), -1, -1, -1).contiguous()
    metrics = threshold_free_metrics(torch.zeros(len(test["label"])), maps, test["label"], test["mask"])
    return {key: value for key, value in metrics.items() if key.startswith("pixel")}


def decompose(name: str, model: AnomalibModule, datamodule: MVTecAD) -> list[dict]:
    """The three rows of one model: its mean normal map, its map, and its map minus the mean normal map."""
    test = raw_maps(model, datamodule.test_dataloader())
    mean_normal = raw_maps(model, datamodule.val_dataloader())["map"].mean(dim=0, keepdim=True)
    residual = test["map"] - mean_normal
    return [
        {"map": f"{name}, mean normal map", **pixel_metrics(mean_normal, test)},
        {"map": f"{name}, map", **threshold_free_metrics(test["score"], test["map"], test["label"], test["mask"])},
        {
            "map": f"{name}, map minus mean normal map",
            **threshold_free_metrics(top_k_mean(residual, TOP_K), residual, test["label"], test["mask"]),
        },
    ]


def load_patchcore(ckpt: Path, image_size: int) -> AnomalibModule:
    """Lite0 PatchCore (``compare.py``'s) with the memory bank of ``ckpt``."""
    with torch.serialization.safe_globals([PrecisionType]):  # in the hyperparameters anomalib saves
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model = lite0_patchcore((image_size, image_size))
    model.model.memory_bank = torch.empty_like(state["model.memory_bank"])
    model.load_state_dict(state, strict=False)
    return model


def command_with_placeholders(args: argparse.Namespace) -> str:
    """The recorded command, each checkpoint path replaced by a placeholder (they are temporary files)."""
    command = recorded_command(sys.argv, REPO)
    for name, path in (("DiffAD", args.diffad), ("PatchCore", args.patchcore)):
        if path is not None:
            command = command.replace(relative_path(path, REPO), f"'<{name} calibrated.ckpt>'")
    return command


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--diffad", type=Path, default=None, help="DiffAD calibrated.ckpt from compare.py")
    parser.add_argument("--diffad-config", type=Path, default=REPO / "configs" / "diffad_feature.yaml")
    parser.add_argument("--patchcore", type=Path, default=None, help="PatchCore calibrated.ckpt from compare.py")
    parser.add_argument("--val-ratio", type=float, default=0.2, help="as in compare.py (same seed 0: same split)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    datamodule = MVTecAD(root=args.root, category=args.category, eval_batch_size=8, num_workers=0, seed=0,
                         val_split_mode="from_train", val_split_ratio=args.val_ratio)
    datamodule.setup()
    size = (args.image_size, args.image_size)
    items = list(datamodule.test_data)
    test = {
        "label": torch.tensor([bool(item.gt_label) for item in items]),
        "mask": torch.cat(
            [torch.nn.functional.interpolate(item.gt_mask[None, None].float(), size=size)[:, 0] for item in items],
        ) > 0.5,
    }
    rows = [{"map": "centre prior (no model)", **pixel_metrics(centre_prior(*size), test)}]
    print(json.dumps(rows[-1]), flush=True)
    models = {}
    if args.diffad:
        diffad = load_diffad_checkpoint(args.diffad_config, args.diffad, args.image_size)
        models[f"DiffAD ({relative_path(args.diffad_config, REPO)})"] = diffad
    if args.patchcore:
        models["PatchCore"] = load_patchcore(args.patchcore, args.image_size)
    for name, model in models.items():
        rows += decompose(name, model, datamodule)
        print("\n".join(json.dumps(row) for row in rows[-3:]), flush=True)
    result = {
        "dataset": f"{args.root.name}/{args.category}",
        "image_size": args.image_size,
        "test_images": len(test["label"]),
        "calibration": f"mean normal maps: {len(datamodule.val_data)} validation normals taken from train "
        f"(ratio {args.val_ratio}, seed 0); no test image fits anything",
        "checkpoints": "the calibrated.ckpt files that compare.py printed for this dataset's committed results "
        "(not committed; in the command as placeholders)",
        "command": command_with_placeholders(args),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
