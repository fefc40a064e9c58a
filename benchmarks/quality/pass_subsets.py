# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Which scoring passes pay: re-score one trained DiffAD under subsets of its (timestep, noise draw) passes.

Takes a checkpoint written by ``compare.py`` (its ``calibrated checkpoint`` line) of a preset that scores each
timestep with several fixed noise draws (``score_timesteps: [50, 100, 200, 400, 50, 100, 200, 400, ...]``),
computes every pass's KL and feature maps once, and reports the threshold-free metrics of each subset: every
timestep alone, draws 1, 2 and all of them over all timesteps. The fusion of each subset is calibrated on the
model's first 32 training images, never on test images. The cost of a subset is its number of passes.
``--score-timesteps`` scores other passes with the same weights (the scoring noise is not part of them).

Example (the feature preset with 4 draws, built-in brick at 128 px):
    python benchmarks/quality/pass_subsets.py --root datasets/textures --category brick --image-size 128 \
        --config results/dev/diffad_feature_draws.yaml --ckpt <its calibrated.ckpt> \
        --out benchmarks/quality/results/ablations/pass_subsets_brick_feature.json
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


def subsets(timesteps: tuple[int, ...]) -> dict[str, list[int]]:
    """Named pass subsets: each timestep with all its draws, and the first 1, 2, ... draws of every timestep."""
    draws = {t: [index for index, step in enumerate(timesteps) if step == t] for t in dict.fromkeys(timesteps)}
    named = {f"t={t}, {len(indices)} draws": indices for t, indices in draws.items()}
    for count in range(1, max(len(indices) for indices in draws.values()) + 1):
        named[f"all t, {count} draw(s)"] = sorted(index for indices in draws.values() for index in indices[:count])
    return named


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--config", type=Path, required=True, help="the checkpoint's DiffAD preset")
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--score-timesteps", type=int, nargs="+", default=None,
        help="passes to score instead of the preset's (the weights do not depend on them), e.g. 10 25 10 25",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    overrides = {"score_timesteps": args.score_timesteps} if args.score_timesteps else {}
    model = load_diffad_checkpoint(args.config, args.ckpt, args.image_size, **overrides)
    datamodule = MVTecAD(root=args.root, category=args.category, eval_batch_size=8, num_workers=0,
                         val_split_mode="from_train", val_split_ratio=0.2)
    datamodule.setup()
    test_maps = diffad_component_maps(model, datamodule.test_dataloader())
    train_maps = diffad_component_maps(model, calibration_loader(model, datamodule))
    generator = model.model.anomaly_map_generator
    rows = []
    for name, passes in subsets(model.model.score_timesteps).items():
        metrics = score_variant(test_maps, train_maps, passes, generator.alpha, generator.sigma, model.model.top_k)
        rows.append({"passes": name, "count": len(passes), **metrics})
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "dataset": f"{args.root.name}/{args.category}",
        "preset": relative_path(args.config, REPO),
        "command": recorded_command(sys.argv, REPO),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
