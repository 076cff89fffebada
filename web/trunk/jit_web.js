// Trunk names wasm-bindgen's output after the package (`jit-web.js`); the worker imports the
// plain build's name (`jit_web.js`). This re-export makes both layouts the same to the worker.
export * from "./jit-web.js";
export { default } from "./jit-web.js";
