# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Does DiffAD inference stream? Resident memory after every batch of ``anomalib predict`` on many images.

Writes ``N`` normal texture images (the built-in generator), predicts them with the default preset through
``Engine.predict(..., return_predictions=False)`` (what ``anomalib predict`` does with its visualizer writing
one image per input), and records the process's current RSS after each batch. Memory that streams stays flat
after warm-up; the slope over the second half is reported in MiB per 100 images. Writes ``stream.json`` and
``stream.png``.

Example:
    python benchmarks/memory/stream.py --images 240 --image-size 128 --out benchmarks/memory/results
"""

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import matplotlib as mpl
import numpy as np
import yaml
from anomalib.data import PredictDataset
from anomalib.engine import Engine
from lightning.pytorch import Callback
from PIL import Image
from torch.utils.data import DataLoader

from anomalib_diffad import DiffAD
from diffad_tools.callbacks import ReleaseFreedMemory
from diffad_tools.provenance import recorded_command
from diffad_tools.textures import make_normal_image

mpl.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[2]
PAGE = resource.getpagesize()


def current_rss_mib() -> float:
    """Current (not peak) resident memory of this process, in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**20


class RssRecorder(Callback):
    """RSS after every predict batch, with the running image count."""

    def __init__(self) -> None:
        self.images: list[int] = []
        self.rss: list[float] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001, ARG002
        """Record one point."""
        self.images.append((self.images[-1] if self.images else 0) + len(batch.image))
        self.rss.append(current_rss_mib())


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "memory" / "results")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="stream_"))
    for index in range(args.images):
        image = make_normal_image("gravel", args.image_size, seed=1, index=index)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    preset = yaml.safe_load((REPO / "configs" / "diffad.yaml").read_text())["model"]["init_args"]
    model = DiffAD(**(preset | {"image_size": args.image_size, "pretrained_weights": None}))
    recorder = RssRecorder()
    # freed buffers go back to the system, as in the presets: RSS then follows the live tensors
    engine = Engine(logger=False, default_root_dir=folder / "out", callbacks=[recorder, ReleaseFreedMemory()],
                    enable_progress_bar=False)
    dataset = PredictDataset(folder)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=dataset.collate_fn)
    engine.predict(model=model, dataloaders=loader, return_predictions=False)

    half = len(recorder.images) // 2
    slope = np.polyfit(recorder.images[half:], recorder.rss[half:], 1)[0] * 100
    result = {
        "images": args.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rss_mib_first_batch": round(recorder.rss[0], 1),
        "rss_mib_half": round(recorder.rss[half], 1),
        "rss_mib_last": round(recorder.rss[-1], 1),
        "slope_mib_per_100_images_second_half": round(float(slope), 2),
        "visualizations_written": len(list((folder / "out").rglob("*.png"))),
        "rss_curve": [[n, round(r, 1)] for n, r in zip(recorder.images, recorder.rss, strict=True)],
        "command": recorded_command(sys.argv, REPO),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stream.json").write_text(json.dumps(result, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(recorder.images, recorder.rss, marker=".")
    axis.set_xlabel("images predicted")
    axis.set_ylabel("resident memory (MiB)")
    axis.set_ylim(0, max(recorder.rss) * 1.1)
    axis.set_title(f"DiffAD predict, {args.image_size} px, batch {args.batch_size}")
    figure.tight_layout()
    figure.savefig(args.out / "stream.png", dpi=100)
    print(json.dumps({key: value for key, value in result.items() if key != "rss_curve"}, indent=2))


if __name__ == "__main__":
    main()
