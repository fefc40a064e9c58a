# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""How fit time, peak memory and test latency grow with the number of training images: DiffAD's patch preset
against PatchCore (Lite0, coreset 1 % and 10 %) on the CPU it runs on.

For each count N of ``--counts`` the built-in ``--category`` texture is written with N normal training images
at ``--image-size`` px (and a few test images) under ``--data`` (kept: a later run reuses it). Each model is
then fitted on it through anomalib's Engine, one fit per subprocess (so its peak memory is its own) with
``--threads`` torch threads; the validation split comes from train (``val_split_mode from_train``, ratio 0.2)
as in ``benchmarks/quality/compare.py``, and nothing is tested.

- DiffAD patch: ``configs/diffad_patch.yaml``'s model at ``--image-size`` (``pretrained_weights: auto``), the
  preset's 1000 steps (``--max-steps``) of 2048 patch vectors each (8 images at 128 px, 2 at 256 px), precision
  from the hardware (``--precision`` overrides).
- PatchCore: ``diffad_tools.baselines.lite0_patchcore`` (the same Lite0 weights and layers) at each of
  ``--coreset-ratios``, batches of 8 images, float32.

Each row: the fit's seconds (``Engine.fit``: feature extraction and statistics, the steps or the coreset, the
validation), the peak resident memory of its process, PatchCore's memory-bank size, DiffAD's steps, and the
test latency: the median of ``--repeats`` calls of the fitted torch model on one image (eval mode, float32,
after a warm-up). A fit is killed when it has run ``--cap-minutes``: its row says ``"finished": false``, the
cap is a lower bound of its fit time and the memory it had reached one of its peak, and that model is not
fitted at larger N (``"skipped"``). A PatchCore row without a fit takes its latency from a memory bank of
random features of the coreset's size and dimension (``"latency_bank": "random, coreset size"``): the
nearest-neighbour search time depends only on them.

Writes ``<out>/scaling.json`` (rows; for each PatchCore, the N at which its fit time and its latency first exceed
DiffAD's, linear in log N between measured counts; the CPU, torch, command) and ``<out>/scaling.png`` (fit
time, peak memory and latency against N). The fits' logs: ``<data>/logs/``.

Example (about 1 to 1.5 hours with one thread on an idle core):
    python benchmarks/speed/scaling.py --counts 50 200 800 3200 --image-size 128 --cap-minutes 10 \
        --out benchmarks/speed/results
"""

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_diffad import DiffAD
from anomalib_diffad.precision import hardware_precision
from anomalib_diffad.spaces.unet import FEATURE_SPACE_STRIDE
from benchmarks.speed.cpu_costs import median_seconds
from diffad_tools.baselines import lite0_patchcore
from diffad_tools.callbacks import IdleCoreThreads, ReleaseFreedMemory
from diffad_tools.provenance import cpu_description, recorded_command
from diffad_tools.textures import TEXTURE_CATEGORIES, generate_texture_dataset

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "configs" / "diffad_patch.yaml"
PATCH_VECTORS_PER_STEP = 2048
"""Patch vectors in one DiffAD training step of the patch preset (2 images at 256 px)."""
PATCHCORE_BATCH = 8
STAGE_LIMIT_S = 600
"""Longest a worker may spend before its fit (imports, data, model) or after it (latency) before it is killed."""
POLL_S = 1.0
VAL_RATIO = 0.2


class ModelSpec(NamedTuple):
    """One model of the comparison: its key in the result file, its label, and PatchCore's coreset ratio."""

    key: str
    label: str
    coreset_ratio: float | None = None


class Crossing(NamedTuple):
    """The N at which a PatchCore's cost first exceeds DiffAD's (``None``: not found) and how it was found."""

    n: int | None
    how: str


class Ended(NamedTuple):
    """How a worker process ended (``done``, ``cap``, or what went wrong) and the peak memory it reached."""

    how: str
    peak_rss_gib: float


def model_specs(ratios: Sequence[float]) -> list[ModelSpec]:
    """DiffAD patch, then PatchCore at each coreset ratio."""
    patchcores = [ModelSpec(f"patchcore_{r:g}", f"PatchCore (coreset {r * 100:g} %)", r) for r in ratios]
    return [ModelSpec("diffad_patch", "DiffAD patch"), *patchcores]


