//! # jit-web
//!
//! JiT in the browser. A wasm-bindgen module with a small JavaScript API:
//!
//! ```js
//! import init, { JitGenerator } from "./pkg/jit_web.js";
//! await init();
//! const g = await JitGenerator.load("model.safetensors", { backend: "auto" });
//! console.log(g.info());            // config, classes, parameters, backend in use
//! const out = await g.generate({ classLabel: 3, seed: 7, steps: 50, sampler: "heun",
//!                                cfg: 2.9, intervalLow: 0.1, intervalHigh: 1.0, count: 4 },
//!                              (step, total, previewRgba) => { /* live x̂ */ });
//! // out.rgba: Uint8ClampedArray of count·H·W·4, out.floats: Float32Array [count, C, H, W]
//! ```
//!
//! The sampler is `jit_core::sampler`, unchanged. The backend is WebGPU through burn-wgpu (the
//! adapter's real limits are requested); when WebGPU is missing or the adapter request fails,
//! the CPU backend compiled to wasm takes over and `info().backend` says so. All GPU reads are
//! asynchronous.

use std::cell::Cell;
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::{Device, FloatDType};
use jit_core::checkpoint::{self, CheckpointMeta};
use jit_core::host::{self, to_rgb8};
use jit_core::sampler::{Progress, Sampling, initial_noise};
use jit_core::{Jit, Method, SamplerConfig, SamplerOverrides};
use js_sys::{Array, Float32Array, Function, Object, Promise, Reflect, Uint8Array, Uint8ClampedArray};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, future_to_promise};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Which backend to run on: WebGPU if available, else the CPU ("auto"), or one of them. */
export type BackendChoice = "auto" | "webgpu" | "cpu";
/**
 * Precision of the linear layers' products: "f16" where the WebGPU adapter has `shader-f16`
 * ("auto", the default, falls back to "f32" where it does not), or "f32". Weights, norms, the
 * attention softmax and the sampler stay f32 either way.
 */
export type PrecisionChoice = "auto" | "f16" | "f32";
/** Options of `JitGenerator.load`. */
export interface LoadOptions { backend?: BackendChoice; precision?: PrecisionChoice }
/** The network of a checkpoint (as stored in its metadata). */
export interface NetworkConfig {
  input_size: number; patch_size: number; in_channels: number; hidden_size: number; depth: number;
  num_heads: number; mlp_ratio: number; num_classes: number; bottleneck_dim: number;
  in_context_len: number; in_context_start: number; attn_drop: number; proj_drop: number;
  [key: string]: unknown;
}
/** Sampler defaults stored with a checkpoint. */
export interface SamplerDefaults { method: "heun" | "euler"; steps: number; cfg: number; interval: [number, number] }
/** What `JitGenerator.info()` returns. */
export interface ModelInfo {
  backend: "webgpu" | "cpu";
  /** Precision of the linear layers' products. */
  precision: "f16" | "f32";
  /** Why WebGPU was not used with `backend: "auto"`, or null. */
  backendNote: string | null;
  classNames: string[];
  numClasses: number;
  imageSize: number;
  channels: number;
  parameters: number;
  /** Training step of the checkpoint. */
  step: number;
  config: NetworkConfig;
  sampler: SamplerDefaults;
  noiseScale: number;
}
/** Options of `generate`; omitted ones take the checkpoint's defaults. */
export interface GenerateOptions {
  /** Class index, or null/omitted for unconditional samples. */
  classLabel?: number | null;
  /** Integer from 0 to Number.MAX_SAFE_INTEGER; the same seed gives the same images everywhere. */
  seed?: number;
  /** ODE steps, an integer from 1 to 10000. Integer options that are fractional or out of range
   *  are refused, never rounded. */
  steps?: number;
  sampler?: "heun" | "euler";
  cfg?: number;
  intervalLow?: number;
  intervalHigh?: number;
  /** Images in one batch, 1..256 (default 1). */
  count?: number;
  /** Index of the first of these images in the seed's batch (default 0): its part of a batch
   *  split over workers, drawn from the same noise. */
  firstImage?: number;
}
/** Called after every step with the clean-image estimate x̂ of all images, count·H·W·4 RGBA bytes. */
export type StepCallback = (step: number, total: number, previewRgba: Uint8ClampedArray) => void;
/** What `generate` resolves to. */
export interface GenerateResult {
  /** count·H·W·4 RGBA bytes, images stacked. */
  rgba: Uint8ClampedArray;
  /** [count, channels, height, width] floats in about [-1, 1]. */
  floats: Float32Array;
  width: number;
  height: number;
  channels: number;
  count: number;
  seconds: number;
}
"#;

