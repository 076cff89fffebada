// Browser end-to-end test: the built page in Debian's Chromium (playwright-core), on WebGPU
// (SwiftShader) and with WebGPU disabled (CPU fallback). Compares the generated float images with
// what `jit-native sample` produced for the same checkpoint, seed and settings. Also: the module
// runs in a Web Worker (a main-thread timer keeps ticking during generation), cancel latency,
// the model picker (models.json), dropping a file, and the npm-style package dist/pkg loaded the
// way crates/jit-web/README.md's embedding example does (that example is served as /embed.html).
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
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");

const DIST = process.env.JIT_DIST;
const REF = process.env.JIT_REF;
const QUERY = process.env.JIT_QUERY;
const ARTIFACTS = process.env.JIT_ARTIFACTS ?? "artifacts";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const BASE_FLAGS = ["--no-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--disable-quic"];
const TIMEOUT = 15 * 60 * 1000;

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
// The picker test's manifest: the test model (dist/model.safetensors) and the repository's
// shapes model (web/model.safetensors, 32×32, served as /shapes.safetensors).
const SHAPES = path.join(ROOT, "web/model.safetensors");
const TEST_MANIFEST = { models: [
  { file: "model.safetensors", title: "Test model", description: "tiny, trained for 40 steps by scripts/test.sh", credit: "the test" },
  { file: "shapes.safetensors", title: "Shapes", description: "the demo's default model", credit: "this project" },
] };

/** The ```html block after "embed.html" in crates/jit-web/README.md: the embedding example. */
function embedExample() {
  const readme = fs.readFileSync(path.join(ROOT, "crates/jit-web/README.md"), "utf8");
  const m = readme.match(/embed\.html[\s\S]*?```html\n([\s\S]*?)```/);
  assert.ok(m, "crates/jit-web/README.md has the embed.html example");
  return m[1];
}
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
    if (url.pathname.endsWith("_bg.wasm")) { // jit_web_bg.wasm or jit_web_relaxed_bg.wasm
      wasmDownloads++;
      wasmFiles.push(path.basename(url.pathname));
    }
    if (url.pathname === "/embed.html") {
      res.writeHead(200, { "content-type": "text/html" }); res.end(embedExample()); return;
    }
    if (url.pathname === "/models.json") {
      res.writeHead(200, { "content-type": "application/json" }); res.end(JSON.stringify(TEST_MANIFEST)); return;
    }
    if (url.pathname === "/shapes.safetensors") {
      res.writeHead(200, { "content-type": "application/octet-stream" }); fs.createReadStream(SHAPES).pipe(res); return;
    }
    // /demo/… is dist/ as built, with its own models.json and demo models.
    const rel = url.pathname.startsWith("/demo/") ? url.pathname.slice("/demo".length) : url.pathname;
    const file = path.join(DIST, decodeURIComponent(rel === "/" ? "/index.html" : rel));
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

/** Requests for the wasm module the test server answered, and the files asked for. */
let wasmDownloads = 0;
const wasmFiles = [];

/** A module that runs `f32x4.relaxed_madd`: valid where the engine has relaxed SIMD. */
const RELAXED_PROBE = [0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 28, 1, 26, 0,
  67, 0, 0, 0, 0, 253, 19, 67, 0, 0, 0, 0, 253, 19, 67, 0, 0, 0, 0, 253, 19, 253, 133, 2, 11];

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

async function generateOnPage(page, extra = "") {
  await page.goto(`${base}/?${QUERY}${extra}`);
  await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => window.__jit.error), null, "model loads without error");
  await page.click("#go");
  const statusDuring = await page.locator("#status").innerText();
  await page.waitForFunction(() => window.__jit.result || window.__jit.error, null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => window.__jit.error), null, "generation succeeds");
  return { statusDuring, ...(await page.evaluate(() => ({ result: window.__jit.result, steps: window.__jit.steps, worker: window.__jit.worker }))) };
}

