# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""One unified DiffAD for several categories vs one DiffAD per category.

The separate models are single-category DiffADs trained ``--steps`` steps each; a unified model is
one class-conditional DiffAD (``categories=...``) trained on a set of categories at once (``MultiCategory``)
for ``--steps`` times the number of categories, so both sides spend the same training compute. Each
``--diffad-sets`` entry (comma-separated categories) is one unified model; every category of a set also gets
its separate model. Both use the CPU preset (``configs/diffad.yaml``) at ``--image-size``; validation is 20% of
each category's training normals (never a test image); each model validates once after training (fusion
calibration on training images, thresholds; the unified model per category) and is tested with anomalib's
Evaluator, the unified model on each category in turn.

PatchCore and DRAEM are not run here. With normals-only validation, anomalib's own post-processor clamps their
maps and its metrics pass raw maps through a sigmoid; ``benchmarks/quality/compare.py`` compares them with
DiffAD on raw maps.

Each job runs in its own process and writes ``<out>/runs/<job>.json``; existing job files are kept unless
``--force``, so an interrupted run resumes. At the end ``unified.json``, ``unified.csv``, ``unified.md``
(table and command) and ``unified.png`` are written to ``--out``.

Example:
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/unified/compare_unified.py --steps 150 \
        --tire-root ../shared/data/mvtec3d
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TEXTURES = ("brick", "grass", "gravel")
TIRE = "tire"
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Score", "pixel_F1Score")


def dataset_root(args: argparse.Namespace, category: str) -> Path:
    """Root folder holding ``<category>/`` in MVTec AD layout."""
    return args.tire_root if category == TIRE else args.data


def dataset_name(category: str) -> str:
    """Dataset name to report."""
    return "MVTec 3D-AD tire (RGB)" if category == TIRE else "built-in textures"


def datamodule(args: argparse.Namespace, category: str):  # noqa: ANN201
    """anomalib ``MVTecAD`` datamodule of one category (MVTec AD layout)."""
    from anomalib.data import MVTecAD

    return MVTecAD(
        root=dataset_root(args, category),
        category=category,
        train_batch_size=args.batch_size,
        eval_batch_size=8,
        num_workers=0,
        seed=args.seed,
        val_split_mode="from_train",  # thresholds and DiffAD's calibration from training normals, never test images
        val_split_ratio=0.2,
    )


def multi(args: argparse.Namespace, categories: list[str]):  # noqa: ANN201
    """``MultiCategory`` over ``categories``."""
    from anomalib_diffad import MultiCategory

    return MultiCategory(
        [datamodule(args, category) for category in categories],
        train_batch_size=args.batch_size,
        eval_batch_size=8,
        num_workers=0,
        seed=args.seed,
    )


def build(args: argparse.Namespace, categories: list[str] | None, steps: int):  # noqa: ANN201
    """DiffAD (unified when ``categories`` is given) and the settings to record."""
    from anomalib_diffad import DiffAD

    preset = yaml.safe_load(args.config.read_text())["model"]["init_args"]
    preset |= {"image_size": args.image_size, "lr_anneal_steps": steps}
    if categories is not None:
        preset["categories"] = categories
    return DiffAD(**preset), {"preset": str(args.config.relative_to(REPO)), "train_steps_budget": steps}


