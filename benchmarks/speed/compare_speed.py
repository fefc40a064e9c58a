# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Inference latency, throughput and peak memory on the CPU it runs on: DiffAD (torch eager; OpenVINO FP32, FP16, INT8),
PatchCore and DRAEM; DiffAD's FLOPs per image against the measured matmul peak; and, given a trained DiffAD
checkpoint and its data, how much each export precision changes the outputs and the metrics.

Every measurement runs in its own process (``--worker``), so each peak RSS is its own; torch and OpenVINO use
the same number of threads (``OMP_NUM_THREADS``, default: the cores). Writes
``<out>/speed.json``, ``speed.csv`` and ``speed.png``.

Example (the checkpoint: any DiffAD trained at 128 px on the built-in brick, e.g. by ``scripts/demo.sh``):
    python benchmarks/speed/compare_speed.py \
        --ckpt results/demo/DiffAD/MVTecAD/brick/latest/weights/lightning/model.ckpt \
        --data-root datasets/textures --category brick --out benchmarks/speed/results
"""

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from benchmarks.speed.cpu_costs import matmul_gflops, median_seconds
from diffad_tools.provenance import recorded_command

REPO = Path(__file__).resolve().parents[2]
OV_VARIANTS = ("openvino_fp32", "openvino_fp16", "openvino_int8", "openvino_int8_ptq")


def datamodule(args: argparse.Namespace, size: int):  # noqa: ANN201
    """MVTecAD on ``--data-root``/``--category`` with images resized to ``size``; validation (INT8 PTQ's
    calibration images) is 20% of the training normals, never the test set."""
    from anomalib.data import MVTecAD
    from torchvision.transforms.v2 import Resize

    data = MVTecAD(
        root=args.data_root, category=args.category, train_batch_size=8, eval_batch_size=8, num_workers=0,
        augmentations=Resize((size, size), antialias=True), val_split_mode="from_train", val_split_ratio=0.2,
    )
    data.setup()
    return data


def build_diffad(args: argparse.Namespace, size: int):  # noqa: ANN201
    """The default preset at ``size``; with ``--ckpt`` its trained weights and calibration (size-independent)."""
    from anomalib_diffad import DiffAD

    preset = yaml.safe_load((REPO / "configs" / "diffad.yaml").read_text())["model"]["init_args"]
    model = DiffAD(**(preset | {"image_size": size, "pretrained_weights": None}))
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def build_baseline(name: str, args: argparse.Namespace, size: int):  # noqa: ANN201
    """PatchCore (Lite0, memory bank fitted on the train images) or DRAEM (untrained: timing only)."""
    from anomalib.engine import Engine
    from anomalib.models import Draem

    from diffad_tools.baselines import lite0_patchcore

    if name == "draem":
        return Draem(dtd_dir=tempfile.mkdtemp(), pre_processor=Draem.configure_pre_processor((size, size))).eval()
    model = lite0_patchcore((size, size))
    Engine(logger=False, default_root_dir=tempfile.mkdtemp(), accelerator="cpu", enable_progress_bar=False,
           limit_val_batches=0).fit(model, datamodule=datamodule(args, size))
    return model.eval()


def openvino_runner(model, variant: str, args: argparse.Namespace, size: int) -> Callable[[torch.Tensor], dict]:  # noqa: ANN001
    """Export ``model`` at ``size`` with the variant's precision; return a batch -> outputs function."""
    import openvino as ov
    from anomalib.deploy import CompressionType

    compression = {
        "openvino_fp32": None, "openvino_fp16": CompressionType.FP16,
        "openvino_int8": CompressionType.INT8, "openvino_int8_ptq": CompressionType.INT8_PTQ,
    }[variant]
    needs_data = compression == CompressionType.INT8_PTQ
    xml = model.to_openvino(
        tempfile.mkdtemp(), input_size=(size, size), compression_type=compression,
        datamodule=datamodule(args, size) if needs_data else None,
    )
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    names = [output.get_any_name() for output in compiled.outputs]

    def run(images: torch.Tensor) -> dict:
        result = compiled(images.numpy())
        return {name: torch.from_numpy(result[output]) for name, output in zip(names, compiled.outputs, strict=True)}

    return run