test("WebGPU backend reproduces jit-native's images", { timeout: TIMEOUT }, async () => {
  await withPage(true, async (page) => {
    const { result, steps, statusDuring, worker } = await generateOnPage(page);
    assert.equal(result.backend, "webgpu", "the WebGPU backend was used");
    assert.equal(worker, true, "the page drives the module in a worker");
    assert.match(statusDuring, /compiling GPU kernels \(first run only\)/i, "first WebGPU run says it compiles kernels");
    assert.doesNotMatch(await page.locator("#status").innerText(), /compiling/i, "and stops saying so when done");
    // precision "auto": f16 products where the adapter has shader-f16 (SwiftShader has not).
    const hasF16 = await page.evaluate(async () => (await navigator.gpu.requestAdapter()).features.has("shader-f16"));
    const { precision } = await page.evaluate(() => window.__jit.info);
    assert.equal(precision, hasF16 ? "f16" : "f32", "f16 exactly where the adapter has shader-f16");
    const ref = readTensor(REF, "samples");
    const err = relL2(Float32Array.from(result.floats), ref);
    console.log(`webgpu (${precision}) vs native f32: rel L2 ${err.toExponential(2)}, ${result.seconds.toFixed(2)} s`);
    assert.ok(err <= (hasF16 ? 2e-2 : 1e-3), `float images differ: rel L2 ${err}`);
    const n = result.options.steps;
    assert.deepEqual(steps, Array.from({ length: n }, (_, i) => i + 1), "onStep fired once per step");
    assert.equal(await page.locator("#grid canvas").count(), result.count);
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-webgpu.png"), fullPage: true });
    if (!hasF16) {
      // Asking for f16 explicitly there is a clear error.
      await page.goto(`${base}/?${QUERY}&precision=f16`);
      await page.waitForFunction(() => window.__jit.error, null, { timeout: TIMEOUT });
      assert.match(await page.evaluate(() => window.__jit.error), /f16 needs WebGPU with the shader-f16 feature/);
    }
  });
});

test("without WebGPU the CPU fallback gives the same images and says so", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    const { result, statusDuring } = await generateOnPage(page);
    assert.equal(result.backend, "cpu");
    assert.doesNotMatch(statusDuring, /compiling/i, "no kernel compilation on the CPU");
    assert.ok(await page.locator("#banner").isVisible(), "banner explains the CPU fallback");
    const err = relL2(Float32Array.from(result.floats), readTensor(REF, "samples"));
    console.log(`cpu (wasm) vs native: rel L2 ${err.toExponential(2)}, ${result.seconds.toFixed(2)} s`);
    assert.ok(err <= 1e-3, `float images differ: rel L2 ${err}`);
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-cpu.png"), fullPage: true });
  });
});

test("the CPU fallback runs the relaxed-SIMD module where the browser has it, the plain one on request, with the same images", { timeout: TIMEOUT }, async () => {
  // Both sites (scripts/build-web.sh's and Trunk's) ship both modules.
  assert.ok(fs.existsSync(path.join(DIST, "pkg/jit_web_relaxed_bg.wasm")), "the site has the relaxed-SIMD module");
  await withPage(false, async (page) => {
    const runs = {};
    for (const simd of ["auto", "simd128"]) {
      const before = wasmFiles.length;
      const { result } = await generateOnPage(page, `&simd=${simd}&lanes=1`);
      runs[simd] = {
        result, files: wasmFiles.slice(before),
        simd: await page.evaluate(() => window.__jit.simd), status: await page.locator("#status").innerText(),
      };
    }
    const engineHas = await page.evaluate((probe) => WebAssembly.validate(new Uint8Array(probe)), RELAXED_PROBE);
    const expected = engineHas ? "relaxed" : "simd128";
    assert.equal(runs.auto.simd, expected, `the module for this browser (relaxed SIMD: ${engineHas})`);
    assert.deepEqual(runs.auto.files, [expected === "relaxed" ? "jit_web_relaxed_bg.wasm" : "jit_web_bg.wasm"]);
    assert.equal(/relaxed SIMD/.test(runs.auto.status), expected === "relaxed", `the status says which: ${runs.auto.status}`);
    assert.equal(runs.simd128.simd, "simd128", "?simd=simd128 takes the plain module");
    assert.deepEqual(runs.simd128.files, ["jit_web_bg.wasm"]);
    assert.doesNotMatch(runs.simd128.status, /relaxed/);
    const ref = readTensor(REF, "samples");
    for (const [simd, run] of Object.entries(runs)) {
      assert.equal(run.result.backend, "cpu");
      const err = relL2(Float32Array.from(run.result.floats), ref);
      console.log(`cpu (wasm, ${run.simd}) vs native: rel L2 ${err.toExponential(2)}, ${run.result.seconds.toFixed(2)} s`);
      assert.ok(err <= 1e-3, `simd=${simd}: float images differ from native: rel L2 ${err}`);
    }
  });
});

