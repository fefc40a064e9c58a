# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Same weights, with and without ``subtract_normal_map``: re-score a DiffAD checkpoint written by ``compare.py``.

Computes every scoring pass's KL and feature maps of the test images and of DiffAD's calibration images (its
first 32 training images, as the post-processor) once, then reports the threshold-free metrics of the preset's
scoring with the normal map off and on, each at alpha 0.5 and 1 with the preset's smoothing. Both the fusion
statistics and the normal map come from the calibration images only; no test image fits anything.

Example (the feature preset's tire checkpoint from the committed comparison):
    python benchmarks/quality/normal_map_ablation.py --root ../shared/data/mvtec3d --category tire \\
        --image-size 256 --config configs/diffad_feature.yaml --ckpt '<DiffAD calibrated.ckpt>' \\
        --out benchmarks/quality/results/ablations/normal_map_tire_feature.json
"""

import argparse
import json
import sys
from pathlib import Path

from anomalib.data import MVTecAD

from benchmarks.quality.compare import (
    REPO,
    calibration_loader,
    diffad_component_maps,
    load_diffad_checkpoint,
    score_variant,
)
from diffad_tools.provenance import recorded_command, relative_path


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--config", type=Path, required=True, help="the checkpoint's DiffAD preset")
    parser.add_argument("--ckpt", type=Path, required=True, help="calibrated.ckpt printed by compare.py")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model = load_diffad_checkpoint(args.config, args.ckpt, args.image_size)
    datamodule = MVTecAD(root=args.root, category=args.category, eval_batch_size=8, num_workers=0, seed=0,
                         val_split_mode="from_train", val_split_ratio=0.2)
    datamodule.setup()
    test_maps = diffad_component_maps(model, datamodule.test_dataloader())
    train_maps = diffad_component_maps(model, calibration_loader(model, datamodule))
    passes = list(range(len(model.model.score_timesteps)))
    rows = []
    for subtract in (False, True):
        for alpha in (0.5, 1.0):
            metrics = score_variant(
                test_maps, train_maps, passes, alpha, model.model.anomaly_map_generator.sigma, model.model.top_k,
                subtract_normal_map=subtract,
            )
            rows.append({"subtract_normal_map": subtract, "alpha": alpha, **metrics})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "dataset": f"{args.root.name}/{args.category}",
        "image_size": args.image_size,
        "preset": relative_path(args.config, REPO),
        "score_timesteps": list(model.model.score_timesteps),
        "calibration": f"fusion statistics and normal map: DiffAD's first {len(train_maps['label'])} training "
        "images; no test image",
        "checkpoint": "the calibrated.ckpt that compare.py printed for this dataset's committed result (not committed)",
        "command": recorded_command(sys.argv, REPO).replace(
            relative_path(args.ckpt, REPO), "'<DiffAD calibrated.ckpt>'",
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
