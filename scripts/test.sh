#!/usr/bin/env bash
# Set everything up, check the code with ruff, then run the whole test suite with every docstring example
# (15-20 minutes on 2 idle cores, with AVX-512 BF16 or with the AVX2 caps, benchmarks/RESULTS.md; the time it took
# is printed at the end). Arguments go to pytest, e.g. `bash scripts/test.sh tests/test_reliability.py -x`.
# ruff's findings fail the script, after pytest has run, with a closing line that says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
lint=0
.venv/bin/ruff check . || lint=$?
[ "$lint" = 0 ] || echo "$(date +%T) test: ruff check . failed (exit status $lint, findings above); running pytest anyway"
start=$SECONDS
status=0
.venv/bin/python -m pytest "$@" || status=$?
echo "$(date +%T) test: pytest took $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s (exit status $status)"
if [ "$lint" != 0 ]; then
  echo "$(date +%T) test: FAILED: ruff check . found problems (exit status $lint; run .venv/bin/ruff check . to see them)"
  [ "$status" != 0 ] || status=$lint
fi
exit "$status"