def patch_batch_size(image_size: int, stride: int = FEATURE_SPACE_STRIDE) -> int:
    """Images per DiffAD step that hold :data:`PATCH_VECTORS_PER_STEP` patch vectors (one per ``stride`` px).

    Example:
        >>> patch_batch_size(128), patch_batch_size(256)
        (8, 2)
    """
    return max(1, PATCH_VECTORS_PER_STEP // (image_size // stride) ** 2)


def first_crossing(
    counts: Sequence[int],
    base: Sequence[float | None],
    other: Sequence[float | None],
    other_lower_bound: Sequence[bool] | None = None,
) -> Crossing:
    """The N at which ``other`` first exceeds ``base``, the difference taken as linear in log N between counts.

    Counts where either value is missing (``None``) are left out. A value of ``other`` that is a lower bound
    (a fit stopped at the cap) makes a crossing found with it an upper bound; one that does not exceed ``base``
    leaves the crossing unknown.

    Example:
        >>> first_crossing([100, 1000], [10.0, 10.0], [5.0, 15.0])
        Crossing(n=316, how='interpolated in log N')
        >>> first_crossing([100, 1000], [10.0, 10.0], [5.0, 6.0]).n is None
        True
    """
    bounds = other_lower_bound or [False] * len(counts)
    previous = None
    for count, value, other_value, bound in zip(counts, base, other, bounds, strict=True):
        if value is None or other_value is None:
            continue
        if other_value > value:
            if previous is None:
                return Crossing(count, "at or below the smallest N measured")
            count0, gap0 = previous  # base - other >= 0 at count0
            share = gap0 / (gap0 + other_value - value)
            n = math.exp(math.log(count0) + share * (math.log(count) - math.log(count0)))
            capped = ", at most: that fit stopped at the cap" if bound else ""
            return Crossing(round(n), f"interpolated in log N{capped}")
        if bound:
            return Crossing(None, "unknown: a fit stopped at the cap below the base value")
        previous = (count, value - other_value)
    return Crossing(None, "not within the measured N" if previous else "no N with both values")


def texture_root(args: argparse.Namespace, count: int) -> Path:
    """Folder of the texture with ``count`` training images (``<root>/<category>/...`` in MVTec AD layout)."""
    return args.data / f"{args.category}_{args.image_size}px_n{count}"


def write_texture(args: argparse.Namespace, count: int) -> Path:
    """Write the texture with ``count`` training normals, 4 normal and 4 defective test images (kept if there)."""
    root = texture_root(args, count)
    state = "kept" if (root / args.category).is_dir() else "wrote"
    start = time.perf_counter()
    generate_texture_dataset(
        root, categories=(args.category,), image_size=args.image_size, num_train=count, num_test_good=4,
        num_test_per_defect=1, seed=args.seed,
    )
    print(f"data: {state} {root / args.category} ({time.perf_counter() - start:.0f} s)", flush=True)
    return root


# --------------------------------------------------------------------------- #
# Worker: one fit (or one latency of a random memory bank) in its own process
# --------------------------------------------------------------------------- #
def run_folder(args: argparse.Namespace, key: str, count: int, random_bank: bool = False) -> Path:
    """Scratch folder of one worker: its stage marker, result and Engine files."""
    return args.data / "runs" / f"{key}_n{count}{'_random_bank' if random_bank else ''}"


def mark_stage(folder: Path, stage: str) -> None:
    """Tell the parent which stage started now (the cap applies to the fit only)."""
    (folder / "stage.json").write_text(json.dumps({"stage": stage, "since": time.time()}))


def peak_rss_gib() -> float:
    """Peak resident memory of this process and its children so far, in GiB (Linux reports KiB)."""
    kib = sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return kib / 2**20


def texture_datamodule(args: argparse.Namespace, count: int, batch_size: int) -> MVTecAD:
    """The texture with ``count`` training normals, validation split from train."""
    return MVTecAD(
        root=texture_root(args, count), category=args.category, train_batch_size=batch_size, eval_batch_size=8,
        num_workers=0, seed=args.seed, val_split_mode="from_train", val_split_ratio=VAL_RATIO,
    )


def build_model(spec: ModelSpec, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The model, and its Lightning precision and train batch size."""
    size = args.image_size
    if spec.coreset_ratio is not None:
        model = lite0_patchcore((size, size), spec.coreset_ratio)
        return model, {"precision": "32-true", "batch_size": PATCHCORE_BATCH}
    preset = yaml.safe_load(PRESET.read_text())
    steps = args.max_steps or preset["trainer"]["max_steps"]
    model = DiffAD(**preset["model"]["init_args"] | {"image_size": size, "max_steps": steps})
    precision = args.precision or hardware_precision("cpu")
    return model, {"precision": precision, "batch_size": patch_batch_size(size)}


def test_latency(model: torch.nn.Module, image_size: int, repeats: int) -> float:
    """Median seconds of the torch model in eval mode on one pre-processed random image, after a warm-up."""
    image = model.pre_processor.transform(torch.rand(1, 3, image_size, image_size))
    model.model.eval()
    with torch.no_grad():
        return median_seconds(lambda: model.model(image), repeats)


def fit_worker(spec: ModelSpec, args: argparse.Namespace, folder: Path) -> dict:
    """Fit one model through anomalib's Engine (the parent may stop it at the cap), then time its latency."""
    torch.manual_seed(args.seed)
    model, settings = build_model(spec, args)
    data = texture_datamodule(args, args.worker_count, settings["batch_size"])
    # DiffAD runs as its presets do (threads fitted to idle cores, freed buffers returned), PatchCore as anomalib's
    callbacks = [IdleCoreThreads(), ReleaseFreedMemory()] if spec.coreset_ratio is None else []
    engine = Engine(
        logger=False, default_root_dir=folder / "engine", accelerator="cpu", devices=1, callbacks=callbacks,
        precision=settings["precision"], enable_progress_bar=False, enable_model_summary=False,
    )
    mark_stage(folder, "fit")
    start = time.perf_counter()
    engine.fit(model=model, datamodule=data)
    record = {
        "finished": True,
        "fit_seconds": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "train_images": len(data.train_data),
        "train_batch_size": settings["batch_size"],
        "precision": settings["precision"],
    }
    if spec.coreset_ratio is None:
        record["steps"] = engine.trainer.global_step
    else:
        record["memory_bank"] = model.model.memory_bank.shape[0]
    (folder / "result.json").write_text(json.dumps(record))  # kept if the latency stage fails
    mark_stage(folder, "latency")
    latency = test_latency(model, args.image_size, args.repeats)
    return record | {"latency_seconds": round(latency, 5), "latency_bank": "fitted"}


def random_bank_worker(spec: ModelSpec, args: argparse.Namespace, folder: Path) -> dict:
    """Latency of PatchCore with a memory bank of random features, as many as its coreset would keep."""
    torch.manual_seed(args.seed)
    data = texture_datamodule(args, args.worker_count, PATCHCORE_BATCH)
    data.setup()
    size = args.image_size
    model = lite0_patchcore((size, size), spec.coreset_ratio)
    with torch.no_grad():  # in train mode the torch model returns one image's patch vectors
        patches = model.model.train()(model.pre_processor.transform(torch.rand(1, 3, size, size)))
    model.model.embedding_store.clear()
    bank = int(spec.coreset_ratio * patches.shape[0] * len(data.train_data))  # KCenterGreedy's coreset size
    model.model.memory_bank = torch.randn(bank, patches.shape[1])
    mark_stage(folder, "latency")
    return {
        "train_images": len(data.train_data),
        "memory_bank": bank,
        "latency_seconds": round(test_latency(model, size, args.repeats), 5),
        "latency_bank": "random, coreset size",
    }


def worker(args: argparse.Namespace) -> None:
    """Entry point of a worker process: write its record to its run folder's ``result.json``."""
    torch.set_num_threads(args.threads)
    spec = next(spec for spec in model_specs(args.coreset_ratios) if spec.key == args.worker)
    folder = run_folder(args, spec.key, args.worker_count, args.worker_random_bank)
    run = random_bank_worker if args.worker_random_bank else fit_worker
    record = run(spec, args, folder) | {"torch_threads": torch.get_num_threads()}
    (folder / "result.json").write_text(json.dumps(record))


# --------------------------------------------------------------------------- #
# Parent: workers under the cap, rows, crossings, plot
# --------------------------------------------------------------------------- #
def resident_peak_gib(pid: int) -> float:
    """Peak resident memory of a running process (``VmHWM``), in GiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 2**20 for line in status.splitlines() if line.startswith("VmHWM:")), 0.0)


def current_stage(folder: Path, default: tuple[str, float]) -> tuple[str, float]:
    """The stage a worker announced last and since when, or ``default`` before it announced one."""
    try:
        stage = json.loads((folder / "stage.json").read_text())
    except (OSError, ValueError):
        return default
    return stage["stage"], stage["since"]


def run_capped(command: list[str], folder: Path, log: Path, cap_s: float, threads: int) -> Ended:
    """Run one worker; kill it (and its process group) when its fit has run ``cap_s`` seconds, or when its set-up
    or latency stage has run :data:`STAGE_LIMIT_S`."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    stage, peak = ("set-up", time.time()), 0.0
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )
        try:
            while process.poll() is None:
                time.sleep(POLL_S)
                peak = max(peak, resident_peak_gib(process.pid))
                stage = current_stage(folder, stage)
                if time.time() - stage[1] > (cap_s if stage[0] == "fit" else STAGE_LIMIT_S):
                    return Ended("cap" if stage[0] == "fit" else f"killed in its {stage[0]} stage", peak)
        finally:  # at the cap, and when the parent stops (Ctrl-C): the worker's own session, all of it
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return Ended("done" if process.returncode == 0 else f"exit code {process.returncode}", peak)


def run_worker(spec: ModelSpec, count: int, args: argparse.Namespace, random_bank: bool = False) -> tuple[Ended, dict]:
    """Run one worker under the cap; return how it ended and the record it wrote (``{}``: none)."""
    folder = run_folder(args, spec.key, count, random_bank)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    options = [f"--worker={spec.key}", f"--worker-count={count}"] + (["--worker-random-bank"] if random_bank else [])
    log = args.data / "logs" / f"{folder.name}.log"
    ended = run_capped([sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], *options], folder, log,
                       args.cap_minutes * 60, args.threads)
    result = folder / "result.json"
    record = json.loads(result.read_text()) if result.is_file() else {}
    shutil.rmtree(folder, ignore_errors=True)
    if ended.how not in ("done", "cap"):
        print(f"  {folder.name}: {ended.how}, see {log}", flush=True)
    return ended, record


