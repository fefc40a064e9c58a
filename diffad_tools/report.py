# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Collect what ``anomalib train`` wrote for each category into one result table and one summary picture.

Usage: ``python -m diffad_tools.report results/demo --data-root datasets/textures`` reads
``results/demo/logs/<category>/version_*/metrics.csv`` (the newest version of each category, logged with a
``CSVLogger``) and writes ``results.csv`` and ``results.md`` next to them. With ``--data-root`` (the MVTec AD
layout folder the runs used) it also writes ``summary.png``: per category its metric row and a few test images,
normal and defective, each with its ground truth and the anomaly map of the category's checkpoint
(``results/demo/DiffAD/<dataset>/<category>/latest/weights/lightning/model.ckpt``).
"""

import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from diffad_tools.anomalib_cli import ignore_foreign_deprecations

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Score")
SUMMARY_ROWS = ("image", "ground truth", "anomaly map")
"""The rows of each category's block in ``summary.png``; its columns are the example images."""
PANEL_INCHES = 1.5
SUMMARY_DPI = 100


@dataclass
class Example:
    """One scored test image: ``image`` ``(H, W, 3)`` and ``mask`` ``(H, W)`` in ``[0, 1]``, normalized map."""

    kind: str
    image: np.ndarray
    mask: np.ndarray
    anomaly_map: np.ndarray
    score: float


def printed_metrics(output: str) -> dict[str, float]:
    """The test metrics of Lightning's results table in a run's printed output (``│ image_AUROC │ 0.75 │``)."""
    pattern = re.compile(r"^\W*(\w+)\W+(-?\d+(?:\.\d+)?(?:e-?\d+)?)\W*$")
    rows = (pattern.match(line.strip()) for line in output.splitlines())
    return {row[1]: float(row[2]) for row in rows if row and row[1] in METRICS}


def newest_metrics_file(category_dir: Path) -> Path | None:
    """The ``metrics.csv`` of the highest ``version_N`` under a category's log folder."""
    versions = sorted(category_dir.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    return versions[-1] if versions else None


def test_metrics(metrics_file: Path) -> dict[str, float]:
    """The test metrics of one run: the last logged value of each of :data:`METRICS`."""
    values: dict[str, float] = {}
    with metrics_file.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(row[key]) for key in METRICS if row.get(key)})
    return values


def collect(output_dir: Path) -> list[dict[str, str | float]]:
    """One row per category that has logged test metrics."""
    rows: list[dict[str, str | float]] = []
    for category_dir in sorted(p for p in (output_dir / "logs").glob("*") if p.is_dir()):
        metrics_file = newest_metrics_file(category_dir)
        if metrics_file is not None and (values := test_metrics(metrics_file)):
            rows.append({"category": category_dir.name, **values})
    return rows


