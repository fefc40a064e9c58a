# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""Data for DiffAD: the unified model's datamodule (:mod:`.multi`), the checks run before training (:mod:`.checks`)."""
