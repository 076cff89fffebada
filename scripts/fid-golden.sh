#!/usr/bin/env bash
# Regenerates tests/golden/fid/ (FID/IS golden vectors from torch-fidelity's
# 'inception-v3-compat' extractor with formula weights). Usage: bash scripts/fid-golden.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FID_VENV:-$HOME/.cache/jit-fid-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, torch_fidelity, numpy, scipy" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch torch-fidelity numpy scipy
fi
exec "$VENV/bin/python" scripts/fid-golden.py "$@"
