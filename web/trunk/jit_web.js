// Trunk names wasm-bindgen's output after the package (`jit-web.js`); the worker imports the
// plain build's name (`jit_web.js`). This re-export, and the module's file name, make both layouts
// the same to the worker.
export * from "./jit-web.js";
export const wasmUrl = new URL("./jit-web_bg.wasm", import.meta.url);
export { default } from "./jit-web.js";
