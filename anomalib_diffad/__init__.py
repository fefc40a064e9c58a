# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""DiffAD, the diffusion anomaly detector of Lu et al. (ICCV 2023), as an anomalib 2.7 model plugin.

Importing the package changes nothing in anomalib. The ``anomalib`` command line gets the plugin's names
(``--model DiffAD``, ``--data MVTec``, ``class_path: DiffAD`` in ``anomalib benchmark`` configs) and fixes from
its start-up hook (:mod:`diffad_tools.anomalib_cli`).
"""

from anomalib_diffad.data.multi import MultiCategory
from anomalib_diffad.datamodules import MVTec
from anomalib_diffad.lightning_model import DiffAD
from anomalib_diffad.torch_model import DiffADModel

__all__ = ["DiffAD", "DiffADModel", "MVTec", "MultiCategory"]
