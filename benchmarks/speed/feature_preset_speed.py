# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Training-step and scoring time of DiffAD's presets, fp32 against bf16 autocast, and test latency of the
feature preset (or ``--preset``; torch, OpenVINO) against PatchCore (Lite0, torch) at 256 px on the CPU it runs on.

Random weights and images: time does not depend on them. PatchCore's memory bank has ``--bank`` patches
(1% coreset of the 210 tire training images: 1719). Every figure is the median of ``--repeats`` runs after one
warm-up, with ``torch.get_num_threads()`` threads (``OMP_NUM_THREADS``). Writes ``<out>/feature_preset_speed.json``
and ``.png`` (``--latency-only``: only the test latencies of the preset and PatchCore, into
``<out>/<feature|patch>_preset_latency.json`` and ``.png``; with ``--score-timesteps``, other scoring passes, into
``<...>_preset_latency_<n>_passes.json``; ``--steps-only``: the preset's training step in fp32 and bf16, into
``<out>/<feature|patch>_preset_steps.json``).

Example:
    OMP_NUM_THREADS=2 python benchmarks/speed/feature_preset_speed.py --out benchmarks/speed/results
"""

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from anomalib_diffad import DiffAD
from benchmarks.speed.cpu_costs import median_seconds
from diffad_tools.baselines import lite0_patchcore
from diffad_tools.provenance import cpu_description, recorded_command

REPO = Path(__file__).resolve().parents[2]


def preset(name: str, size: int, score_timesteps: list[int] | None = None) -> DiffAD:
    """A DiffAD preset from ``configs/<name>.yaml`` at ``size`` px (other scoring passes when given), random
    weights, calibrated to finite values."""
    args = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())["model"]["init_args"]
    if score_timesteps:
        args["score_timesteps"] = score_timesteps
    model = DiffAD(**(args | {"image_size": size, "pretrained_weights": None}))
    for buffer in ("_image_threshold", "_pixel_threshold", "image_min", "pixel_min"):
        getattr(model.post_processor, buffer).fill_(0.0)
    for buffer in ("image_max", "pixel_max"):
        getattr(model.post_processor, buffer).fill_(1.0)
    return model


def train_step_seconds(model: DiffAD, batch: int, size: int, bf16: bool, repeats: int) -> float:
    """Median time of one optimizer step (forward, loss, backward, AdamW) on a batch of random images."""
    images = torch.rand(batch, 3, size, size) * 2 - 1
    optimizer = torch.optim.AdamW(model.model.denoiser.parameters(), lr=1e-4)
    model.model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(model.model(images))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def latency_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median time of one call."""
    with torch.no_grad():
        return median_seconds(run, repeats)


def openvino_latency(model: DiffAD, image: torch.Tensor, precision: str, repeats: int) -> float:
    """Median time of the exported graph (pre-processing, model, post-processing) on one image."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as folder:
        path = model.to_openvino(Path(folder))
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": precision}
        compiled = ov.Core().compile_model(str(path), "CPU", config)
        array = image.numpy()
        return median_seconds(lambda: compiled(array), repeats)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bank", type=int, default=1719, help="PatchCore memory-bank patches")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    parser.add_argument("--latency-only", action="store_true", help="skip training steps and the pixel preset")
    parser.add_argument("--preset", default="diffad_feature", choices=["diffad_feature", "diffad_patch"],
                        help="--latency-only: the preset timed against PatchCore")
    parser.add_argument("--score-timesteps", type=int, nargs="+", default=None,
                        help="--latency-only: the feature preset's scoring passes instead of its own")
    parser.add_argument("--openvino-precisions", nargs="+", default=["f32", "bf16"], choices=["f32", "bf16"],
                        help="OpenVINO inference precisions timed (bf16 does not compile under an AVX2 cap)")
    parser.add_argument("--steps-only", action="store_true",
                        help="only --preset's training step (its batch from the YAML), fp32 and bf16 autocast")
    args = parser.parse_args()
    torch.manual_seed(0)
    size, repeats = args.size, args.repeats
    image = torch.rand(1, 3, size, size)
    if args.steps_only:
        steps_only(args)
        return
    rows = []
    presets = ((args.preset, 16),) if args.latency_only else (("diffad", 8), ("diffad_feature", 16))
    for name, batch in presets:
        model = preset(name, size, args.score_timesteps if args.latency_only else None)
        for bf16 in () if args.latency_only else (False, True):
            seconds = train_step_seconds(model, batch, size, bf16, repeats)
            rows.append(
                {"what": "train step", "model": name, "batch": batch, "bf16_autocast": bf16, "seconds": seconds},
            )
        model.eval()
        for bf16 in (False, True):
            def score(model: DiffAD = model, bf16: bool = bf16) -> object:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return model(image)

            rows.append({"what": "test latency, torch", "model": name, "bf16_autocast": bf16,
                         "seconds": latency_seconds(score, repeats)})
        if name != "diffad":
            rows.extend({"what": f"test latency, OpenVINO {precision}", "model": name,
                         "seconds": openvino_latency(model, image, precision, repeats)}
                        for precision in args.openvino_precisions)
    patchcore = lite0_patchcore((size, size)).eval()
    patchcore.model.memory_bank = torch.randn(args.bank, sum(patchcore.model.feature_extractor.out_dims))
    rows.append({"what": "test latency, torch", "model": "patchcore", "bank": args.bank,
                 "seconds": latency_seconds(lambda: patchcore(image), repeats)})
    result = {
        "size": size,
        "threads": torch.get_num_threads(),
        "preset_score_timesteps": list(preset(presets[-1][0], 32, args.score_timesteps).model.score_timesteps),
        "machine": platform.processor() or platform.machine(),
        "cpu": cpu_description(),
        "rows": rows,
        "command": recorded_command(sys.argv, REPO),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.preset.removeprefix('diffad_')}_preset_latency" if args.latency_only else "feature_preset_speed"
    if args.latency_only and args.score_timesteps:
        stem += f"_{len(args.score_timesteps)}_passes"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(row)
    plot(rows, args.out / f"{stem}.png")


def steps_only(args: argparse.Namespace) -> None:
    """Time ``--preset``'s training step at its own batch (``data.train_batch_size``) in fp32 and bf16 autocast;
    write ``<out>/<space>_preset_steps.json``."""
    config = yaml.safe_load((REPO / "configs" / f"{args.preset}.yaml").read_text())
    batch = config["data"]["train_batch_size"]
    model = preset(args.preset, args.size)
    rows = [
        {"what": "train step", "model": args.preset, "batch": batch, "bf16_autocast": bf16,
         "seconds": train_step_seconds(model, batch, args.size, bf16, args.repeats)}
        for bf16 in (False, True)
    ]  # fmt: skip
    result = {"size": args.size, "threads": torch.get_num_threads(), "cpu": cpu_description(), "rows": rows,
              "command": recorded_command(sys.argv, REPO)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.preset.removeprefix('diffad_')}_preset_steps.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(row)


def plot(rows: list[dict], path: Path) -> None:
    """Horizontal bars of every measured time."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}: {r['what']}" + (" (bf16)" if r.get("bf16_autocast") else "") for r in rows]
    figure, axis = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    axis.barh(labels, [r["seconds"] for r in rows])
    axis.set_xscale("log")
    axis.set_xlabel("seconds (median)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
