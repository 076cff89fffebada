#!/usr/bin/env bash
# Builds the browser module, its npm-style package and the demo page into dist/:
#   bash scripts/build-web.sh [MODEL.safetensors]
# dist/pkg/  the package (scripts/web-pkg.sh, which `trunk build` runs too)
# dist/      the demo page, models.json and the model files it lists that exist in web/
# MODEL (default: web/model.safetensors) becomes dist/model.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
rm -rf dist
bash scripts/web-pkg.sh dist/pkg

# The demo page and its models.
cp web/index.html web/app.js web/style.css web/models.json dist/
node -e 'for (const m of require("./web/models.json").models) console.log(m.file)' | while read -r f; do
  if [ -f "web/$f" ]; then mkdir -p "dist/$(dirname "$f")" && cp "web/$f" "dist/$f"; fi
done
model="${1:-web/model.safetensors}"
if [ -f "$model" ]; then cp "$model" dist/model.safetensors; fi
echo "built dist/ in $((SECONDS - t0)) s; serve it with: python3 -m http.server -d dist 8080"