def measure(spec: ModelSpec, count: int, args: argparse.Namespace, capped: bool) -> dict:
    """The row of one model and count: its fit under the cap, or only its latency once it was capped before."""
    row = {"model": spec.key, "label": spec.label, "n": count}
    if capped:
        row |= {"finished": False, "skipped": "cap reached at a smaller N"}
    else:
        ended, record = run_worker(spec, count, args)
        row |= record
        if ended.how == "cap":
            row |= {
                "finished": False,
                "fit_seconds": args.cap_minutes * 60,
                "fit_seconds_is_lower_bound": True,
                "peak_rss_gib": round(ended.peak_rss_gib, 3),
                "peak_rss_is_lower_bound": True,
            }
        elif ended.how != "done":  # a record means the fit finished and its latency failed
            row |= {"error": ended.how} | ({} if record else {"finished": False})
    if spec.coreset_ratio is not None and not row.get("finished") and "error" not in row:
        _, record = run_worker(spec, count, args, random_bank=True)
        row |= record
    return row


def summary(row: dict) -> str:
    """One progress line's worth of a row."""
    if row.get("skipped"):
        fit = "fit skipped (cap reached at a smaller N)"
    elif row.get("fit_seconds_is_lower_bound"):
        fit = f"fit > {row['fit_seconds']:g} s (cap), peak > {row['peak_rss_gib']:.2f} GiB"
    elif row.get("finished"):
        fit = f"fit {row['fit_seconds']:.1f} s, peak {row['peak_rss_gib']:.2f} GiB"
    else:
        fit = f"failed: {row.get('error')}"
    parts = [fit]
    parts += [f"{row['steps']} steps"] if "steps" in row else []
    parts += [f"bank {row['memory_bank']}"] if "memory_bank" in row else []
    if row.get("latency_seconds") is not None:
        random = row.get("latency_bank") != "fitted"
        parts.append(f"latency {row['latency_seconds'] * 1e3:.1f} ms" + (" (random bank)" if random else ""))
    return ", ".join(parts)