test("on the CPU a batch is split over workers and gives the images one worker gives", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    const run = async (lanes) => {
      await openPage(page, `model=shapes.safetensors&class=2&count=5&seed=3&steps=3&sampler=heun&cfg=2.9&low=0.1&high=1&lanes=${lanes}`);
      await page.click("#go");
      await page.waitForFunction(() => window.__jit.result || window.__jit.error, null, { timeout: TIMEOUT });
      return page.evaluate(() => ({
        error: window.__jit.error, lanes: window.__jit.lanes, result: window.__jit.result, steps: window.__jit.steps,
        status: document.getElementById("status").textContent, previewWidth: document.getElementById("preview").width,
        size: window.__jit.info.imageSize,
        preview: (() => {
          const c = document.getElementById("preview");
          return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
        })(),
      }));
    };
    const one = await run(1);
    const downloadsBefore = wasmDownloads;
    const three = await run(3);
    assert.equal(wasmDownloads - downloadsBefore, 1, "the extra workers start from the first worker's compiled module");
    for (const r of [one, three]) assert.equal(r.error, null, "generation succeeds");
    assert.equal(one.lanes, 1);
    assert.equal(three.lanes, 3, "?lanes=3 starts three workers for a small model on the CPU");
    assert.match(three.status, /in 3 Web Workers/);
    assert.equal(three.result.count, 5);
    assert.deepEqual(three.steps, [1, 2, 3], "one merged preview per step");
    assert.equal(three.previewWidth, 5 * three.size, "the preview strip holds all five images");
    const previewDiff = Math.max(...three.preview.map((v, i) => Math.abs(v - one.preview[i])));
    assert.ok(previewDiff <= 1, `the last preview strip differs from one worker's by up to ${previewDiff} levels`);
    const err = relL2(Float32Array.from(three.result.floats), Float32Array.from(one.result.floats));
    console.log(`3 workers vs 1: rel L2 ${err.toExponential(2)}; ${one.result.seconds.toFixed(2)} s on 1, ${three.result.seconds.toFixed(2)} s on 3`);
    assert.ok(err <= 1e-5, `the images differ: rel L2 ${err}`);
    assert.equal(await page.locator("#grid canvas").count(), 5);
    // A part outside the noise stream's range is a clear error.
    const bad = await page.evaluate(async () => {
      const { JitWorker } = await import("./pkg/client.js");
      const jit = await JitWorker.create({ lanes: 1 });
      try {
        await jit.load("shapes.safetensors");
        await jit.generate({ count: 1, firstImage: -1 });
        return "no error";
      } catch (e) {
        return e.message;
      } finally {
        jit.terminate();
      }
    });
    assert.match(bad, /^option 'firstImage' is -1: it must be an integer from 0 to \d+$/);
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

test("models.json lists models the build copied", () => {
  const { models } = JSON.parse(fs.readFileSync(path.join(DIST, "models.json"), "utf8"));
  assert.ok(models.length >= 1);
  for (const m of models) {
    assert.equal(typeof m.file, "string"); assert.equal(typeof m.title, "string");
    assert.ok(fs.existsSync(path.join(DIST, m.file)), `${m.file} is in dist/`);
  }
});

// The demo's own models (web/models.json): each loads from the picker and samples an image
// with its dataset's background — black around Fashion-MNIST's clothes, white around emoji.
test("the demo's trained models load from the picker and draw their datasets", { timeout: TIMEOUT }, async () => {
  const { models } = JSON.parse(fs.readFileSync(path.join(DIST, "models.json"), "utf8"));
  const expect = [
    { title: "Fashion-MNIST", size: 32, channels: 1, classes: 10, first: "T-shirt/top", background: -1 },
    { title: "Emoji", size: 64, channels: 3, classes: 8, first: "animals", background: 1 },
  ];
  // On the CPU fallback: SwiftShader's WebGPU takes minutes for these models (the WebGPU path
  // is checked for parity above).
  await withPage(false, async (page) => {
    await page.goto(`${base}/demo/?class=0&count=2&seed=3&steps=8&sampler=heun&cfg=2.9&low=0.1&high=1`);
    await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: TIMEOUT });
    assert.equal(await page.evaluate(() => window.__jit.error), null);
    assert.deepEqual(await page.locator("#model-select option").allInnerTexts(), models.map((m) => m.title));
    for (const want of expect) {
      await page.selectOption("#model-select", { label: want.title });
      await page.waitForFunction((t) => window.__jit.model === t && window.__jit.ready, want.title, { timeout: TIMEOUT });
      const info = await page.evaluate(() => window.__jit.info);
      assert.equal(info.imageSize, want.size); assert.equal(info.channels, want.channels);
      assert.equal(info.classNames.length, want.classes); assert.equal(info.classNames[0], want.first);
      await page.selectOption("#class", "0");
      await page.click("#go");
      await page.waitForFunction(() => window.__jit.result || window.__jit.error, null, { timeout: TIMEOUT });
      assert.equal(await page.evaluate(() => window.__jit.error), null, `${want.title} generates`);
      const r = await page.evaluate(() => window.__jit.result);
      const s = want.size, plane = s * s;
      // The 2-pixel frame of every image and channel.
      const frame = [];
      for (let i = 0; i < r.count * want.channels; i++) {
        for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) {
          if (x < 2 || y < 2 || x >= s - 2 || y >= s - 2) frame.push(r.floats[i * plane + y * s + x]);
        }
      }
      const mean = frame.reduce((a, b) => a + b, 0) / frame.length;
      console.log(`${want.title}: ${r.count} images in ${r.seconds.toFixed(1)} s on ${r.backend}, frame mean ${mean.toFixed(3)}`);
      assert.ok(r.floats.every(Number.isFinite));
      assert.ok(Math.abs(mean - want.background) < 0.25, `${want.title}: the frame is the dataset's background (${mean})`);
      await page.screenshot({ path: path.join(ARTIFACTS, `browser-demo-${want.title.toLowerCase()}.png`), fullPage: true });
    }
  });
});

