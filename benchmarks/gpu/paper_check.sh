#!/usr/bin/env bash
# The paper-sized preset (configs/diffad_paper.yaml: ADM-sized UNet, EfficientNet-B4 features, 256 px, fp16
# mixed precision) on one GPU, sized to finish in under 8 minutes: 5 minutes of training, then validation
# (calibration, thresholds) and test with anomalib's metrics; prints the result table.
#   ROOT=<MVTec-layout root> CATEGORY=<category> NAME="<dataset name>" bash benchmarks/gpu/paper_check.sh
# B4 weights come from the HF hub (timm pretrained=True); offline, pre-fill the HF cache and set HF_HUB_OFFLINE=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${ROOT:-../shared/data/mvtec3d}
CATEGORY=${CATEGORY:-tire}
NAME=${NAME:-MVTec 3D-AD tire (RGB)}
PY=${PY:-.venv/bin/python}
OUT=benchmarks/gpu/results
"$PY" benchmarks/quality/compare.py --root "$ROOT" --category "$CATEGORY" --dataset-name "$NAME" \
    --config configs/diffad_paper.yaml --image-size 256 --batch-size 2 --max-steps 10000 --max-minutes 5 \
    --accelerator gpu --precision 16-mixed --models diffad --no-ablation --out "$OUT" --force
"$PY" benchmarks/quality/summarize.py "$OUT"