def crossings(rows: list[dict], specs: list[ModelSpec], counts: list[int]) -> dict:
    """For each PatchCore, where its fit time and its latency first exceed DiffAD's."""
    def values(key: str, field: str, finished_only: bool) -> list:
        by_n = {row["n"]: row for row in rows if row["model"] == key}
        return [
            by_n[n].get(field) if n in by_n and (by_n[n].get("finished") or not finished_only) else None
            for n in counts
        ]

    results = {}
    for spec in specs[1:]:
        fit = first_crossing(
            counts, values("diffad_patch", "fit_seconds", True), values(spec.key, "fit_seconds", False),
            [bool(value) for value in values(spec.key, "fit_seconds_is_lower_bound", False)],
        )
        latency = first_crossing(
            counts, values("diffad_patch", "latency_seconds", False), values(spec.key, "latency_seconds", False),
        )
        results[spec.key] = {"fit_seconds": fit._asdict(), "latency_seconds": latency._asdict()}
    return results


def plot(rows: list[dict], specs: list[ModelSpec], cap_s: float, path: Path) -> None:
    """Fit time, peak memory and latency against N (log x), one line per model. Open markers: lower bounds (a
    fit stopped at the cap, drawn at the cap; the memory its process had reached) and the latency of a random
    memory bank."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("fit_seconds", "fit time (s)", "fit_seconds_is_lower_bound", "> cap"),
        ("peak_rss_gib", "peak memory (GiB)", "peak_rss_is_lower_bound", ">"),
        ("latency_seconds", "test latency, 1 image (s)", None, None),
    )
    counts = sorted({row["n"] for row in rows})
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for axis, (field, title, bound_field, bound_label) in zip(axes, panels, strict=True):
        for index, spec in enumerate(specs):
            colour = f"C{index}"
            points = [row for row in rows if row["model"] == spec.key and row.get(field) is not None]
            axis.plot([row["n"] for row in points], [row[field] for row in points], "-", color=colour, label=spec.label)
            for row in points:
                bound = row.get(bound_field) if bound_field else row.get("latency_bank") != "fitted"
                axis.plot(row["n"], row[field], "o", color=colour, markerfacecolor="none" if bound else colour)
                if bound and bound_label:
                    axis.annotate(bound_label, (row["n"], row[field]), xytext=(0, 14), textcoords="offset points",
                                  ha="center", color=colour, arrowprops={"arrowstyle": "<-", "color": colour})
        if field == "fit_seconds":
            axis.axhline(cap_s, color="grey", linestyle=":", linewidth=1)
            axis.text(0.99, cap_s, "cap", transform=axis.get_yaxis_transform(), color="grey", ha="right", va="top",
                      fontsize=8)
        axis.set_xscale("log")
        axis.margins(x=0.1)
        axis.set_xticks(counts, [str(count) for count in counts])
        axis.minorticks_off()
        if field == "peak_rss_gib":
            axis.set_ylim(bottom=0, top=axis.get_ylim()[1] * 1.15)  # room for the lower bounds' arrows
        else:
            axis.set_yscale("log")
            axis.set_ylim(top=axis.get_ylim()[1] * 1.5)
        axis.set_xlabel("training normals N (20 % of them held out for validation)")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.text(0.99, 0.01, "open markers: lower bounds (fit stopped at the cap); latency of a PatchCore without a "
                "fit, on a random memory bank of its coreset's size", ha="right", fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=100)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 200, 800, 3200], help="training normals N")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--category", default="brick", choices=TEXTURE_CATEGORIES)
    parser.add_argument("--coreset-ratios", type=float, nargs="+", default=[0.01, 0.1], help="PatchCore's coresets")
    parser.add_argument("--cap-minutes", type=float, default=10.0, help="a fit is killed after this long")
    parser.add_argument("--max-steps", type=int, default=None, help="DiffAD's training steps (default: the preset's)")
    parser.add_argument("--precision", default=None, help="DiffAD's Lightning precision (default: the hardware's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS) of each fit")
    parser.add_argument("--repeats", type=int, default=5, help="timed latency calls after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO / "datasets" / "scaling", help="textures, logs, scratch")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-random-bank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))  # runs run_capped's clean-up
    specs, counts = model_specs(args.coreset_ratios), sorted(set(args.counts))
    rows, capped = [], set()
    total, done = len(specs) * len(counts), 0
    for count in counts:
        write_texture(args, count)
        for spec in specs:
            row = measure(spec, count, args, spec.key in capped)
            if row.get("fit_seconds_is_lower_bound") or row.get("skipped"):
                capped.add(spec.key)
            rows.append(row)
            done += 1
            print(f"[{done}/{total}] {spec.label}, N={count}: {summary(row)}", flush=True)

    preset = yaml.safe_load(PRESET.read_text())
    result = {
        "category": args.category,
        "image_size": args.image_size,
        "threads": args.threads,
        "cap_minutes": args.cap_minutes,
        "counts": counts,
        "validation": f"val_split_mode from_train, ratio {VAL_RATIO}: train_images = N minus the held-out normals",
        "diffad": {
            "preset": PRESET.relative_to(REPO).as_posix(),
            "max_steps": args.max_steps or preset["trainer"]["max_steps"],
            "train_batch_size": patch_batch_size(args.image_size),
            "pretrained_weights": preset["model"]["init_args"]["pretrained_weights"],
        },
        "patchcore": {"builder": "diffad_tools.baselines.lite0_patchcore", "train_batch_size": PATCHCORE_BATCH},
        "latency": f"median of {args.repeats} calls of model.model(image) on one image, eval mode, float32, "
        "torch.no_grad, after one warm-up",
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "rows": rows,
        "crossings": crossings(rows, specs, counts),
        "command": recorded_command(sys.argv, REPO),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, specs, args.cap_minutes * 60, args.out / "scaling.png")
    print(json.dumps(result["crossings"], indent=2))
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
