# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Turn the JSON results of ``diffad_quality.py`` into ``summary.md`` (tables) and ``summary.png`` (bars).

Example:
    python benchmarks/quality/summarize.py benchmarks/quality/results
"""

import argparse
import json
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    folder = parser.parse_args().results
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    lines = [
        "| dataset | category | px | crop | steps | train min | peak GiB | " + " | ".join(METRICS) + " |",
        "|---" * (7 + len(METRICS)) + "|",
    ]
    for run in runs:
        metrics = " | ".join(f"{run['test_metrics'][key]:.3f}" for key in METRICS)
        lines.append(
            f"| {run['dataset']} | {run['category']} | {run['image_size']} | {run['train_crop_size']} | "
            f"{run['train_steps']} | {run['train_seconds'] / 60:.1f} | {run['peak_rss_gib_total']:.1f} | {metrics} |",
        )
    lines += ["", "Scoring ablation on the same trained weights (fusion calibrated on the test normals):", ""]
    lines += ["| dataset | category | timesteps | alpha | sigma | " + " | ".join(METRICS) + " |"]
    lines += ["|---" * (5 + len(METRICS)) + "|"]
    for run in runs:
        for row in run["scoring_ablation"]:
            metrics = " | ".join(f"{row[key]:.3f}" for key in METRICS)
            steps = ",".join(map(str, row["timesteps"]))
            lines.append(f"| {run['dataset']} | {run['category']} | {steps} | {row['alpha']} | {row['sigma']} | {metrics} |")
    lines += ["", "Commands:", ""] + [f"    {run['command']}" for run in runs]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(runs)), 4))
    width = 0.8 / len(METRICS)
    for index, key in enumerate(METRICS):
        positions = [i + index * width for i in range(len(runs))]
        axis.bar(positions, [run["test_metrics"][key] for run in runs], width, label=key)
    axis.set_xticks([i + width for i in range(len(runs))])
    axis.set_xticklabels([f"{run['dataset'].split(' (')[0]}\n{run['category']}" for run in runs], fontsize=8)
    axis.set_ylim(0, 1)
    axis.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
    axis.set_title("DiffAD, default CPU preset")
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(folder / "summary.png", dpi=100)
    print((folder / "summary.md").read_text())


if __name__ == "__main__":
    main()