async function openPage(page, query = QUERY) {
  await page.goto(`${base}/?${query}`);
  await page.waitForFunction(() => window.__jit.ready || window.__jit.error, null, { timeout: TIMEOUT });
  assert.equal(await page.evaluate(() => window.__jit.error), null, "model loads without error");
}

test("the model picker offers models.json's models and switches between them", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    await openPage(page);
    const titles = await page.locator("#model-select option").allInnerTexts();
    assert.deepEqual(titles, TEST_MANIFEST.models.map((m) => m.title));
    assert.match(await page.locator("#model-info").innerText(), /^Test model: /);
    assert.match(await page.locator("#model-desc").innerText(), /trained for 40 steps/);
    await page.selectOption("#model-select", { label: "Shapes" });
    await page.waitForFunction(() => window.__jit.model === "Shapes", null, { timeout: 60000 });
    const info = await page.evaluate(() => window.__jit.info);
    assert.equal(info.imageSize, 32, "the shapes model is 32×32");
    assert.deepEqual(await page.locator("#class option").allInnerTexts(), [...info.classNames, "(unconditional)"]);
    assert.match(await page.locator("#model-desc").innerText(), /demo's default model/);
    await page.selectOption("#model-select", { label: "Test model" });
    await page.waitForFunction(() => window.__jit.model === "Test model", null, { timeout: 60000 });
    assert.equal((await page.evaluate(() => window.__jit.info)).imageSize, 16);
    await page.screenshot({ path: path.join(ARTIFACTS, "browser-picker.png"), fullPage: true });
  });
});

test("dropping a checkpoint on the page loads it", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    await openPage(page);
    const bytes = [...fs.readFileSync(SHAPES)];
    await page.evaluate((bytes) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(bytes)], "dropped.safetensors"));
      document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, bytes);
    await page.waitForFunction(() => window.__jit.model === "dropped.safetensors", null, { timeout: 60000 });
    assert.equal(await page.evaluate(() => window.__jit.error), null);
    assert.equal((await page.evaluate(() => window.__jit.info)).imageSize, 32);
  });
});

