# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD, the diffusion anomaly detector of Lu et al. (ICCV 2023), as an anomalib 2.7 model plugin."""

from anomalib_diffad_autoload import ignore_foreign_deprecations

ignore_foreign_deprecations()  # before anomalib.models, whose import warns about anomalib's own internals

import anomalib.data  # noqa: E402
import anomalib.models  # noqa: E402

from anomalib_diffad.compat import patch_benchmark_collect  # noqa: E402
from anomalib_diffad.data.checks import install_mvtec_folder_check  # noqa: E402
from anomalib_diffad.data.multi import MultiCategory  # noqa: E402
from anomalib_diffad.datamodules import MVTec  # noqa: E402
from anomalib_diffad.lightning_model import DiffAD  # noqa: E402
from anomalib_diffad.torch_model import DiffADModel  # noqa: E402

# anomalib's name-based resolvers (``get_model``, ``get_datamodule``, used by ``anomalib benchmark``) look
# names up as attributes of these packages; register ours there too.
anomalib.models.DiffAD = DiffAD
anomalib.data.MultiCategory = MultiCategory
if not hasattr(anomalib.data, "MVTec"):
    anomalib.data.MVTec = MVTec
patch_benchmark_collect()
install_mvtec_folder_check()

__all__ = ["DiffAD", "DiffADModel", "MVTec", "MultiCategory"]
