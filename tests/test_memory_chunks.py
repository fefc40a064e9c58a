# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Training and scoring in chunks: memory bounded whatever the batch size, values as if computed per chunk."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from anomalib_diffad import DiffAD, torch_model
from anomalib_diffad.checkpoints import resolve_space
from anomalib_diffad.torch_model import images_per_chunk

CONFIGS = Path(__file__).parents[1] / "configs"


def _call_sizes(model: DiffAD) -> list[int]:
    """Record the batch of every denoiser call (training and EMA copy)."""
    sizes: list[int] = []
    for network in (model.model.denoiser, model.model.ema_denoiser):
        network.register_forward_hook(lambda _module, inputs, _output: sizes.append(inputs[0].shape[0]))
    return sizes


def test_large_batch_trains_in_checkpointed_chunks_with_the_batch_gradient(
    tiny_model_args: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch over the budget trains in chunks of at most ``images_per_chunk`` images; loss and gradients equal
    the size-weighted sum of the chunks' losses computed one after another from the same random state (so the
    recomputation during backward replays the same timesteps, noise and crops)."""
    monkeypatch.setattr(torch_model, "TRAIN_PIXELS_PER_CHUNK", 2 * 64 * 64)
    model = DiffAD(**tiny_model_args | {"pretrained_weights": None})
    model.model.train()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert images_per_chunk(model.model, images.shape, training=True) == 2

    params = [p for p in model.model.denoiser.parameters() if p.requires_grad]
    torch.manual_seed(1)
    reference = {}
    for part, weight in ((slice(0, 2), 0.4), (slice(2, 4), 0.4), (slice(4, 5), 0.2)):
        for name, value in model.loss(model.model(images[part])).items():
            reference[name] = reference.get(name, 0) + weight * value
    expected_grads = torch.autograd.grad(reference["loss"], params)

    sizes = _call_sizes(model)
    torch.manual_seed(1)
    losses = torch_model.losses_in_chunks(model.model, model.loss, images)
    grads = torch.autograd.grad(losses["loss"], params)

    assert max(sizes) == 2  # never the whole batch of 5
    assert sorted(losses) == sorted(reference)
    for name, loss in reference.items():
        torch.testing.assert_close(losses[name], loss)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_large_batch_is_scored_in_chunks_with_unchanged_values(
    tiny_model_args: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scoring in chunks of two images gives each image the scores and maps of a single call on the batch."""
    model = DiffAD(**tiny_model_args | {"pretrained_weights": None}).eval()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        whole = torch_model.score_in_chunks(model.model, images)
        monkeypatch.setattr(torch_model, "SCORE_PIXELS_PER_CHUNK", 2 * 3 * 64 * 64)
        sizes = _call_sizes(model)
        parts = torch_model.score_in_chunks(model.model, images)
    assert max(sizes) == 2 * len(model.model.score_timesteps)
    torch.testing.assert_close(parts.pred_score, whole.pred_score, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts.anomaly_map, whole.anomaly_map, rtol=1e-5, atol=1e-5)


def _preset_chunks(config: str) -> tuple[int, int]:
    """``(training, scoring)`` images per chunk of a preset (``""``: the class defaults)."""
    args = yaml.safe_load((CONFIGS / config).read_text())["model"]["init_args"] if config else {}
    size = args.get("image_size", 256)
    space = resolve_space(args.get("space"))
    model = SimpleNamespace(diffusion_space=space, score_timesteps=args.get("score_timesteps", (20, 201, 401)))
    return tuple(images_per_chunk(model, (size, size), training) for training in (True, False))


@pytest.mark.parametrize(
    ("config", "train_batch"),
    [
        ("diffad.yaml", 8),
        ("diffad_paper.yaml", 2),
        ("diffad_feature.yaml", 16),
        ("diffad_patch.yaml", 2),
        ("diffad_tiny.yaml", 4),
    ],
)
def test_presets_train_in_one_chunk(config: str, train_batch: int) -> None:
    """The presets' training batches fit one chunk: they train exactly as without chunks."""
    assert yaml.safe_load((CONFIGS / config).read_text())["data"]["train_batch_size"] == train_batch
    assert _preset_chunks(config)[0] >= train_batch


def test_class_defaults_chunk_two_whole_images() -> None:
    """Without a config (256 px whole images, three timesteps) a chunk holds two images, whatever the batch."""
    assert _preset_chunks("") == (2, 2)