// Generation runs in a worker: a main-thread timer keeps ticking while steps that each take far
// longer than its period run; Cancel stops within the network evaluation in flight (a Heun
// step is two).
test("generation runs in a worker: the page stays responsive and Cancel stops within one network evaluation", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    // 64 images of the 32×32 shapes model with CFG: ≈ 200 ms per Heun step on a 2-core CPU
    // (32 images took ≈ 96 ms on an AMD EPYC once the CPU kernels got faster: too close to the timer).
    await openPage(page, "model=shapes.safetensors&class=0&count=64&seed=1&steps=50&sampler=heun&cfg=2.9&low=0&high=1");
    await page.evaluate(() => {
      window.__ticks = [];
      window.__timer = setInterval(() => window.__ticks.push(performance.now()), 20);
    });
    await page.click("#go");
    await page.waitForFunction(() => window.__jit.steps.length >= 4, null, { timeout: TIMEOUT });
    // Cancel somewhere inside a step.
    await page.waitForTimeout(37);
    await page.click("#cancel");
    await page.waitForFunction(() => window.__jit.cancel, null, { timeout: TIMEOUT });
    const { cancel, gaps, stepsDone, total } = await page.evaluate(() => {
      clearInterval(window.__timer);
      const t = window.__ticks;
      return { cancel: window.__jit.cancel, gaps: t.slice(1).map((x, i) => x - t[i]), stepsDone: window.__jit.steps.length, total: Number(document.getElementById("steps").value) };
    });
    const maxGap = Math.max(...gaps);
    console.log(`worker: step ${cancel.stepMs.toFixed(0)} ms (median), main-thread timer max gap ${maxGap.toFixed(0)} ms over ${gaps.length} ticks; ` +
      `cancel latency ${cancel.latencyMs.toFixed(0)} ms after ${stepsDone} steps`);
    assert.ok(cancel.stepMs > 100, `steps are long enough to tell (${cancel.stepMs} ms)`);
    assert.ok(maxGap < Math.min(200, cancel.stepMs), `the main thread kept ticking (max gap ${maxGap} ms)`);
    assert.ok(stepsDone < total, "generation stopped early");
    const evalMs = cancel.stepMs / 2;
    assert.ok(cancel.latencyMs < evalMs * 1.5 + 200, `cancel took ${cancel.latencyMs} ms (an evaluation: ~${evalMs} ms)`);
    assert.match(await page.locator("#error").innerText(), /^Cancelled after/);
    assert.equal(await page.locator("#go").isEnabled(), true, "ready for the next generation");
  });
});

test("the npm-style package: README's embedding example works as a page", { timeout: TIMEOUT }, async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(DIST, "pkg/package.json"), "utf8"));
  for (const f of pkg.files) assert.ok(fs.existsSync(path.join(DIST, "pkg", f)), `package file ${f}`);
  assert.equal(pkg.types, "jit_web.d.ts");
  await withPage(false, async (page) => {
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${base}/embed.html`);
    await page.waitForFunction(() => /^done/.test(document.getElementById("status")?.textContent ?? ""), null, { timeout: TIMEOUT });
    assert.deepEqual(errors, []);
    // The example's settings are those of JIT_QUERY: its pixels are the native samples, in 8 bits.
    const px = await page.evaluate(() => [...document.querySelectorAll("#images canvas")].map((c) =>
      Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data)));
    const ref = readTensor(REF, "samples");
    assert.equal(px.length, 2, "two images");
    const size = Math.sqrt(px[0].length / 4);
    const plane = size * size;
    let worst = 0;
    for (let b = 0; b < px.length; b++) for (let c = 0; c < 3; c++) for (let i = 0; i < plane; i++) {
      const want = Math.round(Math.min(255, Math.max(0, (ref[(b * 3 + c) * plane + i] + 1) / 2 * 255)));
      worst = Math.max(worst, Math.abs(px[b][i * 4 + c] - want));
    }
    assert.ok(worst <= 1, `embedded example's pixels match the native samples (max diff ${worst})`);
  });
});

