// JitWorker: the JiT module in dedicated Web Workers, behind a promise API.
//
//   import { JitWorker } from "./pkg/client.js";
//   const jit = await JitWorker.create();
//   const info = await jit.load("model.safetensors", { backend: "auto" });
//   const out = await jit.generate({ classLabel: 0, seed: 1, count: 4 }, (step, total, rgba) => {});
//   jit.cancel();      // the running generate rejects with an Error whose message is "cancelled"
//   jit.terminate();   // ends the workers
//
// Lanes: on the CPU fallback a generate of several images is split over up to one worker per
// core (`lanes`, default navigator.hardwareConcurrency, at most 8). Each extra worker is its own
// wasm instance with its own copy of the weights, so no SharedArrayBuffer (and no
// cross-origin-isolation headers) is needed; lanes are used while all their weights together
// stay within 256 MB. Each lane samples its images from their place in the seed's noise stream
// (`firstImage`), so the images are the ones one worker gives. On WebGPU one worker runs.
//
// Relaxed SIMD: where the browser has it (Chromium 114+), the workers run the module built with
// it (pkg/jit_web_relaxed_bg.wasm, fused multiply-adds in the matrix products, ≈ 1.2× faster
// sampling), else the plain SIMD128 one; `simd: "simd128"` asks for the plain one anyway, and
// `jit.simd` says which runs.
//
// Protocol (page → worker): {type: "init", module, simd} first (a compiled WebAssembly.Module and
// its kind, or no module and "auto" / "simd128" to have the worker download and compile one), then {type: "load", id, source,
// options}, {type: "generate", id, options}, {type: "cancel"}. Worker → page:
// {type: "ready", version, module, simd} | {type: "failed", message} once, then
// {type: "loaded", id, info}, {type: "step", id, step, total, rgba, time}, {type: "done", id, result},
// {type: "error", id, message, cancelled}. Pixel buffers are transferred, not copied.

/** Weights (4 bytes per parameter) all lanes together may hold. */
const LANE_WEIGHT_BYTES = 256 << 20;
/** Lanes at most, whatever the core count. */
const MAX_LANES = 8;
/** Images one generate may ask for: the module's own limit (jit-web's `generate`). */
const MAX_COUNT = 256;

/** One worker and its pending requests. */
class Lane {
  /**
   * `module`: the compiled wasm module of a lane already running, if any (none: it compiles its
   * own); `simd`: that module's kind, or which one to compile ("auto" or "simd128").
   */
  constructor(workerUrl, module, simd) {
    this.worker = new Worker(workerUrl, { type: "module" });
    this.module = null;
    this.simd = null;
    this.pending = new Map();
    this.nextId = 1;
    this.version = null;
    this.ready = new Promise((resolve, reject) => {
      this.started = { resolve, reject };
    });
    this.worker.onmessage = ({ data }) => this.#receive(data);
    this.worker.onerror = (e) => this.#fail(new Error(`the JiT worker failed: ${e.message ?? "could not start it"}`));
    try {
      this.worker.postMessage({ type: "init", module: module ?? undefined, simd });
    } catch {
      this.worker.postMessage({ type: "init", simd }); // a browser that cannot send a module: it compiles its own
    }
  }

  #fail(err) {
    this.started.reject(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  #receive(msg) {
    if (msg.type === "ready") {
      this.version = msg.version;
      this.module = msg.module ?? null;
      this.simd = msg.simd ?? "simd128";
      this.started.resolve(this);
      return;
    }
    if (msg.type === "failed") { this.started.reject(new Error(msg.message)); return; }
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === "step") { p.onStep?.(msg.step, msg.total, msg.rgba, msg.time); return; }
    this.pending.delete(msg.id);
    if (msg.type === "loaded" || msg.type === "done") p.resolve(msg.info ?? msg.result);
    else {
      const err = new Error(msg.message);
      err.cancelled = !!msg.cancelled;
      p.reject(err);
    }
  }

  request(msg, transfer = [], onStep = null) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onStep });
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }

  cancel() {
    this.worker.postMessage({ type: "cancel" });
  }

  terminate() {
    this.worker.terminate();
    this.#fail(new Error("the JiT worker was terminated"));
  }
}

/** `count` images in `lanes` parts, as even as can be, larger ones first. */
function split(count, lanes) {
  const n = Math.min(lanes, count);
  return Array.from({ length: n }, (_, i) => Math.floor(count / n) + (i < count % n ? 1 : 0));
}