thread_local! {
    static WEBGPU: std::cell::RefCell<Option<Result<Device, String>>> = const { std::cell::RefCell::new(None) };
}

// The static constructors (`inventory` registrations in burn's dependencies), which wasm-ld
// synthesizes into `__wasm_call_ctors`.
#[cfg(target_family = "wasm")]
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// Runs once, when the module is instantiated.
#[wasm_bindgen(start)]
fn start() {
    // Calling the constructors here, once, keeps wasm-ld from treating the module as a "command"
    // and calling them again at the top of every exported function: every call from JavaScript
    // (each promise callback of a `generate`) ran all of them, ≈ 16 % of a one-image sampling.
    // SAFETY: nothing that depends on them has run yet, and they are not called again.
    #[cfg(target_family = "wasm")]
    unsafe {
        __wasm_call_ctors()
    };
    console_error_panic_hook::set_once();
}

/// WebGPU once per page (the runtime cannot be initialised twice).
async fn webgpu() -> Result<Device, String> {
    if let Some(r) = WEBGPU.with(|w| w.borrow().clone()) {
        return r;
    }
    let r = Device::wgpu_options().init_async().await.map_err(|e| format!("{e}"));
    WEBGPU.with(|w| *w.borrow_mut() = Some(r.clone()));
    r
}

/// The largest `firstImage` of `generate` (the noise before it is skipped, not drawn: the bound
/// only keeps `firstImage + count` within wasm32's `usize`).
const MAX_FIRST_IMAGE: f64 = (1u64 << 24) as f64;

/// `Number.MAX_SAFE_INTEGER`: the largest seed a JS number holds exactly.
const MAX_SAFE_INTEGER: f64 = ((1u64 << 53) - 1) as f64;

fn err(msg: impl std::fmt::Display) -> JsValue {
    JsError::new(&msg.to_string()).into()
}

fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    if obj.is_undefined() || obj.is_null() {
        return None;
    }
    Reflect::get(obj, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// The largest model file `load` accepts, checked before its bytes are copied into the
/// module's memory (wasm32 has 4 GiB in all, and the model's tensors need a second copy).
const MAX_MODEL_BYTES: f64 = (1u64 << 30) as f64;

/// Refuses a model of `len` bytes over [`MAX_MODEL_BYTES`], before anything is copied.
fn check_model_bytes(len: f64) -> Result<(), JsValue> {
    if len > MAX_MODEL_BYTES {
        return Err(err(format!(
            "the model file is {:.2} GiB, over the {:.0} GiB a browser module can load; export it in f16 (jit-native export --dtype f16) or use a smaller model",
            len / MAX_MODEL_BYTES,
            MAX_MODEL_BYTES / (1u64 << 30) as f64
        )));
    }
    Ok(())
}

/// A view's length in bytes, as JS reports it (`byte_length()` is a u32 and wraps above 4 GiB).
fn byte_length(bytes: &Uint8Array) -> f64 {
    Reflect::get(bytes, &"byteLength".into()).ok().and_then(|v| v.as_f64()).unwrap_or(f64::INFINITY)
}

/// An integer option in `min..=max`: a fraction, NaN or a value out of range is an error (never
/// rounded or clamped).
fn get_int(obj: &JsValue, key: &str, min: f64, max: f64) -> Result<Option<f64>, JsValue> {
    match get_f64(obj, key)? {
        Some(v) if v.fract() != 0.0 || !(min..=max).contains(&v) => {
            Err(err(format!("option '{key}' is {v}: it must be an integer from {min} to {max}")))
        }
        v => Ok(v),
    }
}

fn get_f64(obj: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    match get(obj, key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| err(format!("option '{key}' must be a number"))),
    }
}

