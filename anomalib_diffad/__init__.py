# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD, the diffusion anomaly detector of Lu et al. (ICCV 2023), as an anomalib 2.7 model plugin."""

from anomalib_diffad.lightning_model import DiffAD
from anomalib_diffad.torch_model import DiffADModel

__all__ = ["DiffAD", "DiffADModel"]
