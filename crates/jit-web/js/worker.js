// The Web Worker that runs the JiT wasm module (module worker: `new Worker(url, {type: "module"})`).
// `JitWorker` in client.js speaks its protocol; it is documented there.
//
// Everything heavy happens here — loading weights, WebGPU (or CPU) compute, reading previews back
// — so the page's main thread stays free. After every network evaluation (two per Heun step) the
// Rust loop waits for the GPU and yields to the event loop, so a "cancel" message is handled and
// the running `generate` stops at its next check (before every evaluation and after every preview
// read-back).
import init, * as jitWeb from "./jit_web.js";

const { JitGenerator, version } = jitWeb;

let gen = null; // the loaded model
let running = null; // id of the running generate

const post = (msg, transfer = []) => self.postMessage(msg, transfer);
const message = (e) => `${e?.message ?? e}`;

async function bytesOf(source) {
  if (typeof source === "string") return source; // a URL: the module downloads it
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  return source; // ArrayBuffer or Uint8Array
}

async function onLoad({ id, source, options }) {
  try {
    const next = await JitGenerator.load(await bytesOf(source), options ?? {});
    // The previous model stays usable until a new one loaded; then it is freed (unless a
    // generate still holds it, which keeps its own reference).
    if (gen) gen.free();
    gen = next;
    post({ type: "loaded", id, info: gen.info() });
  } catch (e) {
    post({ type: "error", id, message: message(e) });
  }
}

async function onGenerate({ id, options }) {
  if (!gen) return post({ type: "error", id, message: "no model loaded" });
  if (running !== null) return post({ type: "error", id, message: "a generation is already running" });
  running = id;
  try {
    const out = await gen.generate(options ?? {}, (step, total, rgba) => {
      post({ type: "step", id, step, total, rgba, time: performance.now() + performance.timeOrigin }, [rgba.buffer]);
    });
    const result = {
      rgba: out.rgba, floats: out.floats, width: out.width, height: out.height,
      channels: out.channels, count: out.count, seconds: out.seconds,
    };
    post({ type: "done", id, result }, [out.rgba.buffer, out.floats.buffer]);
  } catch (e) {
    post({ type: "error", id, message: message(e), cancelled: message(e) === "cancelled" });
  } finally {
    running = null;
  }
}

self.onmessage = ({ data }) => {
  switch (data?.type) {
    case "init": return onInit(data);
    case "load": return onLoad(data);
    case "generate": return onGenerate(data);
    case "cancel": return gen?.cancel();
    default: post({ type: "error", id: data?.id, message: `unknown request ${data?.type}` });
  }
};

/**
 * A module whose one function runs `f32x4.relaxed_madd`: valid where the engine has WebAssembly's
 * relaxed SIMD (Chromium 114+), rejected elsewhere.
 */
const SPLAT_ZERO = [0x43, 0, 0, 0, 0, 0xfd, 0x13]; // f32.const 0, f32x4.splat
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type section: () -> v128
  0x03, 0x02, 0x01, 0x00, // function section: one function of that type
  0x0a, 0x1c, 0x01, 0x1a, 0x00, // code section: one body of 26 bytes, no locals
  ...SPLAT_ZERO, ...SPLAT_ZERO, ...SPLAT_ZERO,
  0xfd, 0x85, 0x02, 0x0b, // f32x4.relaxed_madd (0xfd 0x105), end
]);

/** Whether this engine has relaxed SIMD. */
function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

async function compileUrl(url) {
  try {
    return await WebAssembly.compileStreaming(fetch(url));
  } catch {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`cannot download ${url}: HTTP ${resp.status}`);
    return WebAssembly.compile(await resp.arrayBuffer());
  }
}

/**
 * The module compiled here, and which it is: "relaxed" (built with relaxed SIMD, whose fused
 * multiply-adds make the CPU fallback's matrix products ≈ 1.3× faster) where the engine has
 * relaxed SIMD, `simd` is not "simd128" and the file is there; else "simd128". The files are
 * wasm-bindgen's, beside this worker.
 */
async function compile(simd) {
  if (simd !== "simd128" && hasRelaxedSimd()) {
    try {
      return { module: await compileUrl(new URL("./jit_web_relaxed_bg.wasm", import.meta.url)), simd: "relaxed" };
    } catch (e) {
      console.warn("JiT worker: the relaxed-SIMD module did not load; taking the plain one:", e);
    }
  }
  return { module: await compileUrl(new URL("./jit_web_bg.wasm", import.meta.url)), simd: "simd128" };
}

// The first message: a module another worker compiled (and its kind, `simd`), or none to
// compile one here (`simd`: "auto", or "simd128" for the plain module). "ready" hands the
// compiled module back, so that further workers skip downloading and compiling it. Should
// compiling it here fail, wasm-bindgen's own loader gets a try (and nothing is shared).
async function onInit({ module, simd }) {
  let kind = module ? simd : "simd128";
  try {
    if (!module) {
      ({ module, simd: kind } = await compile(simd).catch((e) => {
        console.warn("JiT worker: compiling the module here failed; wasm-bindgen loads it:", e);
        return { module: null, simd: "simd128" };
      }));
    }
    await init(module ? { module_or_path: module } : undefined);
  } catch (e) {
    return post({ type: "failed", message: `the WebAssembly module could not start: ${message(e)}` });
  }
  try {
    post({ type: "ready", version: version(), module, simd: kind });
  } catch {
    post({ type: "ready", version: version(), simd: kind }); // a browser that cannot send a module
  }
}
