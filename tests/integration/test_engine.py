# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""anomalib's model integration pattern for DiffAD: fit, test, validate, train, predict, export, parity."""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType, ExportType, OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from anomalib.post_processing import PostProcessor

from anomalib_diffad import DiffAD
from anomalib_diffad.export import QUANTIZED_OP_TYPES
from tests.helpers.engine import brick_datamodule, tiny_engine
from tests.helpers.openvino import FP32
from tests.helpers.presets import TINY_MODEL_ARGS

PARITY_TOLERANCE = 1e-4
INT8_MAP_TOLERANCE = 0.05  # mean error of the INT8_PTQ export's normalized maps against the FP32 Lightning path
INT8_SCORE_TOLERANCE = 0.25  # and of its normalized image scores (see test_int8_post_training_quantization)
OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
RAW_SIZES = ((40, 48), (72, 80))  # (height, width) of raw images: below and above the tiny model's 64 px, not square


_datamodule = brick_datamodule
_engine = tiny_engine


@pytest.fixture(scope="module")
def project(tiny_project: dict) -> dict:
    """The session's tiny model, fitted once (conftest); every other test starts from its checkpoint."""
    return tiny_project


def test_fit_calibrates_fusion_and_thresholds(project: dict) -> None:
    """Validation after fit sets finite thresholds and real fusion statistics, and writes the checkpoint."""
    model = project["model"]
    assert project["ckpt"].is_file()
    generator = model.model.anomaly_map_generator
    assert generator.feature_std.item() != 1.0
    assert generator.feature_mean.item() > 0.0
    post = model.post_processor
    for name in ("_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        assert torch.isfinite(getattr(post, name)), name
    assert post.image_min <= post._image_threshold <= post.image_max  # noqa: SLF001
    assert model.model.ema_updates.item() == 4  # 8 train images, batch 4, 2 epochs


def test_ema_weights_differ_from_trained_weights(project: dict) -> None:
    """The EMA copy is a separate set of weights that moved away from the initialization."""
    model = project["model"].model
    trained = torch.nn.utils.parameters_to_vector(model.denoiser.parameters())
    ema = torch.nn.utils.parameters_to_vector(model.ema_denoiser.parameters())
    assert not torch.equal(trained, ema)


def _test_results(project: dict, dataset_root: Path, model_args: dict) -> dict[str, float]:
    return _engine(project["root_dir"]).test(
        model=DiffAD(**model_args),
        datamodule=_datamodule(dataset_root),
        ckpt_path=project["ckpt"],
    )[0]


def _gt_mask(dataset_root: Path, image_path: str) -> np.ndarray:
    """The image's ground-truth mask as booleans (all False for a good image)."""
    path = Path(image_path)
    if path.parent.name == "good":
        return np.zeros((64, 64), dtype=bool)
    mask = dataset_root / "brick" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
    return read_image(mask, as_tensor=False).mean(axis=-1) > 0.5


def test_test_from_checkpoint_is_deterministic(
    project: dict,
    predictions: dict,
    dataset_root: Path,
    tiny_model_args: dict,
) -> None:
    """Testing twice from the checkpoint gives identical metrics, and its AUROCs are scikit-learn's on the
    predicted (normalized) scores and maps against the labels and mask files."""
    from sklearn.metrics import roc_auc_score

    results = [_test_results(project, dataset_root, tiny_model_args) for _ in range(2)]
    assert results[0] == results[1]
    paths = sorted(predictions)
    labels = [Path(path).parent.name != "good" for path in paths]
    scores = [float(predictions[path]["pred_score"]) for path in paths]
    masks = np.concatenate([_gt_mask(dataset_root, path).reshape(-1) for path in paths])
    maps = np.concatenate([predictions[path]["anomaly_map"].reshape(-1) for path in paths])
    assert results[0]["image_AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert results[0]["pixel_AUROC"] == pytest.approx(roc_auc_score(masks, maps), abs=1e-6)


def test_fusion_is_calibrated_on_training_images_only(project: dict, dataset_root: Path) -> None:
    """The fusion statistics are those of the first training images, whatever the validation split holds.

    MVTecAD's default validation set is the test set: the statistics must not depend on any of its images.
    """
    model = project["model"]
    datamodule = _datamodule(dataset_root)
    datamodule.setup()
    count = min(model.calibration_images, len(datamodule.train_data))
    train = torch.stack([datamodule.train_data[i].image for i in range(count)])
    generator = model.model.anomaly_map_generator
    with torch.no_grad():
        maps = model.model.eval().component_scores(model.pre_processor.transform(train))
    cues = torch.stack([maps.kl.double().flatten(), maps.feature.double().flatten()])
    mean, std = cues.mean(dim=1), cues.std(dim=1, unbiased=False)
    torch.testing.assert_close(generator.kl_mean.double(), mean[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator.kl_std.double(), std[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator.feature_mean.double(), mean[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generator.feature_std.double(), std[1], rtol=1e-5, atol=1e-6)
    test_normals = torch.stack([item.image for item in datamodule.val_data if int(item.gt_label) == 0])
    with torch.no_grad():
        leaked = model.model.component_scores(model.pre_processor.transform(test_normals))
    assert abs(float(leaked.feature.mean()) - float(generator.feature_mean)) > 1e-4  # would match if it leaked


def test_validate_recalibrates_identically(project: dict, dataset_root: Path) -> None:
    """Validation recomputes the fusion statistics, thresholds and min/max: garbage in, the stored values out."""
    model = DiffAD.load_from_checkpoint(project["ckpt"])
    stored = {name: value.clone() for name, value in model.state_dict().items()}
    calibrated = [name for name in stored if "anomaly_map_generator" in name or name.startswith("post_processor")]
    assert len(calibrated) >= 10
    for name, value in model.state_dict().items():
        if name in calibrated:
            value.fill_(float("nan") if name.startswith("post_processor") else 123.0)
    _engine(project["root_dir"]).validate(model=model, datamodule=_datamodule(dataset_root))
    for name, value in model.state_dict().items():
        if name in calibrated:
            torch.testing.assert_close(value, stored[name], rtol=1e-6, atol=1e-6, msg=name)


def test_fusion_is_calibrated_by_the_model_with_any_post_processor(project: dict, dataset_root: Path) -> None:
    """The model calibrates its own fusion: with anomalib's plain post-processor (no DiffAD hook) validation
    still sets the fusion statistics to those of the training images (garbage in, the stored values out)."""
    model = DiffAD(**TINY_MODEL_ARGS, post_processor=PostProcessor(enable_normalization=False))
    state = torch.load(project["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    generator = model.model.anomaly_map_generator
    stored = {name: value.clone() for name, value in generator.state_dict().items()}
    for value in generator.state_dict().values():
        value.fill_(123.0)
    _engine(project["root_dir"]).validate(model=model, datamodule=_datamodule(dataset_root))
    for name, value in generator.state_dict().items():
        torch.testing.assert_close(value, stored[name], rtol=1e-6, atol=1e-6, msg=name)


def test_normal_map_is_calibrated_on_training_images_and_kept_in_the_checkpoint(
    project: dict, dataset_root: Path, tmp_path: Path,
) -> None:
    """With ``subtract_normal_map`` validation sets the normal map to the mean fused map of the first training
    images (recomputed here), the training images' maps then average to 0, and a checkpoint restores it."""
    model = DiffAD(**(TINY_MODEL_ARGS | {"subtract_normal_map": True}))
    state = torch.load(project["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert model.load_state_dict(state, strict=False).missing_keys == ["model.anomaly_map_generator.normal_map"]
    engine = _engine(tmp_path)
    engine.validate(model=model, datamodule=_datamodule(dataset_root))
    datamodule = _datamodule(dataset_root)
    datamodule.setup()
    count = min(model.calibration_images, len(datamodule.train_data))
    train = torch.stack([datamodule.train_data[i].image for i in range(count)])
    generator = model.model.anomaly_map_generator
    with torch.no_grad():
        maps = model.model.eval().component_scores(model.pre_processor.transform(train))
        fused = generator.fuse(maps.kl, maps.feature)
        torch.testing.assert_close(generator.normal_map, fused.mean(0, keepdim=True), rtol=1e-4, atol=1e-4)
        assert generator.normal_map.std() > 0.01
        assert generator(maps.kl, maps.feature).mean(0).abs().max() < 1e-4
    engine.trainer.save_checkpoint(tmp_path / "normal_map.ckpt")
    restored = DiffAD.load_from_checkpoint(tmp_path / "normal_map.ckpt")
    assert restored.model.anomaly_map_generator.subtracts_normal_map
    torch.testing.assert_close(restored.model.anomaly_map_generator.normal_map, generator.normal_map)


@pytest.fixture(scope="module")
def normals_only(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny model fitted with a validation split taken from train (normal images only), then tested."""
    from tests.helpers.presets import TINY_MODEL_ARGS

    model = DiffAD(**TINY_MODEL_ARGS)
    datamodule = brick_datamodule(dataset_root, val_from_train=True)
    engine = _engine(tmp_path_factory.mktemp("normals_only"))
    engine.fit(model=model, datamodule=datamodule)
    raw = [model.model.eval()(model.pre_processor.transform(batch.image)) for batch in datamodule.test_dataloader()]
    batches = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    return {"model": model, "raw": raw, "post": batches, "datamodule": datamodule}


def test_normals_only_validation_gives_quantile_thresholds(normals_only: dict) -> None:
    """With only normals in validation, each threshold is the 0.99 quantile of the normal validation outputs."""
    model, datamodule = normals_only["model"], normals_only["datamodule"]
    with torch.no_grad():
        outputs = [model.model(model.pre_processor.transform(batch.image)) for batch in datamodule.val_dataloader()]
    scores = torch.cat([output.pred_score for output in outputs])
    maps = torch.cat([output.anomaly_map for output in outputs]).flatten()
    post = model.post_processor
    image_rank = math.ceil(0.99 * len(scores))
    pixel_rank = math.ceil(0.99 * len(maps))
    assert float(post._image_threshold) == pytest.approx(float(scores.sort().values[image_rank - 1]), rel=1e-5)  # noqa: SLF001
    assert float(post._pixel_threshold) == pytest.approx(float(maps.sort().values[pixel_rank - 1]), rel=1e-5)  # noqa: SLF001
    assert float(post._pixel_threshold) < float(maps.max())  # noqa: SLF001


def test_normals_only_validation_does_not_flatten_the_maps(normals_only: dict) -> None:
    """Normalized maps keep the raw maps' ranking: AUROC and AUPRO equal those of the raw maps, no pixel is cut."""
    from anomalib.metrics import AUPRO, AUROC

    raw, post = normals_only["raw"], normals_only["post"]
    masks = torch.cat([batch.gt_mask for batch in post]).int()
    results = {}
    for kind, batches in (("raw", raw), ("post", post)):
        maps = torch.cat([b.anomaly_map for b in batches])
        batch = SimpleNamespace(anomaly_map=maps.squeeze(1), gt_mask=masks)
        results[kind] = []
        for metric in (AUROC(fields=["anomaly_map", "gt_mask"]), AUPRO(fields=["anomaly_map", "gt_mask"])):
            metric.update(batch)
            results[kind].append(float(metric.compute()))
    assert results["post"] == pytest.approx(results["raw"], abs=1e-4)
    assert results["raw"][0] > 0.6  # the tiny model localizes the synthetic defects
    normalized = torch.cat([b.anomaly_map for b in post])
    assert float(((normalized > 1e-6) & (normalized < 1 - 1e-6)).float().mean()) > 0.99  # nothing clamped


def test_train_resumes_and_tests(project: dict, dataset_root: Path, tiny_model_args: dict) -> None:
    """``Engine.train`` from the checkpoint resumes (no extra epochs at max_epochs) and reports the metrics of
    testing that checkpoint."""
    model = DiffAD(**tiny_model_args)
    results = _engine(project["root_dir"]).train(
        model=model,
        datamodule=_datamodule(dataset_root),
        ckpt_path=project["ckpt"],
    )
    assert model.model.ema_updates.item() == 4
    assert results[0] == _test_results(project, dataset_root, tiny_model_args)  # the checkpoint's own metrics


@pytest.fixture(scope="module")
def predictions(project: dict, dataset_root: Path) -> dict[str, dict[str, np.ndarray]]:
    """Lightning-path predictions (normalized, thresholded) keyed by image path."""
    from tests.helpers.presets import TINY_MODEL_ARGS

    batches = _engine(project["root_dir"]).predict(
        model=DiffAD(**TINY_MODEL_ARGS),
        datamodule=_datamodule(dataset_root),
        ckpt_path=project["ckpt"],
    )
    by_path = {}
    for batch in batches:
        for index, path in enumerate(batch.image_path):
            by_path[path] = {key: getattr(batch, key)[index].detach().cpu().numpy() for key in OUTPUTS}
    return by_path


@pytest.fixture(scope="module")
def raw_images(dataset_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A normal and a defective test image resized to each of ``RAW_SIZES``: raw inputs the graph must resize."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("raw_images")
    test_dir = dataset_root / "brick" / "test"
    for source in (test_dir / "good" / "000.png", test_dir / "stain" / "000.png"):
        for height, width in RAW_SIZES:
            image = Image.open(source).resize((width, height), Image.Resampling.BICUBIC)
            image.save(folder / f"{source.parent.name}_{height}x{width}.png")
    return folder


@pytest.fixture(scope="module")
def raw_predictions(project: dict, raw_images: Path) -> dict[str, dict[str, np.ndarray]]:
    """Lightning-path predictions of the raw images (``anomalib predict --data <folder>``), keyed by path."""
    from tests.helpers.presets import TINY_MODEL_ARGS

    batches = _engine(project["root_dir"]).predict(
        model=DiffAD(**TINY_MODEL_ARGS),
        data_path=raw_images,
        ckpt_path=project["ckpt"],
    )
    return {
        path: {key: getattr(batch, key)[index].detach().cpu().numpy() for key in OUTPUTS}
        for batch in batches
        for index, path in enumerate(batch.image_path)
    }


def test_predict_outputs_are_normalized(predictions: dict) -> None:
    """Predict returns normalized scores and maps in [0, 1] with boolean labels and masks for every image."""
    assert len(predictions) == 8  # 4 good + 4 defects
    for outputs in predictions.values():
        assert 0.0 <= float(outputs["pred_score"]) <= 1.0
        assert outputs["anomaly_map"].min() >= 0.0
        assert outputs["anomaly_map"].max() <= 1.0
        assert outputs["pred_mask"].dtype == bool
        assert bool(outputs["pred_label"]) == (float(outputs["pred_score"]) > 0.5)


def _flat(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _assert_parity(
    inferencer: OpenVINOInferencer | TorchInferencer,
    predictions: dict,
    tolerance: float = PARITY_TOLERANCE,
) -> None:
    """Scores and maps agree within the tolerance; labels and masks agree wherever the score is not on the
    threshold itself (the validation image that defines the threshold normalizes to exactly 0.5)."""
    for path, expected in predictions.items():
        result = inferencer.predict(path)
        for score_key, decision_key in (("pred_score", "pred_label"), ("anomaly_map", "pred_mask")):
            score, reference_score = _flat(getattr(result, score_key)), _flat(expected[score_key])
            assert np.abs(score - reference_score).max() <= tolerance, (score_key, path)
            decided = np.abs(reference_score - 0.5) > tolerance
            decision, reference_decision = _flat(getattr(result, decision_key)), _flat(expected[decision_key])
            np.testing.assert_array_equal(
                decision[decided], reference_decision[decided], err_msg=f"{decision_key} {path}"
            )


def _assert_batched_parity(path: Path, predictions: dict) -> None:
    """The IR's dynamic batch: all images in one call give each image's own outputs (a batch once collapsed
    to its first image, because ``repeat_interleave`` fixed the timestep vector to the example batch).

    The batch, 3 x the 8 test images, is above the bound the export traces with (21: 63 // 3 timesteps), so the
    UNet sees 72 >= 64 images, diffusers' other upsampler branch: the file itself has no bound."""
    import openvino as ov

    model = ov.Core().compile_model(path, "CPU", FP32)
    paths = sorted(predictions) * 3
    images = np.concatenate([OpenVINOInferencer.pre_process(read_image(p, as_tensor=False)) for p in paths])
    outputs = model(images)
    by_name = {output.get_any_name(): outputs[output] for output in model.outputs}
    assert by_name["anomaly_map"].shape[0] == len(paths)
    for index, image_path in enumerate(paths):
        for key in ("pred_score", "anomaly_map"):
            difference = np.abs(_flat(by_name[key][index]) - _flat(predictions[image_path][key])).max()
            assert difference <= PARITY_TOLERANCE, (key, image_path, difference)


@pytest.mark.parametrize("export_type", [ExportType.TORCH, ExportType.ONNX, ExportType.OPENVINO])
def test_export_parity(
    export_type: ExportType,
    project: dict,
    predictions: dict,
    raw_predictions: dict,
    tiny_model_args: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every export reloads in anomalib's inferencers and matches the Lightning path within 1e-4, on the test
    images and on raw images of other sizes and aspect ratios (the exported pre-processor resizes them with
    antialiasing, as Lightning does)."""
    path = _engine(project["root_dir"]).export(
        model=DiffAD(**tiny_model_args),
        export_type=export_type,
        export_root=tmp_path,
        ckpt_path=project["ckpt"],
    )
    assert path is not None
    assert path.is_file()
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    if export_type == ExportType.TORCH:
        monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
        _assert_parity(TorchInferencer(path, device="cpu"), predictions | raw_predictions)
    elif export_type == ExportType.OPENVINO:
        _assert_parity(OpenVINOInferencer(path, device="CPU", config=FP32), predictions | raw_predictions)
        _assert_batched_parity(path, predictions)
    else:
        _assert_parity(OnnxOutputsByName(path), predictions | raw_predictions)


def test_export_with_input_size(
    project: dict,
    raw_predictions: dict,
    tiny_model_args: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``input_size`` fixes the graph's input at that ``(height, width)``, resized to ``image_size`` inside: raw
    images of that size match the Lightning path."""
    import openvino as ov

    height, width = RAW_SIZES[1]
    path = _engine(project["root_dir"]).export(
        model=DiffAD(**tiny_model_args),
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
        ckpt_path=project["ckpt"],
        input_size=(height, width),
    )
    assert ov.Core().read_model(path).inputs[0].get_partial_shape().to_string() == f"[?,3,{height},{width}]"
    monkeypatch.chdir(tmp_path)
    of_size = {path: value for path, value in raw_predictions.items() if f"_{height}x{width}." in path}
    assert len(of_size) == 2
    _assert_parity(OpenVINOInferencer(path, device="CPU", config=FP32), of_size)


@pytest.mark.parametrize("input_size", [(0, 64), (64,), (64, 64, 3), (64.5, 64)])
def test_export_rejects_invalid_input_size(input_size: tuple, tiny_model_args: dict, tmp_path: Path) -> None:
    """An ``input_size`` that is not two positive integers stops the export with a message, before any work."""
    with pytest.raises(ValueError, match="input_size must be two positive integers"):
        DiffAD(**tiny_model_args).to_onnx(tmp_path, input_size=input_size)
    assert not any(tmp_path.iterdir())


def test_int8_post_training_quantization(
    project: dict,
    predictions: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """INT8_PTQ quantizes only convolutions and matrix products, compiles, and stays close to FP32.

    The tiny model's normalized image scores spread over a small raw range, so their INT8 error is large
    (0.0-0.4 per image); the maps stay within a few hundredths. benchmarks/speed reports the trained model.
    """
    import openvino as ov

    path = _engine(project["root_dir"]).export(
        model=DiffAD(**tiny_model_args),
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
        ckpt_path=project["ckpt"],
        compression_type=CompressionType.INT8_PTQ,
        datamodule=_datamodule(dataset_root),
    )
    model = ov.Core().read_model(path)
    quantizers = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    consumers = {
        target.get_node().get_type_name() for op in quantizers for target in op.output(0).get_target_inputs()
    }
    assert quantizers
    # ShapeOf reads only the shape of the quantized input image (the exported resize's weights depend on it)
    assert consumers <= QUANTIZED_OP_TYPES | {"Convert", "ShapeOf"}, consumers
    monkeypatch.chdir(tmp_path)
    inferencer = OpenVINOInferencer(path, device="CPU", config=FP32)
    score_errors, map_errors, labels, reference_labels = [], [], [], []
    for image_path, expected in predictions.items():
        result = inferencer.predict(image_path)
        score_errors.append(np.abs(_flat(result.pred_score) - _flat(expected["pred_score"])).item())
        map_errors.append(np.abs(_flat(result.anomaly_map) - _flat(expected["anomaly_map"])).mean())
        labels.append(bool(_flat(result.pred_label).item()))
        reference_labels.append(bool(_flat(expected["pred_label"]).item()))
    errors = f"score errors {np.round(score_errors, 3)}, map errors {np.round(map_errors, 3)}"
    assert np.mean(map_errors) < INT8_MAP_TOLERANCE, errors
    assert np.mean(score_errors) < INT8_SCORE_TOLERANCE, errors
    assert np.mean(np.equal(labels, reference_labels)) >= 0.75, (labels, reference_labels)


ONEDNN_CAPPED = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in ("", "ALL", "DEFAULT")
"""oneDNN is capped below the CPU (``benchmarks/speed/avx2.sh``): OpenVINO's CPU plugin, which detects the CPU
itself, then fails to build INT8 weight-compressed inner products ("could not create a primitive descriptor")."""


@pytest.mark.parametrize(
    ("compression", "stored"),
    [
        pytest.param(
            CompressionType.INT8, "u8",
            marks=pytest.mark.skipif(ONEDNN_CAPPED, reason="OpenVINO INT8 weights do not compile under a oneDNN cap"),
        ),
        (CompressionType.FP16, "f16"),
        (CompressionType.INT8_PTQ, "i8"),
    ],
)  # fmt: skip
def test_weight_compression_at_a_fixed_size_compiles_and_stays_close(
    project: dict,
    predictions: dict,
    dataset_root: Path,
    tiny_model_args: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    compression: CompressionType,
    stored: str,
) -> None:
    """``--compression_type INT8``, ``FP16`` or ``INT8_PTQ`` with a fixed ``--input_size`` compresses the
    network's weights but not the input resize's matrices, which are then constants (OpenVINO 2026.4 could not
    compile the model when they were compressed or quantized: "any_of(scale.size(), OC, 1U)", "data.size() ==
    OC"), compiles, and gives the FP32 Lightning outputs within the INT8 tolerances."""
    import openvino as ov

    from anomalib_diffad.export import image_resize_products

    path = _engine(project["root_dir"]).export(
        model=DiffAD(**tiny_model_args),
        export_type=ExportType.OPENVINO,
        export_root=tmp_path,
        ckpt_path=project["ckpt"],
        compression_type=compression,
        input_size=(64, 64),
        datamodule=_datamodule(dataset_root),
    )
    model = ov.Core().read_model(path)
    compressed = [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == stored
    ]
    assert len(compressed) > 20
    resize = [op for op in model.get_ops() if op.get_friendly_name() in set(image_resize_products(model))]
    assert resize
    for op in resize:  # float32 constants straight in, no decompression
        sources = [op.input_value(i).get_node() for i in range(2)]
        assert any(node.get_type_name() == "Constant" and node.get_element_type() == ov.Type.f32 for node in sources)
    monkeypatch.chdir(tmp_path)
    inferencer = OpenVINOInferencer(path, device="CPU", config=FP32)
    for image_path, expected in predictions.items():
        result = inferencer.predict(image_path)
        assert np.abs(_flat(result.anomaly_map) - _flat(expected["anomaly_map"])).mean() < INT8_MAP_TOLERANCE
        assert np.abs(_flat(result.pred_score) - _flat(expected["pred_score"])).item() < INT8_SCORE_TOLERANCE


def test_int8_post_training_quantization_requires_calibration(dataset_root: Path, tiny_model_args: dict) -> None:
    """An uncalibrated model (NaN thresholds) is refused with a message, before any export work."""
    with pytest.raises(ValueError, match="needs a calibrated model"):
        DiffAD(**tiny_model_args).to_openvino(
            "unused", compression_type=CompressionType.INT8_PTQ, datamodule=_datamodule(dataset_root)
        )


class OnnxOutputsByName:
    """Runs an exported ``.onnx`` file on OpenVINO and names its outputs from the ONNX graph.

    ``OpenVINOInferencer`` cannot be used on a raw ``.onnx`` file: OpenVINO merges folded tensor names
    into the outputs and the inferencer picks one of the names at random (the IR export fixes the names).
    """

    def __init__(self, path: Path) -> None:
        import onnx
        import openvino as ov

        self.names = [output.name for output in onnx.load(path, load_external_data=False).graph.output]
        self.model = ov.Core().compile_model(path, "CPU", FP32)

    def predict(self, path: str) -> SimpleNamespace:
        image = OpenVINOInferencer.pre_process(read_image(path, as_tensor=False))
        outputs = self.model(image)
        return SimpleNamespace(**{name: outputs[index] for index, name in enumerate(self.names)})


def test_folder_datamodule(dataset_root: Path, tiny_model_args: dict, tmp_path: Path) -> None:
    """DiffAD trains and tests on anomalib's ``Folder`` datamodule (custom data) as on MVTecAD: the same test
    images and masks through ``MVTecAD`` give the same metrics."""
    from anomalib.data import Folder

    category = dataset_root / "brick"
    defects = sorted(path.name for path in (category / "test").iterdir() if path.name != "good")
    datamodule = Folder(
        name="brick_folder",
        root=category,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir=[f"test/{name}" for name in defects],
        mask_dir=[f"ground_truth/{name}" for name in defects],
        val_split_mode="same_as_test",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    engine = _engine(tmp_path)
    model = DiffAD(**tiny_model_args)
    results = engine.train(model=model, datamodule=datamodule)[0]
    assert torch.isfinite(model.post_processor._image_threshold)  # noqa: SLF001
    assert results == pytest.approx(engine.test(model=model, datamodule=_datamodule(dataset_root))[0], abs=1e-6)


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(
    project: dict,
    dataset_root: Path,
    tiny_model_args: dict,
) -> None:
    """A NaN loss stops training with a message naming the step and terms; the checkpoint is untouched."""
    from anomalib_diffad.lightning_model import NonFiniteLossError

    before = project["ckpt"].read_bytes()
    engine = Engine(logger=False, default_root_dir=project["root_dir"], max_epochs=3, accelerator="cpu", devices=1)
    model = DiffAD(**(tiny_model_args | {"feature_weight": float("nan")}))
    with pytest.raises(NonFiniteLossError, match="Non-finite training loss at step 4"):
        engine.fit(model=model, datamodule=_datamodule(dataset_root), ckpt_path=project["ckpt"])
    assert project["ckpt"].read_bytes() == before