def torch_runner(model) -> Callable[[torch.Tensor], dict]:  # noqa: ANN001
    """The whole ``AnomalibModule.forward`` (pre-processor, model, post-processor) in eager mode."""

    @torch.no_grad()
    def run(images: torch.Tensor) -> dict:
        return model(images)._asdict()

    return run


def quality(run: Callable[[torch.Tensor], dict], args: argparse.Namespace, size: int) -> dict:
    """Image/pixel AUROC of a runner on the test set, and its raw outputs for the parity comparison."""
    from types import SimpleNamespace

    from anomalib.metrics import AUROC

    scores, maps, labels, masks = [], [], [], []
    for batch in datamodule(args, size).test_dataloader():
        out = run(batch.image)
        scores.append(out["pred_score"].reshape(-1))
        maps.append(out["anomaly_map"].reshape(len(batch.image), size, size))
        labels.append(batch.gt_label)
        masks.append(batch.gt_mask.reshape(len(batch.image), size, size))
    batch = SimpleNamespace(
        pred_score=torch.cat(scores), anomaly_map=torch.cat(maps), gt_label=torch.cat(labels), gt_mask=torch.cat(masks),
    )
    metrics = {}
    aurocs = {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
    }
    for name, metric in aurocs.items():
        metric.update(batch)
        metrics[name] = round(float(metric.compute()), 4)
    return metrics | {"_scores": batch.pred_score, "_maps": batch.anomaly_map}


