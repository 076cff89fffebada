// JitWorker: the JiT module in a dedicated Web Worker, behind a promise API.
//
//   import { JitWorker } from "./pkg/client.js";
//   const jit = await JitWorker.create();
//   const info = await jit.load("model.safetensors", { backend: "auto" });
//   const out = await jit.generate({ classLabel: 0, seed: 1, count: 4 }, (step, total, rgba) => {});
//   jit.cancel();      // the running generate rejects with an Error whose message is "cancelled"
//   jit.terminate();   // ends the worker
//
// Protocol (page → worker): {type: "load", id, source, options}, {type: "generate", id, options},
// {type: "cancel"}. Worker → page: {type: "ready", version} | {type: "failed", message} once, then
// {type: "loaded", id, info}, {type: "step", id, step, total, rgba, time}, {type: "done", id, result},
// {type: "error", id, message, cancelled}. Pixel buffers are transferred, not copied.

export class JitWorker {
  /** Starts the worker and waits for its wasm module. */
  static async create({ workerUrl } = {}) {
    const jit = new JitWorker(workerUrl);
    await jit.ready;
    return jit;
  }

  constructor(workerUrl) {
    this.worker = new Worker(workerUrl ?? new URL("./worker.js", import.meta.url), { type: "module" });
    this.pending = new Map();
    this.nextId = 1;
    this.info = null;
    this.version = null;
    this.ready = new Promise((resolve, reject) => {
      this.started = { resolve, reject };
    });
    this.worker.onmessage = ({ data }) => this.#receive(data);
    this.worker.onerror = (e) => {
      const err = new Error(`the JiT worker failed: ${e.message ?? "could not start it"}`);
      this.started.reject(err);
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
  }

  #receive(msg) {
    if (msg.type === "ready") { this.version = msg.version; this.started.resolve(this); return; }
    if (msg.type === "failed") { this.started.reject(new Error(msg.message)); return; }
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === "step") { p.onStep?.(msg.step, msg.total, msg.rgba, msg.time); return; }
    this.pending.delete(msg.id);
    if (msg.type === "loaded") { this.info = msg.info; p.resolve(msg.info); }
    else if (msg.type === "done") p.resolve(msg.result);
    else {
      const err = new Error(msg.message);
      err.cancelled = !!msg.cancelled;
      p.reject(err);
    }
  }

  #request(msg, transfer = [], onStep = null) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onStep });
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }

  /**
   * Loads a checkpoint: a URL (relative ones are resolved against the page), an ArrayBuffer, a
   * Uint8Array, or a Blob/File. An ArrayBuffer (or a Uint8Array's buffer) is transferred to the
   * worker and becomes unusable here. Resolves to the model's info; on failure the previously
   * loaded model stays in use.
   */
  load(source, options = {}) {
    let transfer = [];
    if (source instanceof URL) source = source.href;
    if (typeof source === "string") source = new URL(source, globalThis.document?.baseURI ?? globalThis.location?.href).href;
    else if (source instanceof ArrayBuffer) transfer = [source];
    else if (ArrayBuffer.isView(source)) {
      if (source.byteOffset !== 0 || source.byteLength !== source.buffer.byteLength) source = source.slice();
      transfer = [source.buffer];
    }
    return this.#request({ type: "load", source, options }, transfer);
  }

  /** Generates images; `onStep(step, total, previewRgba, time)` after every step. */
  generate(options = {}, onStep = null) {
    return this.#request({ type: "generate", options }, [], onStep);
  }

  /** Stops the running generate at its next check (between steps). */
  cancel() {
    this.worker.postMessage({ type: "cancel" });
  }

  /** Ends the worker; pending requests reject. */
  terminate() {
    this.worker.terminate();
    const err = new Error("the JiT worker was terminated");
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
