// The JiT demo page: loads an exported checkpoint (cached with the Cache API), shows the
// controls, and generates on WebGPU (or the CPU fallback) with a live x̂ preview.

const $ = (id) => document.getElementById(id);
const state = { gen: null, busy: false };
// Exposed for tests and for curious visitors.
window.__jit = { ready: false, info: null, result: null, error: null, steps: [] };

async function loadBindings() {
  if (window.wasmBindings) return window.wasmBindings; // built by Trunk
  const mod = await import("./pkg/jit_web.js");
  await mod.default();
  return mod;
}

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

async function useModel(source, label) {
  const { JitGenerator } = state.bindings;
  const params = new URLSearchParams(location.search);
  $("go").disabled = true;
  $("status").textContent = `Loading ${label}…`;
  try {
    const gen = await JitGenerator.load(source, { backend: params.get("backend") || "auto" });
    state.gen = gen;
    const info = gen.info();
    window.__jit.info = info;
    showError("");
    const c = info.config;
    $("model-info").textContent =
      `${label}: ${(info.parameters / 1e6).toFixed(2)}M parameters, ${c.in_channels}×${c.input_size}×${c.input_size} px, ` +
      `patch ${c.patch_size}, depth ${c.depth}, ${info.numClasses} classes, trained ${info.step} steps`;
    $("status").textContent = `Backend: ${info.backend === "webgpu" ? "WebGPU (your GPU)" : "CPU (WebAssembly)"}`;
    $("banner").hidden = !info.backendNote;
    $("banner").textContent = info.backendNote
      ? `WebGPU is not available in this browser, so images are computed on the CPU (slower). ${info.backendNote}`
      : "";
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
    $("go").disabled = false;
    window.__jit.ready = true;
  } catch (e) {
    showError(`Could not load ${label}: ${e.message ?? e}`);
    $("status").textContent = state.gen ? "Kept the previous model." : "No model loaded.";
    $("go").disabled = !state.gen;
    window.__jit.ready = !!state.gen;
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

async function generate(ev) {
  ev.preventDefault();
  if (!state.gen || state.busy) return;
  state.busy = true;
  $("go").disabled = true; $("cancel").disabled = false;
  showError("");
  const info = state.gen.info();
  const count = Number($("count").value);
  const opts = {
    classLabel: $("class").value === "" ? null : Number($("class").value),
    seed: Number($("seed").value), steps: Number($("steps").value), sampler: $("sampler").value,
    cfg: Number($("cfg").value), intervalLow: Number($("low").value), intervalHigh: Number($("high").value), count,
  };
  window.__jit.steps = [];
  $("progress").max = opts.steps; $("progress").value = 0;
  const size = info.imageSize;
  try {
    const out = await state.gen.generate(opts, (step, total, rgba) => {
      window.__jit.steps.push(step);
      $("progress").value = step;
      drawStrip($("preview"), rgba, size, size, count);
    });
    window.__jit.result = { floats: Array.from(out.floats), count: out.count, seconds: out.seconds, options: opts, backend: info.backend };
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
    showError(`${e.message ?? e}` === "cancelled" ? "Cancelled." : `Generation failed: ${e.message ?? e}`);
  } finally {
    state.busy = false;
    $("go").disabled = false; $("cancel").disabled = true;
  }
}

async function main() {
  try {
    state.bindings = await loadBindings();
  } catch (e) {
    showError(`This browser could not start the WebAssembly module: ${e.message ?? e}`);
    return;
  }
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => state.gen?.cancel());
  $("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
  const onFile = async (file) => {
    if (!file) return;
    await useModel(new Uint8Array(await file.arrayBuffer()), file.name);
  };
  $("file").addEventListener("change", (e) => onFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); onFile(e.dataTransfer.files[0]); });
  if (!navigator.gpu) {
    $("banner").hidden = false;
    $("banner").textContent = "This browser has no WebGPU; images will be computed on the CPU (slower).";
  }
  const url = new URLSearchParams(location.search).get("model") || "model.safetensors";
  try {
    await useModel(await cachedBytes(url), url);
  } catch (e) {
    showError(`Could not load the default model (${e.message ?? e}). Drop a checkpoint file above.`);
    $("status").textContent = "No model loaded.";
  }
}

main();
