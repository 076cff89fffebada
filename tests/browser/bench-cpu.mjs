// Times the page's CPU fallback (the wasm module on burn's Flex, WebGPU disabled) in headless
// Chromium: prints one JSON line with the seconds from opening the page to the model loaded on
// every worker (and which wasm module runs: "relaxed" or "simd128"), then one per round with the seconds `generate` reported. With
// JIT_WEBGPU=1 it times the WebGPU path instead (SwiftShader's software WebGPU here).
//
//   node tests/browser/bench-cpu.mjs DIST MODEL_FILE QUERY [ROUNDS]
// DIST: a built site (scripts/build-web.sh); MODEL_FILE: a model file inside DIST; QUERY: the
// page's settings (count, steps, sampler, cfg, …). The first round includes start-up work.
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const [distArg, model, query, rounds = "3"] = process.argv.slice(2);
const dist = distArg && path.resolve(distArg);
if (!distArg || !model || !query) {
  console.error("usage: node tests/browser/bench-cpu.mjs DIST MODEL_FILE QUERY [ROUNDS]");
  process.exit(2);
}
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(new URL(req.url, "http://127.0.0.1").pathname);
  const file = path.join(dist, rel === "/" ? "index.html" : rel);
  if (!file.startsWith(path.resolve(dist)) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
    res.writeHead(404); res.end(); return;
  }
  res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jit-bench-"));
const ctx = await chromium.launchPersistentContext(dir, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--no-first-run", process.env.JIT_WEBGPU === "1" ? "--enable-unsafe-webgpu" : "--disable-webgpu"],
});
try {
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const opened = Date.now();
  await page.goto(`http://127.0.0.1:${server.address().port}/?model=${model}&${query}`);
  await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: 600000 });
  // A first visit: a fresh profile, so nothing of the module is cached.
  const ready = await page.evaluate(() => ({ error: window.__jit.error, lanes: window.__jit.lanes, simd: window.__jit.simd }));
  if (ready.error) throw new Error(ready.error);
  console.log(JSON.stringify({ ready: (Date.now() - opened) / 1000, lanes: ready.lanes, simd: ready.simd }));
  for (let i = 0; i < Number(rounds); i++) {
    await page.click("#go");
    await page.waitForFunction(() => window.__jit.result || window.__jit.error, null, { timeout: 600000 });
    const r = await page.evaluate(() => ({ error: window.__jit.error, result: window.__jit.result && { seconds: window.__jit.result.seconds, count: window.__jit.result.count, backend: window.__jit.result.backend } }));
    if (r.error) throw new Error(r.error);
    console.log(JSON.stringify({ round: i, ...r.result }));
    await page.evaluate(() => { window.__jit.result = null; });
  }
} finally {
  await ctx.close();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
}