/** The typed arrays one after another, in one array of their type. */
function concat(parts) {
  const out = new parts[0].constructor(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

export class JitWorker {
  /**
   * Starts the worker and waits for its wasm module. `lanes`: workers at most on the CPU; `simd`:
   * "auto" (the relaxed-SIMD module where the browser has relaxed SIMD) or "simd128".
   */
  static async create({ workerUrl, lanes, simd } = {}) {
    const jit = new JitWorker(workerUrl, lanes, simd);
    await jit.ready;
    return jit;
  }

  constructor(workerUrl, lanes, simd = "auto") {
    this.workerUrl = workerUrl ?? new URL("./worker.js", import.meta.url);
    const wanted = Number(lanes ?? globalThis.navigator?.hardwareConcurrency ?? 1);
    this.maxLanes = Math.max(1, Math.min(MAX_LANES, Number.isInteger(wanted) ? wanted : 1));
    this.main = new Lane(this.workerUrl, null, simd === "simd128" ? "simd128" : "auto");
    this.helpers = [];
    this.worker = this.main.worker;
    this.info = null;
    this.version = null;
    /** The module the workers run, once ready: "relaxed" (relaxed SIMD) or "simd128". */
    this.simd = null;
    this.ready = this.main.ready.then(() => {
      this.version = this.main.version;
      this.simd = this.main.simd;
      return this;
    });
  }

  /** Workers a generate of many images runs on now (1 on WebGPU). */
  get lanes() {
    return 1 + this.helpers.length;
  }

  /**
   * Loads a checkpoint: a URL (relative ones are resolved against the page), an ArrayBuffer, a
   * Uint8Array, or a Blob/File. An ArrayBuffer (or a Uint8Array's buffer) is transferred to the
   * worker and becomes unusable here. Resolves to the model's info; on failure the previously
   * loaded model stays in use.
   */
  async load(source, options = {}) {
    let transfer = [];
    let copy = () => source; // the source again for each extra lane, or null when there is none
    if (source instanceof URL) source = source.href;
    if (typeof source === "string") source = new URL(source, globalThis.document?.baseURI ?? globalThis.location?.href).href;
    else if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) {
      const bytes = source instanceof ArrayBuffer ? new Uint8Array(source) : new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
      // Copies are kept only for models small enough to run on several lanes at all.
      const kept = this.maxLanes > 1 && 2 * bytes.byteLength <= LANE_WEIGHT_BYTES ? bytes.slice() : null;
      copy = kept && (() => kept.slice());
      source = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer;
      transfer = [source];
    }
    const info = await this.main.request({ type: "load", source, options }, transfer);
    this.info = info;
    await this.#fitHelpers(info, copy, options);
    return info;
  }

  /** Extra lanes for the model just loaded: as many as fit, all holding it; none on WebGPU. */
  async #fitHelpers(info, copy, options) {
    const fit = info.backend === "cpu" ? Math.floor(LANE_WEIGHT_BYTES / Math.max(1, 4 * info.parameters)) : 1;
    const wanted = copy === null ? 0 : Math.max(0, Math.min(this.maxLanes, fit) - 1);
    for (const lane of this.helpers.splice(wanted)) lane.terminate();
    while (this.helpers.length < wanted) this.helpers.push(new Lane(this.workerUrl, this.main.module, this.main.simd));
    try {
      await Promise.all(this.helpers.map(async (lane) => {
        await lane.ready;
        const source = copy();
        const transfer = source instanceof Uint8Array ? [source.buffer] : [];
        await lane.request({ type: "load", source: transfer.length ? source.buffer : source, options: { ...options, backend: "cpu" } }, transfer);
      }));
    } catch (e) {
      // One worker is enough to sample; the extra ones are only speed.
      console.warn("sampling on one worker only:", e);
      for (const lane of this.helpers.splice(0)) lane.terminate();
    }
  }

  /**
   * Generates images; `onStep(step, total, previewRgba, time)` after every step. Over several
   * lanes each step's preview is sent once every lane finished that step.
   */
  async generate(options = {}, onStep = null) {
    const count = Number(options.count ?? 1);
    const lanes = [this.main, ...this.helpers];
    // Anything else (one lane, one image, a count the module refuses) goes to one worker.
    if (lanes.length === 1 || !Number.isInteger(count) || count < 2 || count > MAX_COUNT) {
      return this.main.request({ type: "generate", options }, [], onStep);
    }
    const sizes = split(count, lanes.length);
    const started = performance.now();
    const previews = new Map(); // step → {parts, done}
    let first = Number(options.firstImage ?? 0);
    const runs = sizes.map((n, i) => {
      const part = { ...options, count: n, firstImage: first };
      first += n;
      return lanes[i].request({ type: "generate", options: part }, [], (step, total, rgba, time) => {
        const got = previews.get(step) ?? { parts: [], done: 0 };
        previews.set(step, got);
        got.parts[i] = rgba;
        if (++got.done === sizes.length) {
          previews.delete(step);
          onStep?.(step, total, concat(got.parts), time);
        }
      }).catch((e) => {
        // One lane failed or was cancelled: stop the others too.
        for (const lane of lanes) lane.cancel();
        throw e;
      });
    });
    const settled = await Promise.allSettled(runs);
    const failures = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
    if (failures.length) throw failures.find((e) => !e.cancelled) ?? failures[0];
    const parts = settled.map((s) => s.value);
    return {
      rgba: concat(parts.map((p) => p.rgba)), floats: concat(parts.map((p) => p.floats)),
      width: parts[0].width, height: parts[0].height, channels: parts[0].channels, count,
      seconds: (performance.now() - started) / 1000,
    };
  }

  /** Stops the running generate between steps; it rejects with an Error `cancelled`. */
  cancel() {
    for (const lane of [this.main, ...this.helpers]) lane.cancel();
  }

  /** Ends the workers; pending requests reject. */
  terminate() {
    for (const lane of [this.main, ...this.helpers.splice(0)]) lane.terminate();
  }
}