def worker(args: argparse.Namespace) -> dict:
    """One measurement: model ``args.model`` in ``args.variant`` at ``args.size`` px."""
    size = args.size
    record: dict = {"model": args.model, "variant": args.variant, "image_size": size}
    model = build_diffad(args, size) if args.model == "diffad" else build_baseline(args.model, args, size)
    start = time.perf_counter()
    run = torch_runner(model) if args.variant == "torch_eager" else openvino_runner(model, args.variant, args, size)
    record["prepare_s"] = round(time.perf_counter() - start, 1)
    one = torch.rand(1, 3, size, size)
    batch = torch.rand(args.batch, 3, size, size)
    record["latency_ms"] = round(1000 * median_seconds(lambda: run(one), args.repeats), 1)
    record["throughput_img_s"] = round(args.batch / median_seconds(lambda: run(batch), max(1, args.repeats // 2)), 2)
    if args.model == "diffad" and args.variant == "torch_eager":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(one)
        record["gflop_per_image"] = round(counter.get_total_flops() / 1e9, 2)
    if args.model == "diffad" and args.ckpt and args.data_root and size == args.quality_size:
        found = quality(run, args, size)
        record |= {key: value for key, value in found.items() if not key.startswith("_")}
        outputs = {"scores": found["_scores"], "maps": found["_maps"]}
        torch.save(outputs, Path(args.scratch) / f"{args.variant}_{size}.pt")
    record["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return record


def worker_args(args: argparse.Namespace) -> list[str]:
    """The options a measurement process needs."""
    options = ["--category", args.category, "--quality-size", str(args.quality_size)]
    options += ["--repeats", str(args.repeats), "--batch", str(args.batch)]
    options += ["--ckpt", str(args.ckpt)] if args.ckpt else []
    return options + (["--data-root", str(args.data_root)] if args.data_root else [])


def compare_outputs(rows: list[dict], scratch: Path) -> None:
    """Max |difference| of each DiffAD variant's normalized score and map against torch eager."""
    for row in rows:
        reference = scratch / f"torch_eager_{row['image_size']}.pt"
        other = scratch / f"{row['variant']}_{row['image_size']}.pt"
        if row["model"] == "diffad" and reference.exists() and other.exists() and row["variant"] != "torch_eager":
            ref, out = torch.load(reference), torch.load(other)
            row["max_abs_diff_score"] = float((ref["scores"] - out["scores"]).abs().max())
            row["max_abs_diff_map"] = float((ref["maps"] - out["maps"]).abs().max())


def plot(rows: list[dict], path: Path) -> None:
    """Per-image latency bars, one group per image size."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']} {r['variant']} {r['image_size']}px" for r in rows]
    figure, axis = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    axis.barh(labels, [r["latency_ms"] for r in rows])
    axis.set_xscale("log")
    axis.set_xlabel("latency per image, batch 1 (ms, log scale)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", type=Path, help="trained DiffAD checkpoint (default preset) for output/metric changes",
    )
    parser.add_argument(
        "--data-root", type=Path, help="MVTec-layout root for PatchCore's memory bank, INT8 calibration, metrics",
    )
    parser.add_argument("--category", default="brick")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--quality-size", type=int, default=128, help="size at which --ckpt's metrics are compared")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="batch for the throughput figure")
    parser.add_argument("--skip", nargs="*", default=[], help="measurements to leave out, as variant@size")
    parser.add_argument("--resume", action="store_true", help="keep the rows of speed_rows.jsonl and its --scratch")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "speed" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help="folder for the outputs compared between variants (default: a new one)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="speed_"))
    plan = [("diffad", variant) for variant in ("torch_eager", *OV_VARIANTS)]
    plan += [("patchcore", "torch_eager"), ("draem", "torch_eager")]
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "speed_rows.jsonl"  # one line per finished measurement: an interrupted run resumes
    rows = [json.loads(line) for line in partial.read_text().splitlines()] if args.resume and partial.exists() else []
    done_keys = {(row["model"], row["variant"], row["image_size"]) for row in rows}
    if not args.resume:
        partial.unlink(missing_ok=True)
    for size in args.sizes:
        for model, variant in plan:
            if (variant == "openvino_int8_ptq" and not args.data_root) or (model == "patchcore" and not args.data_root):
                continue
            if (model, variant, size) in done_keys or f"{variant}@{size}" in args.skip:
                continue
            command = [sys.executable, __file__, *worker_args(args), "--worker", "--model", model, "--variant", variant]
            command += ["--size", str(size), "--scratch", str(scratch)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"FAILED {model} {variant} {size}px:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
            with partial.open("a") as file:
                file.write(json.dumps(rows[-1]) + "\n")
            print(rows[-1], flush=True)
    compare_outputs(rows, scratch)
    peak = matmul_gflops()
    for row in rows:
        same_size = [r for r in rows if r["image_size"] == row["image_size"]]
        torch_row = next((r for r in same_size if r["model"] == row["model"] and r["variant"] == "torch_eager"), None)
        draem_row = next((r for r in rows if r["model"] == "draem" and r["image_size"] == row["image_size"]), None)
        if torch_row:
            row["speedup_vs_own_torch"] = round(torch_row["latency_ms"] / row["latency_ms"], 2)
        if draem_row:
            row["latency_vs_draem_torch"] = round(row["latency_ms"] / draem_row["latency_ms"], 2)
        gflop = next(
            (r.get("gflop_per_image") for r in same_size if r["model"] == "diffad" and r.get("gflop_per_image")), None,
        )
        if row["model"] == "diffad" and gflop:
            row["achieved_gflops"] = round(gflop / (row["latency_ms"] / 1000), 1)
            row["fraction_of_matmul_peak"] = round(row["achieved_gflops"] / peak, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "matmul_peak_gflops_fp32": round(peak, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "command": recorded_command(sys.argv, REPO),
        "rows": rows,
    }
    (args.out / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with (args.out / "speed.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "speed.png")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
