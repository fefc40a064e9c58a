#!/usr/bin/env bash
# Set everything up, then run the whole test suite (15-17 minutes on 2 idle cores, with AVX-512 BF16 or with the
# AVX2 caps, benchmarks/RESULTS.md; the time it took is printed at the end). Arguments go to pytest, e.g.
# `bash scripts/test.sh tests/test_reliability.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$SECONDS
status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "$(date +%T) test: pytest took $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s (exit status $status)"
exit "$status"
