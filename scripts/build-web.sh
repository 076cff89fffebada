#!/usr/bin/env bash
# Builds the web demo into dist/ with only wasm-bindgen-cli (no Trunk needed):
#   bash scripts/build-web.sh [MODEL.safetensors]
# MODEL (default: web/model.safetensors if present) is copied as the page's default model.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (have: ${have:-none}) …"
  cargo install wasm-bindgen-cli --version "$want"
fi

cargo build --release --locked -p jit-web --target wasm32-unknown-unknown
rm -rf dist && mkdir -p dist
# Names and producers sections only help debugging: dropping them saves ~5 MB (4 MB gzipped in all).
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-dir dist/pkg \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/jit_web.wasm"
cp web/index.html web/app.js web/style.css dist/
model="${1:-web/model.safetensors}"
if [ -f "$model" ]; then cp "$model" dist/model.safetensors; fi
echo "built dist/ ($(du -sh dist/pkg/jit_web_bg.wasm | cut -f1) wasm); serve it with: python3 -m http.server -d dist 8080"
