// Smoke test of an optimised wasm module in Node (CPU backend), used by scripts/build-web.sh to
// decide whether to keep wasm-opt's output:
//   node smoke.mjs PKG_DIR CANDIDATE.wasm MODEL.safetensors
// Loads PKG_DIR/jit_web.js twice — with PKG_DIR/jit_web_bg.wasm (the reference) and with the
// candidate — samples two steps of one image with each, and requires the same floats (rel. L2
// ≤ 1e-5). Exits non-zero with a message otherwise.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pkg, candidate, model] = process.argv.slice(2);
const weights = fs.readFileSync(model);

async function sample(wasmFile, tag) {
  // A fresh module instance per wasm: import the glue under a distinct URL.
  const url = `${pathToFileURL(path.resolve(pkg, "jit_web.js")).href}?${tag}`;
  const mod = await import(url);
  await mod.default({ module_or_path: fs.readFileSync(wasmFile) });
  const g = await mod.JitGenerator.load(new Uint8Array(weights), { backend: "cpu" });
  const out = await g.generate({ classLabel: 0, seed: 3, steps: 2, count: 1 });
  return out.floats;
}

try {
  const t = Date.now();
  const a = await sample(path.join(pkg, "jit_web_bg.wasm"), "reference");
  const b = await sample(candidate, "candidate");
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += a[i] ** 2; }
  const err = Math.sqrt(num / Math.max(den, 1e-30));
  if (a.length !== b.length || !(err <= 1e-5)) throw new Error(`outputs differ (rel. L2 ${err})`);
  console.log(`smoke test passed: same samples (rel. L2 ${err.toExponential(1)}), ${((Date.now() - t) / 1000).toFixed(1)} s`);
} catch (e) {
  console.error(`smoke test failed: ${e.message ?? e}`);
  process.exit(1);
}
