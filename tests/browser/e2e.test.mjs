// Browser end-to-end test: the built page in Debian's Chromium (playwright-core), on WebGPU
// (SwiftShader) and with WebGPU disabled (CPU fallback). Compares the generated float images with
// what `jit-native sample` produced for the same checkpoint, seed and settings.
//
// Environment (set by scripts/test.sh): JIT_DIST (built page with model.safetensors),
// JIT_REF (safetensors with the native `samples`), JIT_QUERY (page query string with the
// settings), JIT_ARTIFACTS (folder for screenshots).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const DIST = process.env.JIT_DIST;
const REF = process.env.JIT_REF;
const QUERY = process.env.JIT_QUERY;
const ARTIFACTS = process.env.JIT_ARTIFACTS ?? "artifacts";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BASE_FLAGS = ["--no-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic"];
const TIMEOUT = 15 * 60 * 1000;

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm" };
let server, base;

function readTensor(file, name) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const t = header[name];
  assert.ok(t, `tensor ${name} in ${file}`);
  assert.equal(t.dtype, "F32");
  const [s, e] = t.data_offsets;
  const bytes = buf.subarray(8 + n + s, 8 + n + e);
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

function relL2(a, b) {
  assert.equal(a.length, b.length, "same number of values");
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) { num += (a[i] - b[i]) ** 2; den += b[i] ** 2; }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

before(async () => {
  assert.ok(DIST && REF && QUERY, "JIT_DIST, JIT_REF and JIT_QUERY must be set (run scripts/test.sh)");
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://127.0.0.1");
    const file = path.join(DIST, decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
    if (!file.startsWith(path.resolve(DIST)) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404); res.end("not found"); return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => server?.close());

async function withPage(webgpu, fn) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jit-chromium-"));
  const args = webgpu ? [...BASE_FLAGS, "--enable-unsafe-webgpu"] : [...BASE_FLAGS, "--disable-webgpu"];
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: CHROMIUM, headless: true, args });
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    page.on("console", (m) => { if (m.type() === "error") console.error("[page]", m.text()); });
    await fn(page);
  } finally {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function generateOnPage(page) {
  await page.goto(`${base}/?${QUERY}`);
  await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => window.__jit.error), null, "model loads without error");
  await page.click("#go");
  await page.waitForFunction(() => window.__jit.result || window.__jit.error, null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => window.__jit.error), null, "generation succeeds");
  return page.evaluate(() => ({ result: window.__jit.result, steps: window.__jit.steps }));
}

test("WebGPU backend reproduces jit-native's images", { timeout: TIMEOUT }, async () => {
  await withPage(true, async (page) => {
    const { result, steps } = await generateOnPage(page);
    assert.equal(result.backend, "webgpu", "the WebGPU backend was used");
    const ref = readTensor(REF, "samples");
    const err = relL2(Float32Array.from(result.floats), ref);
    console.log(`webgpu vs native: rel L2 ${err.toExponential(2)}, ${result.seconds.toFixed(2)} s`);
    assert.ok(err <= 1e-3, `float images differ: rel L2 ${err}`);
    const n = result.options.steps;
    assert.deepEqual(steps, Array.from({ length: n }, (_, i) => i + 1), "onStep fired once per step");
    assert.equal(await page.locator("#grid canvas").count(), result.count);
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-webgpu.png"), fullPage: true });
  });
});

test("without WebGPU the CPU fallback gives the same images and says so", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    const { result } = await generateOnPage(page);
    assert.equal(result.backend, "cpu");
    assert.ok(await page.locator("#banner").isVisible(), "banner explains the CPU fallback");
    const err = relL2(Float32Array.from(result.floats), readTensor(REF, "samples"));
    console.log(`cpu (wasm) vs native: rel L2 ${err.toExponential(2)}, ${result.seconds.toFixed(2)} s`);
    assert.ok(err <= 1e-3, `float images differ: rel L2 ${err}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-cpu.png"), fullPage: true });
  });
});

test("a file that is not a JiT checkpoint shows an error, and the page keeps working", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    await page.goto(`${base}/?${QUERY}`);
    await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: TIMEOUT });
    await page.setInputFiles("#file", { name: "cat.png", mimeType: "image/png", buffer: Buffer.from("definitely not a checkpoint") });
    await page.waitForFunction(() => window.__jit.error, null, { timeout: 60000 });
    const text = await page.locator("#error").innerText();
    assert.match(text, /not a JiT checkpoint/);
    assert.equal(await page.locator("#go").isEnabled(), true, "the previous model stays usable");
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-bad-file.png"), fullPage: true });
  });
});
