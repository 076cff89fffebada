//! The CPU kernels behind [`crate::ops`] on burn's CPU backend (Flex): [`cpu`] (one pass over
//! memory per operation: RMSNorm + modulate, qk-norm + RoPE, attention, SwiGLU's gate, the CFG
//! mix, the EMA update, and their gradients) and [`gemm`] (the linear layers as direct calls to
//! the matrix-product library; in the browser's wasm module, the tiles of [`gemm_simd128`]).
//! On these shapes (≈70 tokens, width 64–384) burn's tensor ops spent more time moving memory,
//! in scalar `expf` and in serial work on the calling thread than in the matrix products
//! (docs/cpu.md). They take and return plain slices of f32; `ops::flex` wraps them as tensors.

pub mod cpu;
#[cfg(feature = "flex")]
pub mod gemm;
#[cfg(feature = "flex")]
pub mod gemm_simd128;
