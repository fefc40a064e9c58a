# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Collect the test metrics that ``anomalib train`` logged with a ``CSVLogger`` into one result table.

Usage: ``python -m anomalib_diffad.report results/demo`` reads ``results/demo/logs/<category>/version_*/
metrics.csv`` (the newest version of each category) and writes ``results.csv`` and ``results.md`` next to them.
"""

import argparse
import csv
from pathlib import Path

METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO", "pixel_F1Score")


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


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="the --default_root_dir of the runs (with logs/ inside)")
    output_dir = parser.parse_args().output_dir
    _, md_path = write_tables(collect(output_dir), output_dir)
    print(md_path.read_text())
    images = sorted(output_dir.glob("DiffAD/*/*/latest/images"))
    for folder in images:
        print(f"anomaly maps: {folder}")


if __name__ == "__main__":
    main()
