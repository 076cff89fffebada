// The JiT demo page. The wasm module runs in a dedicated Web Worker (pkg/worker.js, driven by
// JitWorker from pkg/client.js), so this thread only draws: the page stays responsive while the
// worker samples on WebGPU (or its CPU fallback), streaming an x̂ preview after every step.
// Models come from models.json (the picker), a ?model=URL, or a file dropped on the page.
import { JitWorker } from "./pkg/client.js";

const $ = (id) => document.getElementById(id);
const state = { jit: null, info: null, label: null, busy: false, gpuWarm: false, models: [], cancelAt: null };
// Exposed for tests and for curious visitors.
window.__jit = { ready: false, worker: true, lanes: 1, info: null, model: null, result: null, error: null, steps: [], stepTimes: [], cancel: null };

function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
  window.__jit.error = msg || null;
}

async function cachedBytes(url) {
  // Weights are cached so a reload does not download them again; if the Cache API is missing
  // or the quota is exceeded we keep them in memory only.
  let cache = null;
  try { cache = await caches.open("jit-weights-v1"); } catch { cache = null; }
  if (cache) {
    const hit = await cache.match(url).catch(() => null);
    if (hit) return new Uint8Array(await hit.arrayBuffer());
  }
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`cannot download ${url}: HTTP ${resp.status}`);
  const bytes = new Uint8Array(await resp.arrayBuffer());
  if (cache) {
    try { await cache.put(url, new Response(bytes.slice())); } catch (e) { console.warn("weights kept in memory only:", e); }
  }
  return bytes;
}

function describe(entry) {
  $("model-desc").textContent = entry ? [entry.description, entry.credit].filter(Boolean).join(" — ") : "";
}

async function useModel(getSource, label, entry = null) {
  const params = new URLSearchParams(location.search);
  $("go").disabled = true;
  $("model-select").disabled = true;
  $("status").textContent = `Loading ${label}…`;
  try {
    const info = await state.jit.load(await getSource(), { backend: params.get("backend") || "auto", precision: params.get("precision") || "auto" });
    state.info = info;
    state.label = label;
    state.gpuWarm = false; // a new network means new kernels to compile
    window.__jit.info = info;
    window.__jit.model = label;
    showError("");
    describe(entry);
    const c = info.config;
    $("model-info").textContent =
      `${label}: ${(info.parameters / 1e6).toFixed(2)}M parameters, ${c.in_channels}×${c.input_size}×${c.input_size} px, ` +
      `patch ${c.patch_size}, depth ${c.depth}, ${info.numClasses} classes, trained ${info.step} steps`;
    const lanes = state.jit.lanes;
    window.__jit.lanes = lanes;
    $("status").textContent = info.backend === "webgpu"
      ? `Backend: WebGPU (your GPU), ${info.precision} products, in a Web Worker`
      : `Backend: CPU (WebAssembly${state.jit.simd === "relaxed" ? ", relaxed SIMD" : ""}), ${info.precision} products, ` +
        (lanes === 1 ? "in a Web Worker" : `in ${lanes} Web Workers (one per core)`);
    $("banner").hidden = !info.backendNote;
    // The adapter's technical reason goes to the tooltip and the console, not the visitor.
    $("banner").textContent = info.backendNote
      ? "WebGPU is not available in this browser, so images are computed on the CPU (slower)."
      : "";
    $("banner").title = info.backendNote ?? "";
    if (info.backendNote) console.info(info.backendNote);
    const sel = $("class");
    sel.innerHTML = "";
    for (let k = 0; k < info.numClasses; k++) {
      sel.add(new Option(info.classNames[k] ?? `class ${k}`, String(k)));
    }
    sel.add(new Option("(unconditional)", ""));
    $("steps").value = info.sampler.steps;
    $("sampler").value = info.sampler.method;
    $("cfg").value = info.sampler.cfg;
    $("low").value = info.sampler.interval[0];
    $("high").value = info.sampler.interval[1];
    for (const [k, id] of [["class", "class"], ["seed", "seed"], ["steps", "steps"], ["sampler", "sampler"],
      ["cfg", "cfg"], ["low", "low"], ["high", "high"], ["count", "count"]]) {
      if (params.has(k)) $(id).value = params.get(k);
    }
    window.__jit.ready = true;
    return true;
  } catch (e) {
    showError(`Could not load ${label}: ${e.message ?? e}`);
    $("status").textContent = state.info ? `Kept the previous model (${state.label}).` : "No model loaded.";
    window.__jit.ready = !!state.info;
    return false;
  } finally {
    $("go").disabled = !state.info;
    $("model-select").disabled = false;
  }
}

function drawRgba(canvas, rgba, width, height, index = 0) {
  canvas.width = width; canvas.height = height;
  const plane = width * height * 4;
  const img = new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset + index * plane, plane), width, height);
  canvas.getContext("2d").putImageData(img, 0, 0);
}

function drawStrip(canvas, rgba, width, height, count) {
  canvas.width = width * count; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const plane = width * height * 4;
  for (let i = 0; i < count; i++) {
    ctx.putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset + i * plane, plane), width, height), i * width, 0);
  }
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[s.length >> 1] : NaN; };

