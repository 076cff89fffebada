//! The CPU kernels of [`super`]: one pass over memory per operation, on contiguous f32 slices.
//!
//! Plain loops without branches (and without `mul_add`, a libm call where the target has no
//! FMA, as in wasm32), so that LLVM vectorises them; on x86-64 each kernel is also compiled
//! for AVX-512 and for AVX2 + FMA, picked at run time by capability tokens ([`isa`]).
//!
//! - [`isa`]: the tokens and `multiversion!`; [`math`]: `exp` (written once, for scalars and
//!   registers), SiLU, reductions; [`rows`]: rows over threads.
//! - The kernels: [`elementwise`] (a softmax row, CFG mix, EMA, SwiGLU's gate), [`norm`] (RMSNorm +
//!   modulate, qk-norm + RoPE), [`heads`] (`qkv` into heads) and [`attention`], with the AVX2
//!   and AVX-512 register blocks of attention in their own files.

#[macro_use]
pub mod isa;
pub mod math;
pub mod rows;

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
mod elementwise;
mod heads;
mod norm;

pub use attention::{
    AttentionShape, attention, attention_backward, attention_supports, attention_with_probs, qkv_attention,
};
pub use elementwise::{AdamWEmaValues, adamw_ema, cfg_mix, non_finite, silu_gate, silu_gate_backward, silu_inplace};
pub use heads::{QkNormRope, QkvLayout, qkv_heads, qkv_heads_backward};
pub use math::exp;
pub use norm::{rms_norm_modulate, rms_norm_modulate_backward};
pub(super) use rows::new_rows;
