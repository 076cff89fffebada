#!/usr/bin/env bash
# Builds the browser package, both modules and the files around them, into one folder:
#   bash scripts/web-pkg.sh OUT_DIR        (default: $TRUNK_STAGING_DIR/pkg, for Trunk's hook)
# OUT_DIR/  package.json, README.md, wasm-bindgen's ES module (jit_web.js) + .d.ts, the module
#           jit_web_bg.wasm and jit_web_relaxed_bg.wasm (the same built with relaxed SIMD),
#           worker.js + client.js (JitWorker: the module in a Web Worker) + client.d.ts.
# scripts/build-web.sh and `trunk build` (Trunk.toml's build hook) both make their pkg/ here, so
# the two sites ship the same bytes. JIT_WASM_OPT=z (or s) runs wasm-opt -Oz (-Os); off by
# default, since it made the gzipped module larger. Needs wasm-bindgen-cli (installed here, the
# version in Cargo.lock) and npm (for binaryen's wasm-opt, scripts/web-tools).
set -euo pipefail
out="${1:-${TRUNK_STAGING_DIR:?give the output folder: bash scripts/web-pkg.sh OUT_DIR}/pkg}"
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
source scripts/env.sh

rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (have: ${have:-none}) …"
  cargo install wasm-bindgen-cli --version "$want"
fi

# Root Cargo.toml's [profile.wasm-release]: release tuned for size (opt-level z, fat LTO, one
# codegen unit, panic=abort).
cargo build --profile wasm-release --locked -p jit-web --target wasm32-unknown-unknown
raw="$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-release/jit_web.wasm"
# wasm-ld names its wrappers that rerun the static constructors before every export
# "NAME.command_export"; `start` in jit-web's lib.rs calls them once instead (they cost ≈ 16 % of
# a one-image sampling). The raw module still has its name section.
if grep -qa 'command_export' "$raw"; then
  echo "$raw reruns its static constructors on every call: jit-web's start() must call __wasm_call_ctors" >&2
  exit 1
fi
# Only the package's own files are replaced; anything else in OUT_DIR stays.
(cd "$out" && rm -f jit_web.js jit_web.d.ts jit_web_bg.wasm jit_web_bg.wasm.d.ts jit_web_relaxed_bg.wasm \
  worker.js client.js client.d.ts README.md package.json)
# Names and producers sections only help debugging: dropping them saves ~5 MB.
wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$out" "$raw"
wasm="$out/jit_web_bg.wasm"
size() { printf '%s bytes (%s gzipped)' "$(stat -c %s "$1")" "$(gzip -9 -c "$1" | wc -c)"; }
echo "wasm-bindgen: $(size "$wasm")"

# The same module with relaxed SIMD's fused multiply-add in the CPU fallback's matrix products
# (jit-web's `relaxed-simd` feature, jit-core's gemm_simd128.rs), for browsers that have relaxed
# SIMD (Chromium 114+): the worker picks it where `WebAssembly.validate` accepts a relaxed
# instruction. Only jit-core and jit-web build again; the feature is off in the build above, so
# each run of this script builds jit-web twice.
cargo build --profile wasm-release --locked -p jit-web --target wasm32-unknown-unknown --features relaxed-simd
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
relaxed="$work/relaxed" && mkdir "$relaxed"
wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$relaxed" "$raw"
# One JavaScript glue serves both modules: their imports and exports must be the same.
if ! cmp -s "$relaxed/jit_web.js" "$out/jit_web.js"; then
  echo "the relaxed-SIMD module's wasm-bindgen glue differs from the plain one's" >&2
  exit 1
fi
cp "$relaxed/jit_web_bg.wasm" "$out/jit_web_relaxed_bg.wasm"
echo "relaxed SIMD: $(size "$out/jit_web_relaxed_bg.wasm")"

# wasm-opt from npm's binaryen (a current one: Debian's binaryen 108 produces a module that fails
# at start-up), at level JIT_WASM_OPT (z or s; 0, the default, skips it). Its output is kept only if it
# passes a smoke test in Node — it starts, loads the default model and samples the same floats as
# wasm-bindgen's module — and is smaller gzipped, which is what visitors download. (Measured on
# this build: -Oz 12.4 → 9.6 MB raw but 2.30 → 2.44 MB gzipped, -Os 10.5 MB / 2.45 MB, so
# wasm-bindgen's module is kept; wasm-opt takes ~4 minutes on 2 cores, so it is opt-in.)
level="${JIT_WASM_OPT:-0}"
if [ "$level" != 0 ]; then
  (cd scripts/web-tools && npm ci --no-audit --no-fund --silent)
  opt="$work/opt" && mkdir "$opt"
  t=$SECONDS
  scripts/web-tools/node_modules/.bin/wasm-opt "-O$level" \
    --enable-bulk-memory --enable-nontrapping-float-to-int --enable-reference-types \
    --enable-sign-ext --enable-mutable-globals --enable-multivalue \
    "$wasm" -o "$opt/jit_web_bg.wasm"
  echo "wasm-opt -O$level ($((SECONDS - t)) s): $(size "$opt/jit_web_bg.wasm")"
  if ! node scripts/web-tools/smoke.mjs "$out" "$opt/jit_web_bg.wasm" web/model.safetensors; then
    echo "wasm-opt's module failed the smoke test; keeping wasm-bindgen's" >&2
  elif [ "$(gzip -9 -c "$opt/jit_web_bg.wasm" | wc -c)" -ge "$(gzip -9 -c "$wasm" | wc -c)" ]; then
    echo "wasm-opt's module is not smaller gzipped; keeping wasm-bindgen's"
  else
    cp "$opt/jit_web_bg.wasm" "$wasm"
  fi
fi

# The npm-style package around the module.
version=$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' Cargo.toml)
cp crates/jit-web/js/worker.js crates/jit-web/js/client.js crates/jit-web/js/client.d.ts "$out/"
cp crates/jit-web/README.md "$out/README.md"
sed "s/\"version\": \"0.0.0\"/\"version\": \"$version\"/" crates/jit-web/js/package.json > "$out/package.json"
rm -f "$out/.gitignore"
echo "package in $out: module $(size "$wasm")"
