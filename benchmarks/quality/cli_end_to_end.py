# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""A preset end to end through anomalib's CLI on one category: train (fit and test), export, raw images scored.

Runs the user's command ``anomalib train --config <preset> --data MVTec --data.root <root> --data.category
<category> --data.val_split_mode from_train`` (results under ``results/`` as for a user), exports the trained
checkpoint with ``anomalib export --model DiffAD`` (the arguments come from the checkpoint) to torch and
OpenVINO, and scores raw test images (their own sizes, one per defect type and a normal one) through
``TorchInferencer``, ``OpenVINOInferencer`` (float32) and the Lightning path (``Engine.predict`` on the same
folder). Writes the test metrics the CLI printed, the times, and the largest difference of each inferencer's
scores and maps from the Lightning path.

Example (Magnetic Tile Defects):
    python benchmarks/quality/cli_end_to_end.py --root ../shared/data/magnetic_tile --category magnetic_tile \
        --config configs/diffad_patch.yaml --out benchmarks/quality/results/cli_magnetic_tile_patch.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from anomalib.deploy import OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from PIL import Image

from anomalib_diffad import DiffAD
from diffad_tools.provenance import recorded_command, relative_path
from diffad_tools.report import printed_metrics

REPO = Path(__file__).resolve().parents[2]
ANOMALIB = Path(sys.executable).parent / "anomalib"
FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


def anomalib(*args: str) -> tuple[str, float]:
    """Run the ``anomalib`` CLI from the repository root; its output and wall time. Raises on failure."""
    start = time.perf_counter()
    result = subprocess.run([str(ANOMALIB), *args], cwd=REPO, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode:
        sys.exit(f"anomalib {' '.join(args)} failed:\n{output[-3000:]}")
    return output, time.perf_counter() - start


def raw_images(test_dir: Path, folder: Path) -> list[Path]:
    """The first image of each test folder (a normal one and one per defect type), copied at its own size."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = []
    for kind in sorted(path for path in test_dir.iterdir() if path.is_dir()):
        first = sorted(kind.iterdir())[0]
        chosen.append(Path(shutil.copy(first, folder / f"{kind.name}_{first.name}")))
    return chosen


def largest_differences(inferencer: OpenVINOInferencer | TorchInferencer, reference: dict) -> dict[str, float]:
    """Largest absolute difference of the inferencer's scores and maps from the Lightning path's."""
    worst = {"pred_score": 0.0, "anomaly_map": 0.0}
    for path, expected in reference.items():
        result = inferencer.predict(path)
        for key, largest in worst.items():
            value = np.asarray(getattr(result, key), dtype=np.float64).reshape(-1)
            worst[key] = max(largest, float(np.abs(value - expected[key].reshape(-1)).max()))
    return worst


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/diffad_patch.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not (args.root / args.category).is_dir():
        print(f"SKIP: {args.root / args.category} not found")
        return
    root, config = relative_path(args.root, REPO), relative_path(args.config, REPO)
    train = ["train", "--config", config, "--data", "MVTec", "--data.root", root, "--data.category", args.category,
             "--data.val_split_mode", "from_train"]  # fmt: skip
    output, train_seconds = anomalib(*train)
    run = REPO / "results" / "DiffAD" / "MVTecAD" / args.category / "latest"
    ckpt = (run / "weights" / "lightning" / "model.ckpt").resolve()
    work = Path(tempfile.mkdtemp(prefix="cli_end_to_end_"))
    exports, export_seconds = {}, {}
    for export_type in ("torch", "openvino"):
        export = ["export", "--model", "DiffAD", "--ckpt_path", str(ckpt), "--export_type", export_type,
                  "--export_root", str(work / export_type)]  # fmt: skip
        _, export_seconds[export_type] = anomalib(*export)
        suffix = ".pt" if export_type == "torch" else ".xml"
        exports[export_type] = next((work / export_type).rglob(f"*{suffix}"))
    images = raw_images(args.root / args.category / "test", work / "raw")
    batches = Engine(logger=False, default_root_dir=work).predict(
        model=DiffAD.load_from_checkpoint(ckpt), data_path=work / "raw",
    )
    reference = {
        path: {key: getattr(batch, key)[index].detach().float().cpu().numpy() for key in ("pred_score", "anomaly_map")}
        for batch in batches
        for index, path in enumerate(batch.image_path)
    }
    os.environ["TRUST_REMOTE_CODE"] = "1"  # the torch export is a pickled graph of this package's modules
    os.chdir(work)  # OpenVINOInferencer writes ./openvino_cache
    result = {
        "command": recorded_command(sys.argv, REPO),
        "train_command": "anomalib " + " ".join(train),
        "config": config,
        "test_metrics_printed": printed_metrics(output),
        "train_and_test_seconds": round(train_seconds, 1),
        "export_seconds": {key: round(value, 1) for key, value in export_seconds.items()},
        "raw_images": {image.name: list(Image.open(image).size) for image in images},
        "largest_difference_from_lightning": {
            "TorchInferencer": largest_differences(TorchInferencer(exports["torch"], device="cpu"), reference),
            "OpenVINOInferencer (f32)": largest_differences(
                OpenVINOInferencer(exports["openvino"], device="CPU", config=FP32), reference,
            ),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (REPO / args.out if not args.out.is_absolute() else args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
