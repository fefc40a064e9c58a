# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Scores of fixed weights across a change of the package's structure: bit-identical or not.

``record`` (run with the old code on the path) trains a tiny DiffAD of each space for 3 steps on the built-in brick
(seeded), validates it (which calibrates it), and saves its state dict and the raw scores and maps of 6 test images.
``compare`` (run with the new code) loads each state dict into a model built with the new API, scores the same
images, recalibrates it by a validation pass on the same training images, and writes whether the scores, the
calibrated buffers and the scores after recalibration are bit-identical.

Example (the old code of 0.1.0 in a worktree)::

    git worktree add ../diffad-0.1 d05ea3a
    PYTHONPATH=../diffad-0.1 .venv/bin/python benchmarks/structure/bit_identity.py record --old-api \\
        --root datasets/textures --work ../bit_identity
    .venv/bin/python benchmarks/structure/bit_identity.py compare --root datasets/textures --work ../bit_identity \\
        --out benchmarks/structure/results/bit_identity.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning import seed_everything

from anomalib_diffad import DiffAD
from diffad_tools.provenance import recorded_command

REPO = Path(__file__).resolve().parents[2]
UNET = {
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "attention_levels": (1,),
    "attention_head_dim": 16,
    "norm_num_groups": 8,
}
COMMON = {"image_size": 64, "pretrained_weights": None, "lr": 1e-3, "max_steps": 3, "calibration_images": 8}
SPACES = {
    "pixel": {
        "layers": ("blocks.0", "blocks.1", "blocks.2", "blocks.4"),
        "score_timesteps": (20, 201, 401),
        "space_args": UNET | {"train_crop_size": 32},
    },
    "feature": {
        "layers": ("blocks.2", "blocks.4"),
        "score_timesteps": (20, 50),
        "timestep_fusion": "scaled_mean",
        "space_args": UNET,
    },
    "patch": {
        "layers": ("blocks.2", "blocks.4"),
        "score_timesteps": (25, 50, 100, 200),
        "train_timesteps": 500,
        "timestep_fusion": "scaled_mean",
        "smoothing_sigma": 4.0,
        "alpha": 1.0,
        "subtract_normal_map": True,
        "space_args": {"mlp_width": 32, "mlp_blocks": 2, "feature_pool": 3},
    },
}


def datamodule(root: Path) -> MVTecAD:
    """Built-in brick, validation split from train."""
    return MVTecAD(
        root=root, category="brick", train_batch_size=4, eval_batch_size=6, num_workers=0,
        val_split_mode="from_train", val_split_ratio=0.2, seed=0,
    )  # fmt: skip


def build(space: str, old_api: bool) -> DiffAD:
    """The space's tiny DiffAD: the flat arguments of 0.1 (``old_api``) or a space object."""
    args = COMMON | {key: value for key, value in SPACES[space].items() if key != "space_args"}
    if old_api:  # 0.1's name of the scaled mean
        scaled = args.pop("timestep_fusion", "mean") == "scaled_mean"
        return DiffAD(space=space, **args, **SPACES[space]["space_args"], normalize_passes=scaled)
    from anomalib_diffad.spaces import FeatureSpace, PatchSpace, PixelSpace  # absent in 0.1

    classes = {"pixel": PixelSpace, "feature": FeatureSpace, "patch": PatchSpace}
    return DiffAD(classes[space](**SPACES[space]["space_args"]), **args)


def scores(model: DiffAD, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw image scores and maps of the torch model."""
    model.eval()
    with torch.no_grad():
        output = model.model(model.pre_processor.transform(images))
    return output.pred_score, output.anomaly_map


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("--root", type=Path, required=True, help="built-in textures (python -m diffad_tools.textures)")
    parser.add_argument("--work", type=Path, required=True, help="folder of the recorded weights and scores")
    parser.add_argument("--old-api", action="store_true", help="build the models with 0.1's flat arguments")
    parser.add_argument("--out", type=Path, help="compare: result JSON")
    args = parser.parse_args()
    data = datamodule(args.root)
    data.setup()
    images = next(iter(data.test_dataloader())).image
    rows = []
    for space in SPACES:
        seed_everything(0)
        model = build(space, args.old_api)
        engine = Engine(default_root_dir=args.work / "runs", logger=False)
        if args.mode == "record":
            engine.fit(model, datamodule=datamodule(args.root))
            score, anomaly_map = scores(model, images)
            args.work.mkdir(parents=True, exist_ok=True)
            torch.save({"state": model.state_dict(), "score": score, "map": anomaly_map}, args.work / f"{space}.pt")
            continue
        saved = torch.load(args.work / f"{space}.pt", weights_only=True)
        model.load_state_dict(saved["state"])
        score, anomaly_map = scores(model, images)
        row = {
            "space": space,
            "scores_identical": torch.equal(score, saved["score"]) and torch.equal(anomaly_map, saved["map"]),
            "max_map_difference": float((anomaly_map - saved["map"]).abs().max()),
        }
        engine.validate(model, datamodule=datamodule(args.root))
        state = model.state_dict()
        row["buffers_changed_by_recalibration"] = sorted(
            key for key, value in saved["state"].items() if not torch.equal(state[key], value)
        )
        score, anomaly_map = scores(model, images)
        row["scores_identical_after_recalibration"] = torch.equal(score, saved["score"]) and torch.equal(
            anomaly_map, saved["map"]
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"command": recorded_command(sys.argv, REPO), "rows": rows}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