async fn fetch_bytes(url: &str) -> Result<Vec<u8>, JsValue> {
    let fetch: Function = Reflect::get(&js_sys::global(), &"fetch".into())?.dyn_into()?;
    let resp: web_sys::Response = JsFuture::from(fetch.call1(&JsValue::NULL, &url.into())?.dyn_into::<Promise>()?)
        .await
        .map_err(|_| err(format!("cannot download {url}")))?
        .dyn_into()?;
    if !resp.ok() {
        return Err(err(format!("cannot download {url}: HTTP {}", resp.status())));
    }
    let length = resp.headers().get("content-length").ok().flatten().and_then(|l| l.parse::<f64>().ok());
    check_model_bytes(length.unwrap_or(0.0))?;
    let buf = JsFuture::from(resp.array_buffer()?).await?;
    let bytes = Uint8Array::new(&buf);
    check_model_bytes(byte_length(&bytes))?;
    Ok(bytes.to_vec())
}

/// Lets the page render and handle input (a worker: its messages, such as a cancel) between
/// network evaluations: a message to ourselves through a `MessageChannel`, which runs as soon
/// as the queued tasks before it. (`setTimeout(0)` from inside a timer's callback is clamped to
/// 4 ms after five levels: ≈ 60 of them were half of a one-image JiT-T/4 sampling.) Where there
/// is no `MessageChannel`, `setTimeout`.
async fn yield_now() {
    let mut channel = None;
    let promise = Promise::new(&mut |resolve, _| {
        if let Ok(c) = web_sys::MessageChannel::new() {
            c.port1().set_onmessage(Some(&resolve));
            let sent = c.port2().post_message(&JsValue::NULL).is_ok();
            channel = Some(c);
            if sent {
                return;
            }
        }
        if let Ok(Ok(set_timeout)) =
            Reflect::get(&js_sys::global(), &"setTimeout".into()).map(|f| f.dyn_into::<Function>())
        {
            let _ = set_timeout.call2(&JsValue::NULL, &resolve, &0.into());
        } else {
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = JsFuture::from(promise).await;
    // An open port with a listener keeps a Node.js process alive.
    if let Some(c) = channel {
        c.port1().close();
    }
}

struct Inner {
    model: Jit,
    meta: CheckpointMeta,
    backend: String,
    precision: &'static str,
    note: Option<String>,
    params: usize,
    cancelled: Cell<bool>,
}

/// A loaded JiT checkpoint ready to generate images.
#[wasm_bindgen]
pub struct JitGenerator {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl JitGenerator {
    /// Loads an exported checkpoint. `source`: a URL string, an `ArrayBuffer` or a `Uint8Array`.
    /// `options.backend`: `"auto"` (WebGPU, else CPU), `"webgpu"` or `"cpu"`;
    /// `options.precision`: `"auto"` (f16 products where WebGPU has shader-f16), `"f16"`, `"f32"`.
    #[wasm_bindgen(unchecked_return_type = "Promise<JitGenerator>")]
    pub fn load(
        #[wasm_bindgen(unchecked_param_type = "string | ArrayBuffer | Uint8Array")] source: JsValue,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions | undefined")] options: JsValue,
    ) -> Promise {
        future_to_promise(async move {
            let bytes = if let Some(url) = source.as_string() {
                fetch_bytes(&url).await?
            } else if source.is_instance_of::<js_sys::ArrayBuffer>() || source.is_instance_of::<Uint8Array>() {
                let bytes = Uint8Array::new(&source);
                check_model_bytes(byte_length(&bytes))?;
                bytes.to_vec()
            } else {
                return Err(err("JitGenerator.load expects a URL, an ArrayBuffer or a Uint8Array"));
            };
            let want = get(&options, "backend").and_then(|v| v.as_string()).unwrap_or_else(|| "auto".into());
            let meta = checkpoint::read_meta(&bytes).map_err(|e| err(format!("not a JiT checkpoint: {e}")))?;
            let (device, backend, note) = match want.as_str() {
                "cpu" => (Device::flex(), "cpu", None),
                "webgpu" | "gpu" => {
                    let d = webgpu().await.map_err(|e| err(format!("WebGPU is not available: {e}")))?;
                    (d, "webgpu", None)
                }
                "auto" => match webgpu().await {
                    Ok(d) => (d, "webgpu", None),
                    Err(e) => (Device::flex(), "cpu", Some(format!("WebGPU unavailable ({e}); running on the CPU"))),
                },
                other => return Err(err(format!("unknown backend '{other}' (use auto, webgpu or cpu)"))),
            };
            let has_f16 = backend == "webgpu" && device.supports_dtype(FloatDType::F16);
            let precision = match get(&options, "precision").and_then(|v| v.as_string()).as_deref().unwrap_or("auto") {
                "f32" => "f32",
                "auto" if has_f16 => "f16",
                "auto" => "f32",
                "f16" if has_f16 => "f16",
                "f16" => {
                    return Err(err(format!(
                        "f16 needs WebGPU with the shader-f16 feature, which {backend} here lacks; use precision \"auto\" or \"f32\""
                    )));
                }
                other => return Err(err(format!("unknown precision '{other}' (use auto, f16 or f32)"))),
            };
            let copy = meta.copies.first().cloned().unwrap_or_default();
            let (model, meta) = checkpoint::load(&bytes, &copy, &device)
                .map_err(|e| err(format!("not a usable JiT checkpoint: {e}")))?;
            let model = model.for_sampling((precision == "f16").then_some(FloatDType::F16));
            let params = model.num_params();
            let inner =
                Inner { model, meta, backend: backend.into(), precision, note, params, cancelled: Cell::new(false) };
            Ok(JitGenerator { inner: Rc::new(inner) }.into())
        })
    }

    /// `{config, classNames, numClasses, parameters, backend, precision, backendNote, step, sampler,
    /// noiseScale, imageSize, channels}`.
    #[wasm_bindgen(unchecked_return_type = "ModelInfo")]
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let i = &self.inner;
        let o = Object::new();
        let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v);
        set("config", js_sys::JSON::parse(&serde_json_string(&i.meta.network)?)?)?;
        set("sampler", js_sys::JSON::parse(&serde_json_string(&i.meta.sampler)?)?)?;
        let names: Array = i.meta.class_names.iter().map(|n| JsValue::from_str(n)).collect();
        set("classNames", names.into())?;
        set("numClasses", (i.meta.network.num_classes as u32).into())?;
        set("imageSize", (i.meta.network.input_size as u32).into())?;
        set("channels", (i.meta.network.in_channels as u32).into())?;
        set("parameters", (i.params as f64).into())?;
        set("step", (i.meta.step as f64).into())?;
        set("noiseScale", i.meta.diffusion.noise_scale.into())?;
        set("backend", i.backend.clone().into())?;
        set("precision", i.precision.into())?;
        set("backendNote", i.note.clone().map(JsValue::from).unwrap_or(JsValue::NULL))?;
        Ok(o.into())
    }

    /// Generates images. `options`: `{classLabel, seed, steps, sampler, cfg, intervalLow,
    /// intervalHigh, count, firstImage}` (missing ones take the checkpoint's defaults; `classLabel` null or
    /// omitted gives unconditional samples). `onStep(step, total, previewRgba)` is called after
    /// every step with the x̂ estimate as RGBA. Resolves to `{rgba, floats, width, height,
    /// count, channels, seconds}`; rejects with "cancelled" after [`JitGenerator::cancel`].
    #[wasm_bindgen(unchecked_return_type = "Promise<GenerateResult>")]
    pub fn generate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions | undefined")] options: JsValue,
        #[wasm_bindgen(unchecked_param_type = "StepCallback | undefined")] on_step: Option<Function>,
    ) -> Promise {
        let inner = self.inner.clone();
        inner.cancelled.set(false);
        future_to_promise(async move {
            let m = &inner.meta;
            let c = &m.network;
            let method = match get(&options, "sampler").and_then(|v| v.as_string()) {
                Some(s) => Some(s.parse::<Method>().map_err(err)?),
                None => None,
            };
            let sampler = m
                .sampler
                .with(SamplerOverrides {
                    method,
                    steps: get_int(&options, "steps", 1.0, SamplerConfig::MAX_STEPS as f64)?.map(|v| v as usize),
                    cfg: get_f64(&options, "cfg")?,
                    interval_low: get_f64(&options, "intervalLow")?,
                    interval_high: get_f64(&options, "intervalHigh")?,
                })
                .map_err(err)?;
            let count = get_int(&options, "count", 1.0, 256.0)?.unwrap_or(1.0) as usize;
            let label = get_int(&options, "classLabel", 0.0, (c.num_classes - 1) as f64)?
                .map_or(c.num_classes as i64, |l| l as i64);
            let labels = vec![label; count];
            SamplerConfig::check_request(c, &labels, jit_core::MemoryLimit::default()).map_err(err)?;
            // Every integer up to 2^53 is exact in a JS number; above, two seeds could be one.
            let seed = get_int(&options, "seed", 0.0, MAX_SAFE_INTEGER)?.unwrap_or(0.0);
            // Where these images start in the seed's noise stream (a batch split over workers).
            let first = get_int(&options, "firstImage", 0.0, MAX_FIRST_IMAGE)?.unwrap_or(0.0) as usize;
            let device = inner.model.devices()[0].clone();
            let started = js_sys::Date::now();
            let z0 = initial_noise(c, &m.diffusion, first..first + count, seed as u64, &device);
            let labels = host::labels(&labels, &device);
            let mut run = Sampling::new(&inner.model, &m.diffusion, &sampler, z0, labels).map_err(err)?;
            // The flag is checked before every network evaluation (two per Heun step), after
            // the GPU has finished the previous one, and again after a preview is read back, so
            // a cancel lands within the evaluation in flight.
            loop {
                if inner.cancelled.get() {
                    return Err(err("cancelled"));
                }
                match run.advance() {
                    None => break,
                    Some(Progress::Half) => run.wait().await.map_err(|e| err(format!("{e:?}")))?,
                    Some(Progress::Step(step)) => {
                        if let Some(cb) = &on_step {
                            let rgba = rgba(&read_floats(step.x_hat).await?, c.in_channels, c.input_size);
                            if inner.cancelled.get() {
                                return Err(err("cancelled"));
                            }
                            cb.call3(
                                &JsValue::NULL,
                                &((step.index + 1) as u32).into(),
                                &(step.total as u32).into(),
                                &rgba.into(),
                            )?;
                        } else {
                            run.wait().await.map_err(|e| err(format!("{e:?}")))?;
                        }
                    }
                }
                yield_now().await;
            }
            let floats = read_floats(run.finish()).await?;
            let o = Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&o, &k.into(), &v);
            set("rgba", rgba(&floats, c.in_channels, c.input_size).into())?;
            set("floats", Float32Array::from(&floats[..]).into())?;
            set("width", (c.input_size as u32).into())?;
            set("height", (c.input_size as u32).into())?;
            set("channels", (c.in_channels as u32).into())?;
            set("count", (count as u32).into())?;
            set("seconds", ((js_sys::Date::now() - started) / 1000.0).into())?;
            Ok(o.into())
        })
    }

    /// Stops a running `generate`: it rejects with "cancelled" at the next check, made before
    /// every step and after every preview read-back.
    pub fn cancel(&self) {
        self.inner.cancelled.set(true);
    }
}

/// The tensor's values as f32, read back without blocking (WebGPU maps buffers asynchronously).
async fn read_floats(t: burn::tensor::Tensor<4>) -> Result<Vec<f32>, JsValue> {
    let data = t.into_data_async().await.map_err(|e| err(format!("{e:?}")))?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| err(format!("{e:?}")))
}

fn serde_json_string<T: serde::Serialize>(v: &T) -> Result<String, JsValue> {
    serde_json::to_string(v).map_err(err)
}

/// `[B, C, H, W]` floats in [-1, 1] → B RGBA images stacked, `B·H·W·4` bytes (opaque; 2- and
/// 4-channel images have their alpha composited over white, as natively).
fn rgba(floats: &[f32], channels: usize, size: usize) -> Uint8ClampedArray {
    let rgb = to_rgb8(floats, channels, size);
    let out: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    Uint8ClampedArray::from(&out[..])
}

/// The version of this module (the crate's version).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").into()
}