test("the module refuses oversized buffers before copying them and options that are not integers in range", { timeout: TIMEOUT }, async () => {
  await withPage(false, async (page) => {
    await page.goto(`${base}/`);
    const said = await page.evaluate(async () => {
      const { default: init, JitGenerator } = await import("/pkg/jit_web.js");
      await init();
      const message = async (f) => { try { await f(); return "accepted"; } catch (e) { return String(e?.message ?? e); } };
      const big = await message(() => JitGenerator.load(new Uint8Array(2 ** 30 + 1), { backend: "cpu" }));
      const g = await JitGenerator.load("/model.safetensors", { backend: "cpu" });
      const opts = (o) => message(() => g.generate({ classLabel: 1, count: 1, ...o }));
      return {
        big,
        steps: await opts({ steps: 2.7 }),
        hugeSteps: await opts({ steps: 1e12 }),
        seed: await opts({ seed: 1e300 }),
        count: await opts({ count: 1.5 }),
        label: await opts({ classLabel: 0.5 }),
        ok: await opts({ steps: 2, seed: 3 }),
      };
    });
    assert.match(said.big, /over the 1 GiB/, said.big);
    for (const k of ["steps", "hugeSteps", "seed", "count", "label"]) assert.match(said[k], /must be an integer/, `${k}: ${said[k]}`);
    assert.equal(said.ok, "accepted");
  });
});

/** The field names `interface NAME { … }` of a .d.ts declares (comments and index signatures aside). */
function declaredFields(dts, name) {
  const start = dts.indexOf(`export interface ${name} {`);
  assert.ok(start >= 0, `the .d.ts declares ${name}`);
  let depth = 0, end = start;
  for (let i = dts.indexOf("{", start); i < dts.length; i++) {
    if (dts[i] === "{") depth++;
    if (dts[i] === "}" && --depth === 0) { end = i; break; }
  }
  const body = dts.slice(dts.indexOf("{", start) + 1, end).replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
  return [...body.matchAll(/(?:^|[;{\s])(\w+)\??\s*:/g)].map((m) => m[1]).sort();
}

test("the package's TypeScript declarations name exactly the fields the module returns", { timeout: TIMEOUT }, async () => {
  const dts = fs.readFileSync(path.join(DIST, "pkg/jit_web.d.ts"), "utf8");
  await withPage(false, async (page) => {
    await page.goto(`${base}/`);
    const keys = await page.evaluate(async () => {
      const { default: init, JitGenerator } = await import("/pkg/jit_web.js");
      await init();
      const g = await JitGenerator.load("/model.safetensors", { backend: "cpu" });
      const info = g.info();
      const out = await g.generate({ classLabel: 1, count: 1, steps: 1 });
      const names = (o) => Object.keys(o).sort();
      return { ModelInfo: names(info), NetworkConfig: names(info.config), SamplerDefaults: names(info.sampler), GenerateResult: names(out) };
    });
    for (const [name, runtime] of Object.entries(keys)) {
      assert.deepEqual(declaredFields(dts, name), runtime, `${name}: the .d.ts against what the module returns`);
    }
  });
});

test("the package's TypeScript declarations type-check", { timeout: 120000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jit-ts-"));
  try {
    const pkg = path.join(DIST, "pkg");
    fs.writeFileSync(path.join(dir, "use.ts"), `
      import init, { JitGenerator, type GenerateResult, type ModelInfo } from "${pkg}/jit_web.js";
      import { JitWorker, type JitError } from "${pkg}/client.js";
      export async function direct(): Promise<number> {
        await init();
        const g: JitGenerator = await JitGenerator.load("model.safetensors", { backend: "auto" });
        const info: ModelInfo = g.info();
        const out: GenerateResult = await g.generate({ classLabel: null, seed: 1, sampler: "heun" },
          (step: number, total: number, rgba: Uint8ClampedArray) => {});
        return out.floats.length + info.classNames.length;
      }
      export async function worker(): Promise<string> {
        const jit = await JitWorker.create();
        const info = await jit.load(new Uint8Array(8), { backend: "cpu" });
        try { await jit.generate({ count: 2 }, (s, t, rgba, time) => {}); } catch (e) { if ((e as JitError).cancelled) return "cancelled"; }
        return info.backend;
      }
      // @ts-expect-error: unknown backend
      JitGenerator.load("m", { backend: "cuda" });
    `);
    execFileSync(process.execPath, [path.join(HERE, "node_modules/typescript/bin/tsc"), "--noEmit", "--strict",
      "--target", "es2022", "--module", "es2022", "--moduleResolution", "bundler", "--lib", "esnext,dom", "--skipLibCheck", "false",
      path.join(dir, "use.ts")], { stdio: "pipe" });
  } catch (e) {
    assert.fail(`tsc: ${e.stdout ?? ""}${e.stderr ?? ""}${e.message}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