def run_job(job: str, args: argparse.Namespace) -> list[dict]:
    """Fit and test one job (``<model>_separate_<category>`` or ``<model>_unified``); one row per category."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_diffad.unified import evaluate_per_category
    from diffad_tools.callbacks import IdleCoreThreads

    seed_everything(args.seed)
    _, mode, names = job.split("_", 2)
    categories = names.split("+")
    unified = mode == "unified"
    steps = args.steps * len(categories)
    model, settings = build(args, categories if unified else None, steps)
    data = multi(args, categories) if unified else datamodule(args, names)
    engine = Engine(
        logger=False,
        default_root_dir=Path(tempfile.mkdtemp(prefix=f"unified_{job}_")),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        callbacks=[IdleCoreThreads()],  # torch threads fitted to the idle cores, as in the CPU presets
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    train_seconds = time.perf_counter() - start
    engine.trainer.limit_val_batches = 1.0  # no validation during training: calibrate and set thresholds once, now
    engine.validate(model=model, datamodule=data)
    start = time.perf_counter()
    if unified:
        metrics = evaluate_per_category(engine, model, data)
    else:
        results = engine.test(model=model, datamodule=data)[0]
        metrics = {names: {key: float(value) for key, value in results.items()}}
    test_seconds = time.perf_counter() - start
    return [
        {
            "model": "DiffAD",
            "mode": mode,
            "category": category,
            "dataset": dataset_name(category),
            "categories_in_model": categories,
            "image_size": args.image_size,
            **{key: values.get(key) for key in METRICS},
            "train_steps": engine.trainer.global_step,
            "train_seconds": round(train_seconds, 1),
            "test_seconds_all_categories": round(test_seconds, 1),
            **settings,
        }
        for category, values in metrics.items()
    ]


def jobs(args: argparse.Namespace) -> list[str]:
    """All jobs: a separate DiffAD per category of the sets, then one unified DiffAD per set."""
    categories = dict.fromkeys(category for categories in args.diffad_sets for category in categories)
    separate = [f"diffad_separate_{category}" for category in categories]
    return separate + [f"diffad_unified_{'+'.join(categories)}" for categories in args.diffad_sets]


def category_set(text: str) -> list[str]:
    """Categories of one unified model from ``a,b,c``."""
    return [name for name in text.split(",") if name]


def trained_on(row: dict) -> str:
    """The categories of the row's model: its own for a separate model, ``a+b+...`` for a unified one."""
    return "+".join(row["categories_in_model"])


def series(row: dict) -> str:
    """``separate`` for a separate model's row, else the unified model's categories (``a+b+...``)."""
    return "separate" if row["mode"] == "separate" else trained_on(row)


