# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Unified (class-conditional) DiffAD: category labels reach the model, per-category calibration, metrics, export
(``MultiCategory``'s batches: ``tests/data/test_multi.py``)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch
from anomalib.deploy import ExportType, OpenVINOInferencer, TorchInferencer
from anomalib.engine import Engine
from anomalib.metrics import F1AdaptiveThreshold, MinMax
from lightning.pytorch import seed_everything

from anomalib_diffad import DiffAD
from anomalib_diffad.anomaly_map import AnomalyMapGenerator
from anomalib_diffad.data.multi import CategoryImageBatch, select_images
from anomalib_diffad.post_processor import DiffADPostProcessor
from anomalib_diffad.reconstruction import GradientDenoising, fit_reconstruction_prior, reconstruct
from anomalib_diffad.unified import Categories, evaluate_per_category, export_per_category
from tests.helpers.datasets import NAMES, multi_category
from tests.helpers.openvino import FP32
from tests.helpers.presets import TINY_MODEL_ARGS, with_space_settings

PARITY_TOLERANCE = 1e-4
# the tiny preset, trained on 32 px crops of the 64 px images (4x cheaper steps; scoring sees whole images)
UNIFIED_ARGS = with_space_settings(TINY_MODEL_ARGS, train_crop_size=32) | {
    "categories": NAMES,
    "lr": 2e-3,
    "ema_decay": 0.95,
}
EPOCHS = 60  # 3 steps per epoch: 180 steps


def _engine(root_dir: Path, epochs: int = EPOCHS) -> Engine:
    return Engine(
        logger=False,
        default_root_dir=root_dir,
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )


def test_model_argument_errors_are_clear() -> None:
    """num_classes smaller than the categories, unknown categories, and selecting on a single model all fail."""
    with pytest.raises(ValueError, match="num_classes=2 is smaller than the number of categories 3"):
        DiffAD(**(TINY_MODEL_ARGS | {"num_classes": 2, "categories": NAMES}))
    unified = DiffAD(**(TINY_MODEL_ARGS | {"categories": NAMES}))
    assert unified.model.num_classes == 3
    with pytest.raises(ValueError, match="Unknown category 'tile'"):
        unified.categories.select("tile")
    with pytest.raises(ValueError, match="out of range"):
        unified.categories.select(3)
    batch = CategoryImageBatch(image=torch.zeros(2, 3, 64, 64), gt_label=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="carries no category"):
        unified.categories.labels(batch)
    with pytest.raises(ValueError, match=r"call model.categories.select"):
        unified.eval()(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="single-category"):
        DiffAD(**TINY_MODEL_ARGS).categories.select("brick")
    with pytest.raises(ValueError, match="single-category"):
        DiffAD(**(TINY_MODEL_ARGS | {"category": "brick"}))
    assert DiffAD(**(TINY_MODEL_ARGS | {"categories": NAMES, "category": "grass"})).categories.selected == 1
    assert DiffAD(**(TINY_MODEL_ARGS | {"categories": NAMES[:2], "num_classes": 3})).categories.all_names == (
        "brick",
        "grass",
        "2",
    )


def test_categories_select_by_name_or_index_and_restore() -> None:
    """Names and indices select a category; a ``with`` block restores the previous selection, also when the
    selection fails; the selected labels follow the batch; every index has a name."""
    categories = Categories(NAMES[:2], num_classes=3, selected=2)
    assert categories.all_names == ("brick", "grass", "2")
    with categories.selection("grass"):
        assert categories.selected == 1
        assert categories.selected_labels(torch.zeros(3, 3, 4, 4)).tolist() == [1, 1, 1]
    assert categories.selected == 2
    with pytest.raises(ValueError, match="Unknown category 'tile'"), categories.selection("tile"):
        pass
    assert categories.selected == 2
    assert Categories().all_names == ()


def test_datamodule_must_fit_the_unified_model(texture_root: Path) -> None:
    """Too few classes or differently named categories stop training before the first step."""
    datamodule = multi_category(texture_root)
    with pytest.raises(ValueError, match="num_classes=2 is smaller than the datamodule's 3 categories"):
        DiffAD(**(TINY_MODEL_ARGS | {"num_classes": 2})).categories.check(datamodule)
    with pytest.raises(ValueError, match="do not match the datamodule's"):
        DiffAD(**(TINY_MODEL_ARGS | {"categories": ("a", "b", "c")})).categories.check(datamodule)
    DiffAD(**TINY_MODEL_ARGS).categories.check(datamodule)  # one unconditional model: allowed


def test_single_category_model_state_is_unchanged() -> None:
    """num_classes=None keeps the scalar calibration buffers and adds no per-category state."""
    model = DiffAD(**TINY_MODEL_ARGS)
    state = model.state_dict()
    assert not any("category_" in key for key in state)
    assert not any("class_embedding" in key for key in state)
    assert state["model.anomaly_map_generator.kl_mean"].shape == torch.Size([])
    batch = CategoryImageBatch(image=torch.zeros(1, 3, 8, 8), category=torch.tensor([2]))
    assert model.categories.labels(batch) is None


def test_labels_reach_the_unet_class_embedding() -> None:
    """Label k selects embedding row k: a different label changes the output, copying row k into row j
    makes label j give label k's output; training and validation steps pass the batch's categories."""
    torch.manual_seed(0)
    model = DiffAD(**(TINY_MODEL_ARGS | {"categories": NAMES}))
    denoiser = model.model.denoiser
    xt, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        denoiser.unet.class_embedding.weight.normal_()
        out = {k: denoiser(xt, t, torch.full((2,), k)).eps for k in range(3)}
        assert (out[0] - out[2]).abs().max() > 1e-3
        denoiser.unet.class_embedding.weight[0] = denoiser.unet.class_embedding.weight[2]
        torch.testing.assert_close(denoiser(xt, t, torch.zeros(2, dtype=torch.long)).eps, out[2])

    seen: list[torch.Tensor] = []
    hooks = [
        network.unet.class_embedding.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].clone()))
        for network in (model.model.denoiser, model.model.ema_denoiser)
    ]
    batch = CategoryImageBatch(
        image=torch.zeros(3, 3, 64, 64),
        gt_label=torch.zeros(3, dtype=torch.long),
        category=torch.tensor([2, 0, 1]),
    )
    model.model.train()
    model.training_step(batch)
    model.model.eval()
    with torch.no_grad():
        model.validation_step(batch)
    for hook in hooks:
        hook.remove()
    assert seen[0].tolist() == [2, 0, 1]
    steps = len(model.model.score_timesteps)
    assert seen[1].tolist() == [2, 0, 1] * steps  # all scoring timesteps in one batched pass


