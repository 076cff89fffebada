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
 * The module compiled here: streamed where the server sends it as application/wasm. Its file is
 * wasm-bindgen's, beside this worker (a layout that names it otherwise says so: `wasmUrl`).
 */
async function compile() {
  const url = jitWeb.wasmUrl ?? new URL("./jit_web_bg.wasm", import.meta.url);
  try {
    return await WebAssembly.compileStreaming(fetch(url));
  } catch {
    const resp = await fetch(url);
    if (!resp.ok) throw new Error(`cannot download ${url}: HTTP ${resp.status}`);
    return WebAssembly.compile(await resp.arrayBuffer());
  }
}

// The first message: a module another worker compiled, or none to compile it here. "ready"
// hands the compiled module back, so that further workers skip downloading and compiling it.
// Should compiling it here fail, wasm-bindgen's own loader gets a try (and nothing is shared).
async function onInit({ module }) {
  try {
    module ??= await compile().catch((e) => {
      console.warn("JiT worker: compiling the module here failed; wasm-bindgen loads it:", e);
      return null;
    });
    await init(module ? { module_or_path: module } : undefined);
  } catch (e) {
    return post({ type: "failed", message: `the WebAssembly module could not start: ${message(e)}` });
  }
  try {
    post({ type: "ready", version: version(), module });
  } catch {
    post({ type: "ready", version: version() }); // a browser that cannot send a module
  }
}