async function generate(ev) {
  ev.preventDefault();
  if (!state.info || state.busy) return;
  state.busy = true;
  state.cancelAt = null;
  $("go").disabled = true; $("cancel").disabled = false; $("model-select").disabled = true;
  showError("");
  const info = state.info;
  const count = Number($("count").value);
  const opts = {
    classLabel: $("class").value === "" ? null : Number($("class").value),
    seed: Number($("seed").value), steps: Number($("steps").value), sampler: $("sampler").value,
    cfg: Number($("cfg").value), intervalLow: Number($("low").value), intervalHigh: Number($("high").value), count,
  };
  window.__jit.steps = [];
  window.__jit.stepTimes = [];
  window.__jit.result = null;
  $("progress").max = opts.steps; $("progress").value = 0;
  const compiling = info.backend === "webgpu" && !state.gpuWarm;
  const backendText = $("status").textContent;
  if (compiling) $("status").textContent = "Compiling GPU kernels (first run only)…";
  const size = info.imageSize;
  const started = performance.now();
  try {
    const out = await state.jit.generate(opts, (step, total, rgba) => {
      window.__jit.steps.push(step);
      window.__jit.stepTimes.push(performance.now());
      $("progress").value = step;
      drawStrip($("preview"), rgba, size, size, count);
    });
    if (info.backend === "webgpu") state.gpuWarm = true;
    window.__jit.result = { floats: Array.from(out.floats), count: out.count, seconds: out.seconds, options: opts, backend: info.backend, compiling };
    const grid = $("grid");
    grid.innerHTML = "";
    for (let i = 0; i < out.count; i++) {
      const fig = document.createElement("figure");
      const canvas = document.createElement("canvas");
      drawRgba(canvas, out.rgba, out.width, out.height, i);
      const a = document.createElement("a");
      a.textContent = "PNG";
      a.download = `jit-class${opts.classLabel ?? "none"}-seed${opts.seed}-${i}.png`;
      canvas.toBlob((blob) => { a.href = URL.createObjectURL(blob); });
      const cap = document.createElement("figcaption");
      cap.append(`${info.classNames[opts.classLabel] ?? "unconditional"} #${i} · `, a);
      fig.append(canvas, cap);
      grid.append(fig);
    }
    $("timing").textContent = `${out.count} images in ${out.seconds.toFixed(2)} s — ${(out.seconds / out.count).toFixed(2)} s per image on ${info.backend}`;
  } catch (e) {
    if (e.cancelled) {
      const now = performance.now();
      const times = [started, ...window.__jit.stepTimes];
      const stepMs = median(times.slice(1).map((t, i) => t - times[i]));
      const latencyMs = state.cancelAt === null ? NaN : now - state.cancelAt;
      window.__jit.cancel = { latencyMs, stepMs, stepsDone: window.__jit.steps.length };
      showError(`Cancelled after ${window.__jit.steps.length} of ${opts.steps} steps (stopped ${latencyMs.toFixed(0)} ms after the click; a step takes ~${stepMs.toFixed(0)} ms).`);
    } else {
      showError(`Generation failed: ${e.message ?? e}`);
    }
  } finally {
    state.busy = false;
    if (compiling) $("status").textContent = backendText;
    $("go").disabled = false; $("cancel").disabled = true; $("model-select").disabled = false;
  }
}

async function loadManifest() {
  try {
    const resp = await fetch("models.json");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const { models } = await resp.json();
    return models.filter((m) => m && typeof m.file === "string");
  } catch (e) {
    console.warn("no models.json, offering model.safetensors only:", e);
    return [{ file: "model.safetensors", title: "Default model" }];
  }
}

async function main() {
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => {
    state.cancelAt = performance.now();
    state.jit?.cancel();
  });
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
  if (!navigator.gpu) {
    $("banner").hidden = false;
    $("banner").textContent = "This browser has no WebGPU; images will be computed on the CPU (slower).";
  }
  try {
    // ?lanes=N caps the workers the CPU fallback splits a batch over (default: one per core);
    // ?simd=simd128 takes the plain SIMD128 module where the browser has relaxed SIMD.
    const params = new URLSearchParams(location.search);
    state.jit = await JitWorker.create({ lanes: params.get("lanes") ?? undefined, simd: params.get("simd") ?? undefined });
    window.__jit.simd = state.jit.simd;
  } catch (e) {
    showError(`This browser could not start the WebAssembly module in a worker: ${e.message ?? e}`);
    $("status").textContent = "Not available.";
    return;
  }

  // The picker: models.json, plus a ?model=URL if given (selected first).
  state.models = await loadManifest();
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && !state.models.some((m) => m.file === wanted)) state.models.unshift({ file: wanted, title: wanted });
  const picker = $("model-select");
  state.models.forEach((m, i) => picker.add(new Option(m.title ?? m.file, String(i))));
  // Without WebGPU the first model marked "cpu" (small enough for the CPU fallback) comes first.
  const first = (!navigator.gpu && state.models.find((m) => m.cpu)) || state.models[0];
  picker.value = String(Math.max(0, state.models.findIndex((m) => m.file === (wanted ?? first?.file))));
  const pick = (i) => {
    const m = state.models[i];
    return useModel(() => cachedBytes(m.file), m.title ?? m.file, m);
  };
  picker.addEventListener("change", async () => {
    const previous = state.label;
    if (!(await pick(Number(picker.value)))) {
      const back = [...picker.options].find((o) => o.text === previous);
      if (back) picker.value = back.value;
    }
  });

  const onFile = async (file) => {
    if (!file) return;
    if (await useModel(() => file, file.name)) {
      const opt = new Option(file.name, "");
      opt.disabled = true;
      picker.add(opt);
      picker.value = "";
    }
  };
  $("file").addEventListener("change", (e) => onFile(e.target.files[0]));
  const drop = $("drop");
  for (const target of [document.body, drop]) {
    target.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    target.addEventListener("dragleave", () => drop.classList.remove("over"));
    target.addEventListener("drop", (e) => { e.preventDefault(); e.stopPropagation(); drop.classList.remove("over"); onFile(e.dataTransfer.files[0]); });
  }

  if (state.models.length === 0) {
    showError("No models listed in models.json. Drop a checkpoint file above.");
    $("status").textContent = "No model loaded.";
    return;
  }
  await pick(Number(picker.value));
}

main();
