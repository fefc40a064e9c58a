# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""The tiny DiffAD preset of ``configs/diffad_tiny.yaml`` as keyword arguments."""

from pathlib import Path

import yaml

CONFIG = Path(__file__).parents[2] / "configs" / "diffad_tiny.yaml"
TINY_MODEL_ARGS: dict = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
