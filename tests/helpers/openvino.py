# Copyright (C) 2026 anomalib-diffad authors
# SPDX-License-Identifier: Apache-2.0
"""OpenVINO settings of the parity tests."""

FP32 = {"INFERENCE_PRECISION_HINT": "f32"}
"""Compile for float32: on CPUs with bfloat16 units (AVX512-BF16, AMX) OpenVINO otherwise runs in bfloat16,
about 3e-3 off the float32 Lightning path on the normalized scores."""