def test_per_class_fusion_statistics_select_each_images_row() -> None:
    """Calibration per class gives each class its own statistics; forward uses each image's own class's."""
    generator = AnomalyMapGenerator(alpha=0.5, num_classes=3)
    labels = torch.tensor([0, 0, 2, 2])
    kl = torch.tensor([1.0, 3.0, 10.0, 14.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    feature = torch.tensor([0.0, 2.0, 5.0, 5.5]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    generator.calibrate(kl, feature, labels)
    torch.testing.assert_close(generator.kl_mean, torch.tensor([2.0, 0.0, 12.0]))
    assert generator.kl_std[1] == 1.0  # class 1 had no maps: unchanged
    fused = generator(kl, feature, labels)
    # each class's maps sit one (population) std below and above its own mean in both cues
    expected = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    torch.testing.assert_close(fused[:, 0, 0, 0], expected)
    with pytest.raises(ValueError, match="class label"):
        generator(kl, feature)


def test_post_processor_normalizes_with_each_images_category() -> None:
    """The same raw score normalizes differently under two categories' thresholds and ranges."""
    post = DiffADPostProcessor(num_classes=2)
    post.category_image_threshold.copy_(torch.tensor([1.0, 5.0]))
    post.category_image_min.copy_(torch.tensor([0.0, 4.0]))
    post.category_image_max.copy_(torch.tensor([2.0, 6.0]))
    post.category_pixel_threshold.copy_(torch.tensor([1.0, 5.0]))
    post.category_pixel_min.copy_(torch.tensor([0.0, 4.0]))
    post.category_pixel_max.copy_(torch.tensor([2.0, 6.0]))
    scores = torch.tensor([1.5, 1.5, 5.5])
    predictions = InferenceBatch(pred_score=scores, anomaly_map=scores.view(3, 1, 1, 1).expand(3, 1, 2, 2))
    output = post(predictions, torch.tensor([0, 1, 1]))
    # logistic normalization sigmoid(8 (x - threshold) / (max - min)) with each image's own category's values
    torch.testing.assert_close(output.pred_score, torch.sigmoid(torch.tensor([2.0, -14.0, 2.0])))
    assert output.pred_label.tolist() == [True, False, True]
    assert output.anomaly_map[:, 0, 0, 0].tolist() == output.pred_score.tolist()


@pytest.fixture(scope="module")
def unified(texture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny unified DiffAD fitted on all three categories at once (180 steps, about a minute)."""
    seed_everything(0)
    root_dir = tmp_path_factory.mktemp("unified_project")
    model = DiffAD(**UNIFIED_ARGS)
    datamodule = multi_category(texture_root)
    engine = _engine(root_dir)
    engine.fit(model=model, datamodule=datamodule)
    metrics = evaluate_per_category(engine, model, datamodule)
    return {"model": model, "datamodule": datamodule, "engine": engine, "metrics": metrics, "root_dir": root_dir}


def test_unified_model_separates_normal_from_defect_in_each_category(unified: dict) -> None:
    """anomalib's Evaluator, run per category: every category's defects are localized (pixel AUROC)."""
    metrics = unified["metrics"]
    assert set(metrics) == set(NAMES)
    for name, values in metrics.items():
        # 0.65: the fusion is calibrated on the 8 (seen) training images of each category, no longer on the
        # test normals; measured 0.73 / 0.68 / 0.95 (brick, grass, gravel); chance is 0.5
        assert values["pixel_AUROC"] > 0.65, (name, values)
        assert 0.0 <= values["image_AUROC"] <= 1.0
    assert np.mean([values["image_AUROC"] for values in metrics.values()]) > 0.6, metrics


def test_one_test_pass_reports_each_categorys_metrics(unified: dict) -> None:
    """One ``Engine.test`` over all categories logs every metric per category (``<name>/<metric>``), equal to
    testing each category on its own, next to the pooled metrics."""
    results = unified["engine"].test(model=unified["model"], datamodule=unified["datamodule"], verbose=False)[0]
    for name, values in unified["metrics"].items():
        for metric, value in values.items():
            assert "/" not in metric  # evaluate_per_category keeps the plain metric names
            assert results[f"{name}/{metric}"] == pytest.approx(value, abs=1e-6), (name, metric)
    assert {"image_AUROC", "pixel_AUPRO"} <= set(results)
    single = unified["engine"].test(
        model=unified["model"],
        datamodule=unified["datamodule"].for_category("grass"),
        verbose=False,
    )[0]
    assert not any(key.startswith(("brick/", "gravel/")) for key in single)  # no test images: not logged


def test_each_category_has_its_own_calibration(unified: dict) -> None:
    """Each category's fusion statistics are the moments of its own training normals' component maps; its
    thresholds and min/max are anomalib's F1 threshold and MinMax of its own validation images' raw outputs."""
    model, datamodule = unified["model"], unified["datamodule"]
    generator, post = model.model.anomaly_map_generator, model.post_processor
    transform = model.pre_processor.transform
    train = datamodule.train_data
    calibration = [i for c in range(3) for i in (train.samples.category_index == c).to_numpy().nonzero()[0][:32]]
    batch = train.collate_fn([train[i] for i in calibration])
    with torch.no_grad():
        maps = model.model.component_scores(transform(batch.image), batch.category)
    for index in range(3):
        selected = batch.category == index
        for name, values in (("kl", maps.kl[selected]), ("feature", maps.feature[selected])):
            expected = torch.stack([values.double().mean(), values.double().std(unbiased=False)]).float()
            actual = torch.stack([getattr(generator, f"{name}_mean")[index], getattr(generator, f"{name}_std")[index]])
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6, msg=f"{NAMES[index]} {name}")
    with torch.no_grad():
        outputs = [
            batch.update(**model.model.score(transform(batch.image), batch.category)._asdict())
            for batch in datamodule.val_dataloader()
        ]
    checked = 0
    for index in range(3):
        metrics = {
            "image_threshold": F1AdaptiveThreshold(fields=["pred_score", "gt_label"], strict=False),
            "pixel_threshold": F1AdaptiveThreshold(fields=["anomaly_map", "gt_mask"], strict=False),
            "image": MinMax(fields=["pred_score"], strict=False),
            "pixel": MinMax(fields=["anomaly_map"], strict=False),
        }
        for batch in outputs:
            selected = batch.category == index
            if bool(selected.any()):
                subset = select_images(batch, ("pred_score", "anomaly_map", "gt_label", "gt_mask"), selected)
                for metric in metrics.values():
                    metric.update(subset)
        if not any(bool(batch.gt_label[batch.category == index].any()) for batch in outputs):
            continue  # normals only: quantile thresholds (tests/test_post_processor.py)
        checked += 1
        for name in ("image_threshold", "pixel_threshold"):
            expected = metrics[name].compute()
            torch.testing.assert_close(getattr(post, f"category_{name}")[index], expected, rtol=1e-5, atol=1e-6)
        for kind in ("image", "pixel"):
            minimum, maximum = metrics[kind].compute()
            torch.testing.assert_close(getattr(post, f"category_{kind}_min")[index], minimum, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(getattr(post, f"category_{kind}_max")[index], maximum, rtol=1e-5, atol=1e-6)
    assert checked == 3
    assert len(set(post.category_image_threshold.tolist())) == 3


def test_unified_checkpoint_reloads_calibration(unified: dict) -> None:
    """The per-category buffers are in the checkpoint and reload into a fresh model."""
    ckpt = next(Path(unified["root_dir"]).rglob("model.ckpt"))
    reloaded = DiffAD.load_from_checkpoint(ckpt)
    assert reloaded.categories.names == NAMES
    for key, value in unified["model"].state_dict().items():
        if "category_" in key or "anomaly_map_generator" in key:
            torch.testing.assert_close(reloaded.state_dict()[key], value, msg=key)


def _lightning_predictions(unified: dict, name: str) -> dict[str, dict[str, np.ndarray]]:
    batches = unified["engine"].predict(model=unified["model"], datamodule=unified["datamodule"].for_category(name))
    return {
        path: {key: getattr(batch, key)[index].detach().numpy().reshape(-1) for key in ("pred_score", "anomaly_map")}
        for batch in batches
        for index, path in enumerate(batch.image_path)
    }


def test_per_category_export_parity(unified: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One exported graph per category: grass's OpenVINO IR and every category's torch export match the
    Lightning path within 1e-4 on their category's images; another category's graph scores differently."""
    model, engine = unified["model"], unified["engine"]
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    torch_paths = export_per_category(engine, model, ExportType.TORCH, tmp_path / "torch")
    openvino_paths = export_per_category(engine, model, ExportType.OPENVINO, tmp_path / "openvino", ["grass"])
    assert model.categories.selected is None  # the selection is restored
    inferencers = {name: TorchInferencer(path, device="cpu") for name, path in torch_paths.items()}
    openvino = OpenVINOInferencer(openvino_paths["grass"], device="CPU", config=FP32)
    for name in NAMES:
        for path, expected in _lightning_predictions(unified, name).items():
            checks = [inferencers[name]] + ([openvino] if name == "grass" else [])
            for inferencer in checks:
                result = inferencer.predict(path)
                for key in ("pred_score", "anomaly_map"):
                    difference = np.abs(np.asarray(getattr(result, key), np.float64).reshape(-1) - expected[key]).max()
                    assert difference <= PARITY_TOLERANCE, (name, key, path, difference)
            other = inferencers[NAMES[(NAMES.index(name) + 1) % 3]].predict(path)
            assert np.abs(np.asarray(other.anomaly_map).reshape(-1) - expected["anomaly_map"]).max() > 1e-3


def test_unified_reconstruction_uses_each_categorys_prior_and_embedding(unified: dict) -> None:
    """One prior per category, fitted on that category's training images only; reconstruction runs with the
    category's class embedding and prior, lowers the images' distance to it, and needs a category."""
    model, datamodule = unified["model"], unified["datamodule"]
    with pytest.raises(ValueError, match="one category at a time"):
        reconstruct(model, torch.zeros(1, 3, 64, 64))
    priors = fit_reconstruction_prior(model, datamodule.train_dataloader(), n_features=16)
    assert sorted(priors) == [0, 1, 2]
    means = [prior.padim.gaussian.mean for prior in priors.values()]
    assert all((means[0] - other).abs().max() > 1e-3 for other in means[1:])
    only_grass = datamodule.for_category("grass")
    only_grass.setup()
    grass = next(iter(only_grass.test_dataloader()))
    images = model.pre_processor.transform(grass.image)
    config = GradientDenoising(num_denoise_steps=2, denoise_every=3)
    with torch.no_grad():
        reconstruction = reconstruct(model, images, category="grass", config=config)
        before, after = priors[1].distance(images).mean(), priors[1].distance(reconstruction).mean()
        other = reconstruct(model, images, prior=priors[1], category="brick", config=config)
    assert after < before, (before, after)
    assert (other - reconstruction).abs().max() > 1e-4  # brick's class embedding denoises differently
    with pytest.raises(ValueError, match="Category 'brick'"):
        fit_reconstruction_prior(model, only_grass.train_dataloader(), categories=["brick"])


def test_int8_calibration_of_a_category_graph_uses_its_images(
    unified: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """INT8 post-training quantization of one category's graph calibrates on that category's validation images,
    with NNCF's real quantizer. The graph is a one-convolution OpenVINO model with the image input (quantizing
    the whole DiffAD graph takes a minute; test_engine's INT8 test does that once): the quantizer must insert
    its FakeQuantize ops, and it must have read exactly gravel's validation images."""
    import nncf
    import openvino as ov

    seen: list[torch.Tensor] = []

    class RecordingDataset(nncf.Dataset):
        """NNCF's dataset, noting the category of each batch the quantizer reads."""

        def __init__(self, data_source: object, transform: Callable) -> None:
            super().__init__(data_source, lambda batch: seen.append(batch.category) or transform(batch))

    monkeypatch.setattr(nncf, "Dataset", RecordingDataset)
    graph = ov.convert_model(torch.nn.Conv2d(3, 4, 3).eval(), example_input=torch.zeros(1, 3, 64, 64))
    model = unified["model"]
    with model.categories.selection("gravel"):
        quantized = model._post_training_quantization_ov(graph, unified["datamodule"])  # noqa: SLF001
    assert "FakeQuantize" in {op.get_type_name() for op in quantized.get_ops()}
    gravel = unified["datamodule"].for_category("gravel")
    gravel.setup()
    assert torch.cat(seen).tolist() == [2] * len(gravel.val_data)
