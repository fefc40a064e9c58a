#!/usr/bin/env bash
# The main job: set everything up, write the built-in texture dataset (CC0 photos from scikit-image), then
# train and test DiffAD on each category through the `anomalib` CLI, and write the result table and the
# anomaly-map images under results/demo/. About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MALLOC_MMAP_THRESHOLD_=1048576  # glibc keeps freed tensors otherwise; see benchmarks/README.md
DATA=${DATA:-datasets/textures}
OUT=${OUT:-results/demo}
EPOCHS=${EPOCHS:-30}
.venv/bin/python -m anomalib_diffad.data.textures --root "$DATA"
for category in brick grass gravel; do
  .venv/bin/anomalib train --config configs/diffad.yaml \
    --data MVTec --data.root "$DATA" --data.category "$category" \
    --model.image_size 128 \
    --trainer.max_epochs "$EPOCHS" --trainer.check_val_every_n_epoch "$EPOCHS" \
    --trainer.logger lightning.pytorch.loggers.CSVLogger \
    --trainer.logger.save_dir "$OUT/logs" --trainer.logger.name "$category" \
    --default_root_dir "$OUT"
done
.venv/bin/python -m anomalib_diffad.report "$OUT"
