#!/usr/bin/env bash
# Every GPU-only RESULT line in one command (see benchmarks/gpu.py); --tiny: CPU check.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m benchmarks.gpu "$@"
