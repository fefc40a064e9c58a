#!/usr/bin/env bash
# The main job: set everything up, write the built-in texture dataset (CC0 photos from scikit-image), then
# train and test DiffAD on each category through the `anomalib` CLI with the CPU preset, then with the patch
# preset, and write each one's result table and summary picture (results/demo/summary.png,
# results/demo/patch/summary.png).
# Run time on 2 idle cores: 9 minutes with AVX-512 BF16, 13 without bf16 units (AVX2 caps), plus the first
# set-up of .venv (benchmarks/RESULTS.md, Demo).
# Progress (category k of n, steps done of total with rate and time left, validation, testing) is printed as
# plain lines, also when the output goes to a file (CI, nohup, tee).
# Settings: EPOCHS, DATA, OUT, CATEGORIES, CONFIG; PATCH_CONFIG, PATCH_STEPS (0: no patch-preset runs);
# VENV=<an installed venv> skips the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VENV:-}" ]; then
  echo "$(date +%T) demo: setting up .venv (scripts/setup.sh; a few minutes the first time)"
  bash scripts/setup.sh
  VENV=.venv
fi
setup_seconds=$SECONDS
export MALLOC_MMAP_THRESHOLD_=1048576  # glibc keeps freed tensors otherwise; see benchmarks/README.md
DATA=${DATA:-datasets/textures}
OUT=${OUT:-results/demo}
EPOCHS=${EPOCHS:-20}
CONFIG=${CONFIG:-configs/diffad.yaml}
PATCH_CONFIG=${PATCH_CONFIG:-configs/diffad_patch.yaml}
PATCH_STEPS=${PATCH_STEPS:-300}
read -r -a categories <<< "${CATEGORIES:-brick grass gravel}"

# train_all <label> <config> <output folder> <schedule: trainer and data arguments...>
train_all() {
  local label=$1 config=$2 out=$3
  shift 3
  for index in "${!categories[@]}"; do
    category=${categories[$index]}
    echo "$(date +%T) demo: $label, category $((index + 1)) of ${#categories[@]}: $category" \
      "(validation on 20% of the training normals, then the test set)"
    "$VENV/bin/anomalib" train --config "$config" \
      --data MVTec --data.root "$DATA" --data.category "$category" \
      --data.val_split_mode from_train --data.val_split_ratio 0.2 --data.seed 0 \
      --model.image_size 128 "$@" \
      --trainer.logger lightning.pytorch.loggers.CSVLogger --trainer.log_every_n_steps 1 \
      --trainer.logger.save_dir "$out/logs" --trainer.logger.name "$category" \
      --default_root_dir "$out"
  done
  echo "$(date +%T) demo: $label: writing the result table and the summary picture"
  "$VENV/bin/python" -m diffad_tools.report "$out" --data-root "$DATA"
}

echo "$(date +%T) demo: writing the built-in texture dataset to $DATA (kept if already there)"
"$VENV/bin/python" -m diffad_tools.textures --root "$DATA" --categories "${categories[@]}"
train_all "$CONFIG, $EPOCHS epochs" "$CONFIG" "$OUT" \
  --trainer.max_epochs "$EPOCHS" --trainer.check_val_every_n_epoch "$EPOCHS"
if [ "$PATCH_STEPS" -gt 0 ]; then  # 16 x 16 patch vectors per 128 px image: batches of 8 images are 2048 vectors
  train_all "$PATCH_CONFIG, $PATCH_STEPS steps" "$PATCH_CONFIG" "$OUT/patch" --data.train_batch_size 8 \
    --trainer.max_steps "$PATCH_STEPS" --trainer.val_check_interval "$PATCH_STEPS"
fi
run_seconds=$((SECONDS - setup_seconds))
echo "$(date +%T) demo: done in $((SECONDS / 60)) min $((SECONDS % 60)) s" \
  "(set-up $((setup_seconds / 60)) min $((setup_seconds % 60)) s, data and runs $((run_seconds / 60)) min $((run_seconds % 60)) s)"
echo "demo: open $OUT/summary.png first; the table is $OUT/results.md (patch preset: $OUT/patch/)"
