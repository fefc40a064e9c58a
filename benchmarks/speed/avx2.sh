#!/usr/bin/env bash
# Run a command as on a CPU without AVX-512 and without bfloat16 units (AVX2 only): torch's own kernels
# (ATEN_CPU_CAPABILITY), oneDNN's, which torch and OpenVINO use for convolutions and bfloat16 (ONEDNN_MAX_CPU_ISA),
# and MKL's, torch's float32 matrix products (MKL_ENABLE_INSTRUCTIONS), are all capped at AVX2, so bfloat16 is
# emulated as it is there. DiffAD's precision choice reads the oneDNN cap (anomalib_diffad/precision.py). An
# emulation: a real AVX2 CPU also differs in clock, caches and vector units, so compare ratios, not seconds.
# Usage: bash benchmarks/speed/avx2.sh <command> [arguments...]
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
exec "$@"