def summarize(rows: list[dict], out: Path, command: str, args: argparse.Namespace) -> None:
    """Write ``unified.json``, ``unified.csv``, ``unified.md`` and ``unified.png``."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["model"], r["dataset"], r["category"], len(r["categories_in_model"])))
    (out / "unified.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    columns = ["model", "mode", "dataset", "category", "trained_on", *METRICS, "train_steps", "train_seconds"]
    with (out / "unified.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "trained_on": trained_on(row)} for row in rows)
    lines = [
        "# Unified model vs one model per category",
        "",
        f"Command (from the repository root, {platform.machine()}, {torch.get_num_threads()} torch thread):",
        "",
        f"    {command}",
        "",
        (
            f"Images at {args.image_size} px. DiffAD: `{args.config.relative_to(REPO)}`, {args.steps} steps per "
            f"separate model, {args.steps} x the number of categories for a unified model (same compute), "
            f"batch {args.batch_size}; one validation after training calibrates the fusion and the thresholds "
            "(per category for a unified model) on 20% of the training normals, never on test images. "
            "Metrics: anomalib's Evaluator on each category's test set (F1 at the model's thresholds)."
        ),
        "",
        (
            "| model | category | trained on | image AUROC | pixel AUROC | pixel AUPRO | image F1 | pixel F1 "
            "| train steps | train s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        values = " | ".join("-" if row[key] is None else f"{row[key]:.3f}" for key in METRICS)
        steps = "-" if row["train_steps"] is None else str(row["train_steps"])
        cost = f"{steps} | {row['train_seconds']:.0f}"
        lines.append(f"| {row['model']} | {row['category']} | {trained_on(row)} | {values} | {cost} |")
    lines += ["", "Means over each unified model's categories:", ""]
    lines += ["| model | categories | mode | image AUROC | pixel AUROC | pixel AUPRO | image F1 | pixel F1 |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for model in sorted({row["model"] for row in rows}):
        for unified in sorted({trained_on(row) for row in rows if row["model"] == model and row["mode"] == "unified"}):
            categories = unified.split("+")
            for mode in ("separate", "unified"):
                selected = [
                    row
                    for row in rows
                    if row["model"] == model and row["category"] in categories and series(row) in {mode, unified}
                ]
                selected = [row for row in selected if row["mode"] == mode]
                if len(selected) == len(categories):
                    means = " | ".join(f"{sum(row[key] for row in selected) / len(selected):.3f}" for key in METRICS)
                    lines.append(f"| {model} | {', '.join(categories)} | {mode} | {means} |")
    (out / "unified.md").write_text("\n".join(lines) + "\n")

    models = sorted({row["model"] for row in rows})
    panels = [(model, metric) for model in models for metric in ("pixel_AUROC", "pixel_AUPRO")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for axis, (model, metric) in zip(axes[0], panels, strict=True):
        selected = [row for row in rows if row["model"] == model]
        categories = sorted({row["category"] for row in selected})
        names = ["separate", *sorted({trained_on(row) for row in selected if row["mode"] == "unified"}, key=len)]
        width = 0.8 / len(names)
        for number, name in enumerate(names):
            values = {row["category"]: row[metric] for row in selected if series(row) == name}
            positions = [i + (number - (len(names) - 1) / 2) * width for i in range(len(categories))]
            label = name if name == "separate" else f"unified ({len(name.split('+'))})"
            axis.bar(positions, [values.get(category, 0.0) for category in categories], width, label=label)
        axis.set_xticks(range(len(categories)), categories)
        axis.set_ylim(0.0, 1.0)
        axis.set_title(f"{model}: {metric}")
        axis.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(out / "unified.png", dpi=110)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "datasets" / "textures_unified", help="built-in textures")
    parser.add_argument("--tire-root", type=Path, default=None, help="folder holding tire/ (MVTec 3D-AD RGB)")
    parser.add_argument(
        "--diffad-sets",
        nargs="+",
        type=category_set,
        default=None,
        help="categories of each unified DiffAD, comma-separated (default: the textures, and textures+tire)",
    )
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "diffad.yaml", help="DiffAD preset")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150, help="DiffAD steps per category")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=40, help="built-in textures: training images per category")
    parser.add_argument("--num-test-good", type=int, default=8)
    parser.add_argument("--num-test-per-defect", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rerun jobs whose JSON exists")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "unified" / "results")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.config = args.config.resolve()
    tire = args.tire_root is not None and (args.tire_root / TIRE).is_dir()
    if args.tire_root is not None and not tire:
        print(f"tire: {args.tire_root / TIRE} not found, left out")
    with_tire = [*TEXTURES, TIRE] if tire else list(TEXTURES)
    args.diffad_sets = args.diffad_sets or ([list(TEXTURES), with_tire] if tire else [with_tire])
    runs = args.out / "runs"
    if args.job:
        rows = run_job(args.job, args)
        (runs / f"{args.job}.json").write_text(json.dumps(rows, indent=2) + "\n")
        return

    from diffad_tools.provenance import recorded_command
    from diffad_tools.textures import generate_texture_dataset

    generate_texture_dataset(
        args.data,
        categories=TEXTURES,
        image_size=args.image_size,
        num_train=args.num_train,
        num_test_good=args.num_test_good,
        num_test_per_defect=args.num_test_per_defect,
        seed=args.seed,
    )
    runs.mkdir(parents=True, exist_ok=True)
    environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "1048576"}  # glibc otherwise keeps freed GBs mapped
    failed = []
    for job in jobs(args):
        if (runs / f"{job}.json").exists() and not args.force:
            print(f"{job}: kept {runs / f'{job}.json'}", flush=True)
            continue
        print(f"=== {job} ({time.strftime('%H:%M:%S')})", flush=True)
        if subprocess.run([sys.executable, *sys.argv, f"--job={job}"], check=False, env=environment).returncode:
            failed.append(job)
    rows = [row for path in sorted(runs.glob("*.json")) for row in json.loads(path.read_text())]
    threads = os.environ.get("OMP_NUM_THREADS", "")
    prefix = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " if threads else ""
    command = prefix + recorded_command(sys.argv, REPO)
    summarize(rows, args.out, command, args)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
