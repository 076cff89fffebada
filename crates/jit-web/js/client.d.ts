import type { GenerateOptions, GenerateResult, LoadOptions, ModelInfo } from "./jit_web.js";
export type { BackendChoice, GenerateOptions, GenerateResult, LoadOptions, ModelInfo, NetworkConfig, SamplerDefaults } from "./jit_web.js";

/** Called after every step with x̂ of all images (count·H·W·4 RGBA bytes) and the worker's clock (ms since the epoch). */
export type WorkerStepCallback = (step: number, total: number, previewRgba: Uint8ClampedArray, time: number) => void;

/** A generate that was cancelled rejects with an Error whose `message` is "cancelled" and `cancelled` is true. */
export interface JitError extends Error { cancelled: boolean }

/** The JiT module running in dedicated Web Workers (WebGPU, else CPU), behind promises. */
export declare class JitWorker {
  /**
   * Starts the worker (default: `worker.js` beside this file) and waits until its wasm module is
   * ready. `lanes`: workers a CPU generate of several images is split over, at most (default
   * navigator.hardwareConcurrency, capped at 8; extra workers start when a small model loads on the CPU).
   * `simd`: "auto" (default: the module built with relaxed SIMD where the browser has it, else
   * the plain SIMD128 one) or "simd128" (the plain one).
   */
  static create(options?: { workerUrl?: string | URL; lanes?: number; simd?: "auto" | "simd128" }): Promise<JitWorker>;
  constructor(workerUrl?: string | URL, lanes?: number, simd?: "auto" | "simd128");
  /** Workers a generate of several images runs on now: 1 on WebGPU, up to `lanes` on the CPU. */
  readonly lanes: number;
  readonly worker: Worker;
  /** Resolves once the worker's wasm module started. */
  readonly ready: Promise<JitWorker>;
  /** The module's version, once ready. */
  version: string | null;
  /** Which module the workers run, once ready: "relaxed" (relaxed SIMD's fused multiply-adds) or "simd128". */
  simd: "relaxed" | "simd128" | null;
  /** Info of the model loaded last, or null. */
  info: ModelInfo | null;
  /** Loads a checkpoint from a URL, bytes or a File; ArrayBuffers are transferred to the worker. */
  load(source: string | URL | ArrayBuffer | Uint8Array | Blob, options?: LoadOptions): Promise<ModelInfo>;
  /** Generates images with the loaded model. */
  generate(options?: GenerateOptions, onStep?: WorkerStepCallback | null): Promise<GenerateResult>;
  /** Stops the running generate between steps; it rejects with a {@link JitError}. */
  cancel(): void;
  /** Ends the workers. */
  terminate(): void;
}