def write_tables(rows: list[dict[str, str | float]], output_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and a Markdown ``results.md`` (with a mean row) into ``output_dir``."""
    if not rows:
        msg = f"No test metrics found under {output_dir / 'logs'}; did the runs finish their test stage?"
        raise FileNotFoundError(msg)
    csv_path, md_path = output_dir / "results.csv", output_dir / "results.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["category", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    mean = {key: sum(float(row.get(key, float("nan"))) for row in rows) / len(rows) for key in METRICS}
    lines = ["| category | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for row in [*rows, {"category": "**mean**", **mean}]:
        cells = [f"{float(row[key]):.3f}" if key in row else "n/a" for key in METRICS]
        lines.append(f"| {row['category']} | " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def example_files(category_root: Path, normal: int = 2, defective: int = 4) -> list[tuple[str, Path, Path | None]]:
    """``(kind, image, mask)`` of the first ``normal`` good test images and of the first image of each defect
    type (up to ``defective`` types), in an MVTec AD layout category folder."""
    test = category_root / "test"
    files: list[tuple[str, Path, Path | None]] = [("good", path, None) for path in sorted(test.glob("good/*.png"))]
    files = files[:normal]
    for defect in sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != "good")[:defective]:
        image = min(test.glob(f"{defect}/*.png"))
        files.append((defect, image, category_root / "ground_truth" / defect / f"{image.stem}_mask.png"))
    return files


def checkpoint(output_dir: Path, category: str) -> Path:
    """The checkpoint ``anomalib train`` wrote for ``category`` (its ``latest`` version)."""
    found = sorted(output_dir.glob(f"DiffAD/*/{category}/latest/weights/lightning/model.ckpt"))
    if not found:
        msg = f"No checkpoint of {category!r} under {output_dir}/DiffAD/*/{category}/latest/weights/lightning/"
        raise FileNotFoundError(msg)
    return found[0]


def score_examples(ckpt: Path, files: list[tuple[str, Path, Path | None]]) -> list[Example]:
    """Score the images with the checkpoint's model as ``anomalib test`` does (pre-processing, normalization)."""
    import torch  # noqa: PLC0415

    from anomalib_diffad import DiffAD  # noqa: PLC0415

    model = DiffAD.load_from_checkpoint(ckpt, map_location="cpu").eval()
    images = [np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255 for _, path, _ in files]
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        output = model(batch)
    examples = []
    for (kind, _, mask_path), image, anomaly_map, score in zip(
        files, images, output.anomaly_map, output.pred_score, strict=True
    ):
        mask = np.zeros(image.shape[:2]) if mask_path is None else np.asarray(Image.open(mask_path).convert("L")) / 255
        examples.append(Example(kind, image, mask, anomaly_map.reshape(anomaly_map.shape[-2:]).numpy(), float(score)))
    return examples


def metric_line(row: dict[str, str | float]) -> str:
    """``"brick: image_AUROC 0.856 | ... "``, the category's row of ``results.md``."""
    cells = [f"{key} {float(row[key]):.3f}" for key in METRICS if key in row]
    return f"{row['category']}: " + " | ".join(cells)


def summary_figure(rows: list[dict[str, str | float]], examples: dict[str, list[Example]]) -> Figure:
    """One block per category: its metric row as title, then :data:`SUMMARY_ROWS` x its example images."""
    columns = max(len(examples[str(row["category"])]) for row in rows)
    figure = Figure(  # no pyplot: no global backend, nothing to close
        figsize=(columns * PANEL_INCHES + 0.4, len(rows) * (len(SUMMARY_ROWS) * PANEL_INCHES + 0.5) + 0.4),
        dpi=SUMMARY_DPI,
        layout="constrained",
    )
    figure.suptitle("DiffAD on the test images: anomaly maps normalized (0 to 1, threshold 0.5), image score above")
    blocks = np.atleast_1d(figure.subfigures(len(rows), 1))
    for block, row in zip(blocks, rows, strict=True):
        block.suptitle(metric_line(row), fontsize=9)
        axes = block.subplots(len(SUMMARY_ROWS), columns, squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        for column, example in enumerate(examples[str(row["category"])]):
            axes[0, column].imshow(example.image)
            axes[0, column].set_title(example.kind, fontsize=8)
            axes[1, column].imshow(example.mask, cmap="gray", vmin=0, vmax=1)
            axes[2, column].imshow(example.anomaly_map, cmap="jet", vmin=0, vmax=1)
            axes[2, column].set_title(f"score {example.score:.2f}", fontsize=8)
        for axis, label in zip(axes[:, 0], SUMMARY_ROWS, strict=True):
            axis.set_ylabel(label, fontsize=8)
    return figure


def write_summary(rows: list[dict[str, str | float]], output_dir: Path, data_root: Path) -> Path:
    """Score each category's example images with its checkpoint and write ``summary.png`` into ``output_dir``."""
    examples = {
        str(row["category"]): score_examples(
            checkpoint(output_dir, str(row["category"])), example_files(data_root / str(row["category"]))
        )
        for row in rows
    }
    figure = summary_figure(rows, examples)
    path = output_dir / "summary.png"
    figure.savefig(path, dpi=SUMMARY_DPI)
    return path


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the --default_root_dir of the runs (with logs/ inside)")
    parser.add_argument("--data-root", type=Path, help="the runs' dataset root (MVTec AD layout): write summary.png")
    args = parser.parse_args()
    ignore_foreign_deprecations()  # as the anomalib CLI does: the summary loads the models through anomalib
    rows = collect(args.output_dir)
    _, md_path = write_tables(rows, args.output_dir)
    print(md_path.read_text())
    if args.data_root is not None:
        print(f"summary picture: {write_summary(rows, args.output_dir, args.data_root)}")
    for folder in sorted(args.output_dir.glob("DiffAD/*/*/latest/images")):
        print(f"all test images: {folder}")


if __name__ == "__main__":
    main()
