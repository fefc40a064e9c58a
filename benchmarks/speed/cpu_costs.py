# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""What a DiffAD training step and a scored image cost on the CPU it runs on, for the choices of the CPU preset.

Measures, with the default preset's UNet: the training step (batch 8) on full 256 px images vs random
128/64 px crops; scoring one image at 128 and 256 px with 1 or 3 timesteps; fp32 eager vs bf16 autocast
vs channels-last; and the CPU's fp32 matmul peak for reference. Writes a JSON and a bar plot.

Example:
    python benchmarks/speed/cpu_costs.py --out benchmarks/speed/results
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import torch
import yaml

mpl.use("Agg")
import matplotlib.pyplot as plt

from anomalib_diffad import DiffAD
from diffad_tools.provenance import recorded_command

REPO = Path(__file__).resolve().parents[2]


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_gflops(size: int = 2048) -> float:
    """Measured fp32 matrix-multiply throughput in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b) / 1e9


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    args = parser.parse_args()
    preset = yaml.safe_load((REPO / "configs" / "diffad.yaml").read_text())["model"]["init_args"]
    results: dict[str, float] = {"matmul_gflops": round(matmul_gflops(), 1)}

    for crop in (None, 128, 64):
        space = preset["space"] | {"init_args": preset["space"]["init_args"] | {"train_crop_size": crop}}
        model = DiffAD(**(preset | {"space": space, "image_size": 256, "pretrained_weights": None}))
        optimizer = torch.optim.AdamW(model.model.denoiser.parameters(), lr=1e-3)
        images = torch.rand(8, 3, 256, 256) * 2 - 1
        model.model.train()

        def step(
            model: DiffAD = model,
            optimizer: torch.optim.Optimizer = optimizer,
            images: torch.Tensor = images,
        ) -> None:
            loss = model.loss(model.model(images))["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.model.update_ema(0.997)

        results[f"train_step_b8_{'full256' if crop is None else f'crop{crop}'}_s"] = round(median_seconds(step), 3)

    for size in (128, 256):
        for steps in ((20,), (20, 201, 401)):
            model = DiffAD(**(preset | {"image_size": size, "score_timesteps": steps, "pretrained_weights": None}))
            model.eval()
            image = torch.rand(1, 3, size, size) * 2 - 1
            key = f"score_{size}px_{len(steps)}t"
            with torch.no_grad():
                results[f"{key}_fp32_s"] = round(median_seconds(lambda m=model, x=image: m.model(x)), 3)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    results[f"{key}_bf16_s"] = round(median_seconds(lambda m=model, x=image: m.model(x)), 3)
                channels_last = model.to(memory_format=torch.channels_last)
                image_cl = image.contiguous(memory_format=torch.channels_last)
                results[f"{key}_channels_last_s"] = round(
                    median_seconds(lambda m=channels_last, x=image_cl: m.model(x)),
                    3,
                )

    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"results": results, "threads": torch.get_num_threads(), "command": recorded_command(sys.argv, REPO)}
    (args.out / "cpu_costs.json").write_text(json.dumps(payload, indent=2) + "\n")
    timings = {key: value for key, value in results.items() if key.endswith("_s")}
    figure, axis = plt.subplots(figsize=(9, 5))
    axis.barh(list(timings), list(timings.values()))
    axis.set_xlabel("seconds (median of 3)")
    axis.set_title(f"DiffAD default preset on the CPU ({torch.get_num_threads()} threads)")
    figure.tight_layout()
    figure.savefig(args.out / "cpu_costs.png", dpi=100)
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
