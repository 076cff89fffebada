#!/usr/bin/env bash
# The training data loader beside the official code's, on the same JPEGs, in one run:
#   bash scripts/bench-loader.sh [IMAGES] [THREADS] [IMAGE_SIZE]
# Makes IMAGES (default 1000) ImageNet-like JPEGs (500×375, quality 90, smooth random scenes
# with sensor-like noise, 10 classes) in a temporary folder, then prints one Markdown table:
# `jit-native bench --loader folder:DIR` (decode, centre crop, resize, flip, to f32 in [-1, 1])
# and torchvision's ImageFolder + DataLoader with the official transform (scripts/
# loader_torchvision.py; it hands uint8 tensors on, the official code scales them on the GPU),
# both with THREADS decoding threads / worker processes (default: the cores), batches of 32 at
# IMAGE_SIZE (default 256), 20 batches after a warm-up one.
# Python: JIT_PYTHON (default ~/.cache/jit-fid-venv/bin/python, scripts/fid-golden.sh makes it)
# with torch, torchvision, numpy and Pillow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
images=${1:-1000}
threads=${2:-$(nproc)}
size=${3:-256}
python=${JIT_PYTHON:-$HOME/.cache/jit-fid-venv/bin/python}
"$python" -c "import torch, torchvision, numpy, PIL" || { echo "needs torch, torchvision, numpy and Pillow in $python (set JIT_PYTHON)" >&2; exit 2; }
cargo build --release --locked -p jit-native
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" - "$work/jpegs" "$images" <<'PY'
import os, sys
import numpy as np
from PIL import Image
root, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(n):
    d = os.path.join(root, f"class{i % 10:02d}")
    os.makedirs(d, exist_ok=True)
    # A smooth scene (a bicubic blow-up of 8×6 random colours) with sensor-like noise.
    scene = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    noisy = np.clip(np.asarray(scene, dtype=np.float32) + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(os.path.join(d, f"{i:06d}.jpg"), quality=90)
PY
echo "$images JPEGs ($(du -sh "$work/jpegs" | cut -f1)), $threads threads, $(nproc) cores, $(date -u +%F)"
echo
"$CARGO_TARGET_DIR/release/jit-native" bench --loader "folder:$work/jpegs" --image-size "$size" --batch-size 32 \
  --train-steps 20 --loader-threads "$threads"
"$python" scripts/loader_torchvision.py "$work/jpegs" "$size" 32 "$threads" 20
