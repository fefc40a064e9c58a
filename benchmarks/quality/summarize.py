# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Turn ``compare.py``'s JSON results into ``summary.csv``/``summary.md`` (tables), ``summary.png`` (bars) and
``examples_<dataset>_<category>.png`` (example anomaly maps of every model side by side).

Example:
    python benchmarks/quality/summarize.py benchmarks/quality/results

Input images are drawn only for the built-in CC0 textures; for the other datasets (never committed: MVTec
3D-AD is CC BY-NC-SA) the grid shows the ground-truth masks and the maps only.
"""

import argparse
import csv
import json
from pathlib import Path

import matplotlib as mpl
import numpy as np

mpl.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

METRICS = (
    "image_AUROC", "pixel_AUROC", "pixel_AUPRO", "residual_pixel_AUROC", "residual_pixel_AUPRO",
    "image_F1Score", "pixel_F1Score",
)  # fmt: skip
MODEL_ORDER = ("DiffAD (patch)", "DiffAD (feature)", "DiffAD (pixel)", "PatchCore", "PaDiM", "DRAEM")


def load_runs(folder: Path) -> list[dict]:
    """All of ``compare.py``'s result records in ``folder`` (other JSON files skipped), ordered by dataset,
    category, then model."""
    records = ((path, json.loads(path.read_text())) for path in folder.glob("*.json"))
    runs = [record | {"stem": path.stem} for path, record in records if "test_metrics" in record]
    return sorted(runs, key=lambda r: (r["dataset"], r["category"], MODEL_ORDER.index(r["model"])))


def table_rows(runs: list[dict]) -> list[dict]:
    """One flat row per run: metrics, cost and settings."""
    return [
        {
            "dataset": run["dataset"],
            "category": run["category"],
            "model": run["model"],
            "image_size": run["image_size"],
            **{key: round(run["test_metrics"].get(key, float("nan")), 3) for key in METRICS},
            "train_steps": run["train_steps"],
            "train_min": round(run["train_seconds"] / 60, 1),
            "test_s_per_image": round(run["test_seconds"] / run["test_images"], 2),
            "peak_rss_gib": run["peak_rss_gib_total"],
        }
        for run in runs
    ]


def write_tables(runs: list[dict], folder: Path) -> None:
    """``summary.csv`` and ``summary.md`` (with DiffAD's scoring ablation and the commands)."""
    rows = table_rows(runs)
    with (folder / "summary.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|---" * len(rows[0]) + "|"]
    lines += ["| " + " | ".join(str(value) for value in row.values()) + " |" for row in rows]
    ablated = [run for run in runs if run.get("scoring_ablation")]
    if ablated:
        lines += [
            "",
            (
                "DiffAD scoring ablation on the same trained weights (fusion calibrated on the first 32 training "
                "images; threshold-free metrics on raw maps):"
            ),
            "",
        ]
        lines += ["| dataset | category | timesteps | alpha | sigma | normal map | " + " | ".join(METRICS[:3]) + " |"]
        lines += ["|---" * 9 + "|"]
        for run in ablated:
            for row in run["scoring_ablation"]:
                metrics = " | ".join(f"{row[key]:.3f}" for key in METRICS[:3])
                steps = ",".join(map(str, row["timesteps"]))
                subtract = "subtracted" if row.get("subtract_normal_map") else "off"
                lines.append(
                    f"| {run['dataset']} | {run['category']} | {steps} | {row['alpha']} | {row['sigma']} | {subtract} "
                    f"| {metrics} |",
                )
    lines += ["", "Commands (one per model; `compare.py` runs them all):", ""]
    lines += [f"    {run['command']}" for run in runs]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")


def plot_bars(runs: list[dict], path: Path) -> None:
    """Grouped bars: one panel per metric, one group per dataset/category, one bar per model."""
    groups = sorted({(run["dataset"], run["category"]) for run in runs})
    models = [model for model in MODEL_ORDER if any(run["model"] == model for run in runs)]
    figure, axes = plt.subplots(1, 3, figsize=(4 + 1.4 * len(groups) * 3, 3.6), sharey=True)
    width = 0.8 / len(models)
    for axis, key in zip(axes, METRICS[:3], strict=True):
        for index, model in enumerate(models):
            values = [
                next(
                    (
                        r["test_metrics"].get(key, 0.0)
                        for r in runs
                        if (r["dataset"], r["category"]) == g and r["model"] == model
                    ),
                    0.0,
                )
                for g in groups
            ]
            axis.bar([i + index * width for i in range(len(groups))], values, width, label=model)
        axis.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(groups))])
        axis.set_xticklabels([f"{d.split(' (')[0]}\n{c}" for d, c in groups], fontsize=7)
        axis.set_ylim(0, 1)
        axis.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
        axis.set_title(key)
    axes[0].legend(loc="lower left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def pick_examples(labels: np.ndarray, paths: np.ndarray) -> list[int]:
    """The first normal test image and the first image of every defect type."""
    chosen, seen = [], set()
    for index, path in enumerate(paths):
        kind = Path(str(path)).parent.name
        if kind not in seen:
            seen.add(kind)
            chosen.append(index)
    return sorted(chosen, key=lambda i: (labels[i], Path(str(paths[i])).parent.name))


def plot_examples(runs: list[dict], maps_dir: Path, path: Path, show_images: bool) -> None:
    """Rows: example test images; columns: input (when allowed), ground truth, each model's anomaly map."""
    files = {run["model"]: maps_dir / f"{run['stem']}.npz" for run in runs}
    maps = {model: np.load(file) for model, file in files.items() if file.exists()}
    if not maps:
        return
    first = next(iter(maps.values()))
    examples = pick_examples(first["gt_label"], first["image_path"])
    columns = (["input"] if show_images else []) + ["ground truth", *maps]
    figure, axes = plt.subplots(
        len(examples), len(columns), figsize=(1.9 * len(columns), 1.9 * len(examples)), squeeze=False,
    )
    for row, index in enumerate(examples):
        image_path = Path(str(first["image_path"][index]))
        panels = [np.asarray(Image.open(image_path).convert("RGB"))] if show_images else []
        panels.append(first["gt_mask"][index])
        for data in maps.values():
            values = data["anomaly_map"].astype(np.float32)
            low, high = np.percentile(values, [1, 99.9])  # one colour scale per model, over its whole test set
            panels.append(np.clip((values[index] - low) / (high - low + 1e-12), 0, 1))
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            gray = column == len(panels) - len(maps) - 1
            axis.imshow(panel, cmap=None if panel.ndim == 3 else ("gray" if gray else "jet"))
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
        axes[row, 0].set_ylabel(image_path.parent.name, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def slug_of(run: dict) -> str:
    """``<dataset>_<category>`` of a result file's stem (``mvtec3dad_tire_diffad_feature`` -> ``mvtec3dad_tire``)."""
    return "_".join(run["stem"].split("_")[:2])


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    folder = parser.parse_args().results
    runs = load_runs(folder)
    write_tables(runs, folder)
    plot_bars(runs, folder / "summary.png")
    for dataset, category in sorted({(run["dataset"], run["category"]) for run in runs}):
        group = [run for run in runs if (run["dataset"], run["category"]) == (dataset, category)]
        name = f"examples_{slug_of(group[0])}.png"
        show_images = dataset.lower().startswith("built-in")
        plot_examples(group, folder / "runs" / "maps", folder / name, show_images=show_images)
    print((folder / "summary.md").read_text())


if __name__ == "__main__":
    main()
