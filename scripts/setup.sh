#!/usr/bin/env bash
# Set up .venv with torch, anomalib 2.7 (+OpenVINO) and this project (editable, with the offline ImageNet
# weights and the test tools). Idempotent: a second run only checks what is installed.
#
# torch: without an NVIDIA GPU (no `nvidia-smi -L` listing one) the CPU build comes from torch's CPU index
# (TORCH_CPU_INDEX); with one, PyPI's default build (on Linux the CUDA build: about 4.5 GB more, in nvidia-*
# and triton packages). TORCH_INDEX overrides the choice: `cpu`, `default` (PyPI, or pip's configured index) or
# an index URL. If the chosen index cannot be reached, torch comes from the default index, with a message.
# torch is pinned (TORCH_VERSION, TORCHVISION_VERSION) so that pip never swaps it.
#
# Progress: one line per step with its duration, and one per package pip collects; pip's full output goes to
# .venv/setup.log. `bash scripts/setup.sh --dry-run` prints the choice and the pip commands and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_PINS=("torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}")
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
LOG=.venv/setup.log

say() { echo "$(date +%T) setup: $*"; }

has_nvidia_gpu() { command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L 2> /dev/null | grep -q '^GPU'; }

reachable() {  # an index answers within 10 s (a file:// index: its folder exists)
  "$PYTHON" - "$1" > /dev/null 2>&1 << 'PY'
import os, sys, urllib.parse, urllib.request
url = sys.argv[1]
if url.startswith("file:"):
    sys.exit(not os.path.isdir(urllib.request.url2pathname(urllib.parse.urlsplit(url).path)))
urllib.request.urlopen(url, timeout=10)
PY
}

pip_install() {  # pip install "$@": a line per package collected, the whole output in $LOG
  echo "+ pip install $*"
  [ "$DRY_RUN" = 1 ] && return 0
  set +e
  .venv/bin/python -m pip install --progress-bar off "$@" 2>&1 | tee -a "$LOG" \
    | { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' | sed -u 's/^/    /' || true; }
  local status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || tail -n 20 "$LOG" >&2
  return "$status"
}

choice=${TORCH_INDEX:-auto}
if [ "$choice" = auto ]; then
  if has_nvidia_gpu; then
    choice=default
    say "NVIDIA GPU found: torch's default build (CUDA on Linux; TORCH_INDEX=cpu for the CPU build)"
  else
    choice=cpu
    say "no NVIDIA GPU found: torch's CPU build (TORCH_INDEX=default for PyPI's build)"
  fi
fi
case $choice in
  cpu) index=$TORCH_CPU_INDEX ;;
  default) index= ;;
  http://* | https://* | file://*) index=$choice ;;
  *)
    echo "setup: TORCH_INDEX must be auto, cpu, default or an index URL, not '$choice'" >&2
    exit 2
    ;;
esac
if [ -n "$index" ] && ! reachable "$index/"; then
  say "torch index $index cannot be reached: torch comes from the default index instead" \
    "(on Linux PyPI's CUDA build, about 4.5 GB more; TORCH_INDEX=<url> names another index)"
  index=
fi
say "torch index: ${index:-default}"

start=$SECONDS
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PYTHON"
  if [ "$DRY_RUN" = 0 ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
fi
say "installing torch and torchvision"
if [ -n "$index" ]; then
  pip_install --index-url "$index" "${TORCH_PINS[@]}" || {
    say "installing from $index failed: torch comes from the default index instead"
    pip_install "${TORCH_PINS[@]}"
  }
else
  pip_install "${TORCH_PINS[@]}"
fi
say "torch ready after $((SECONDS - start)) s; installing anomalib, OpenVINO and this project"
pip_install "${TORCH_PINS[@]}" -e ".[weights,test]"
say "done in $((SECONDS - start)) s"
