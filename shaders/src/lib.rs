//! JiT's own GPU kernels, written once in CubeCL (`#[cube]`) and compiled by cubecl for the
//! adapter: WGSL (browsers, the default native build), SPIR-V on Vulkan and MSL on Metal.
//!
//! Each kernel is one pass over memory for a chain that burn runs as several kernels:
//! - [`rms_norm_modulate`]: RMSNorm + adaLN modulate (two per block);
//! - [`qkv_heads`]: the `qkv` projection split into heads, qk-norm and the 2-D RoPE (one per
//!   block; the unfused chain is a permute copy and ~12 element-wise kernels);
//! - [`flash_attention`]: attention in one kernel, the scores kept on chip (one per block), and
//!   its backward pass in two, [`flash_attention_backward`];
//! - [`scaled_softmax`]: attention's softmax in f32 over scores in f32 or f16, with the
//!   probabilities in both types, where attention runs as two products (one per block; burn's
//!   chain is eight kernels);
//! - [`silu_gate`]: SwiGLU's gate `SiLU(x1)·x2` (one per block), and its gradient,
//!   [`silu_gate_backward`];
//! - [`gated_residual`]: adaLN-Zero's `x + gate·y` (two per block), the gate a chunk of the
//!   adaLN output;
//! - [`cfg_mix`]: classifier-free guidance in the sampler;
//! - [`adamw_ema`]: AdamW's step and both EMA updates over many parameters per launch, in place
//!   where nothing else holds the values;
//! - [`non_finite`]: the count of NaN and ±∞ values over many tensors per launch (f16 loss
//!   scaling's check of the gradients);
//! - [`pad_part`]: the gradient of a part of a tensor (`qkv_heads`' three where attention is
//!   not one operation with it), in place of zeros and a slice-assign;
//! - the backward passes: [`rms_norm_modulate_dx`] (which also writes each row's RMS),
//!   [`rms_norm_modulate_sums`] and [`gated_residual_backward`] (each writes its chunks of the adaLN
//!   output's gradient whole, zeros included: no copy per chunk), [`qkv_heads_dx`] (each row's
//!   RMS too) and [`qkv_heads_dweight`] (from the three parts' gradients as attention's backward
//!   pass gives them) and [`scaled_softmax_backward`].
//!
//! They take and return burn's cubecl tensors ([`CubeTensor`], contiguous or not): f32, and
//! where mixed precision passes the products' f16 (`qkv_heads` and its backward kernels,
//! `pad_part`, `scaled_softmax`, flash attention, the SwiGLU gate both ways, the adaLN output
//! that `rms_norm_modulate` and `gated_residual` read and whose gradient they write, and the
//! normalised tokens `rms_norm_modulate` writes) also f16, with the arithmetic in f32. Each
//! checks the shapes and types its kernel indexes by before it launches (a panic, never a read
//! or write out of bounds).
//! `jit-core`'s op layer (`jit_core::ops`, a burn backend extension) calls them on
//! [`CubeBackend`], in fusion's stream where burn's `fusion` is on and as tracked operations
//! under autodiff. [`launches::count`] counts the kernels some work launches. Each kernel is
//! tested against the op layer's reference bodies on wgpu in `jit-core/tests/shaders.rs`.

extern crate alloc;

mod adamw_ema;
mod cfg_mix;
mod flash_attention;
mod gated_residual;
pub mod launches;
mod non_finite;
mod pad_part;
mod qkv_heads;
mod qkv_heads_backward;
mod reduce;
mod rms_norm_modulate;
mod rms_norm_modulate_backward;
mod scaled_softmax;
mod silu_gate;

pub use adamw_ema::{AdamWEmaSlot, adamw_ema, params_per_launch};
pub use burn_cubecl::CubeBackend;
pub use burn_cubecl::tensor::CubeTensor;
pub use cfg_mix::cfg_mix;
pub use flash_attention::{MAX_HEAD_DIM, flash_attention, flash_attention_backward};
pub use gated_residual::{gated_residual, gated_residual_backward};
pub use non_finite::non_finite;
pub use pad_part::pad_part;
pub use qkv_heads::qkv_heads;
pub use qkv_heads_backward::{qkv_heads_dweight, qkv_heads_dx};
pub use rms_norm_modulate::rms_norm_modulate;
pub use rms_norm_modulate_backward::{rms_norm_modulate_dx, rms_norm_modulate_sums};
pub use scaled_softmax::{scaled_softmax, scaled_softmax_backward};
pub use silu_gate::{silu_gate, silu_gate_backward};

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use cubecl::prelude::BufferArg;

/// `$body` with the type alias `$t` bound to the element type of `$dtype` (f32 or f16): the
/// launch of a kernel whose storage type follows a tensor's (`$what` names it in the panic
/// for another dtype, which the op layer never passes).
macro_rules! with_float {
    ($dtype:expr, $what:literal, $t:ident => $body:expr) => {
        match $dtype {
            burn::tensor::DType::F32 => {
                type $t = f32;
                $body
            }
            burn::tensor::DType::F16 => {
                type $t = burn::tensor::f16;
                $body
            }
            other => panic!("{} takes f32 or f16 tensors, not {other:?}", $what),
        }
    };
}
pub(crate) use with_float;

/// `t` in row-major order, copied only where it is a view (chunks, transposes) or tiled.
fn contiguous(t: CubeTensor) -> CubeTensor {
    into_contiguous(t)
}

/// Panics unless `t` has `shape`: the sizes a kernel's indexing assumes of an operand.
fn assert_shape(what: &str, name: &str, t: &CubeTensor, shape: &[usize]) {
    assert_eq!(t.meta.shape().to_vec(), shape, "{what}: {name} has the shape {shape:?}");
}

/// `x`'s shape `[B, T, D]` (panics for another rank).
fn tokens_shape(what: &str, x: &CubeTensor) -> [usize; 3] {
    let shape = x.meta.shape().to_vec();
    <[usize; 3]>::try_from(shape).unwrap_or_else(|s| panic!("{what}: x is [B, T, D], not {s:?}"))
}

/// A per-image vector `[images, 1, dim]` (checked; a chunk of the adaLN output, `[B, n·D]`
/// seen as n parts) as its buffer and the distance between images in it: the chunk as it lies
/// where its channels are contiguous (no copy), else a row-major copy (distance `dim`).
fn per_image(what: &str, t: CubeTensor, images: usize, dim: usize) -> (BufferArg, usize) {
    assert_shape(what, "the adaLN chunk", &t, &[images, 1, dim]);
    let strides = t.meta.strides().to_vec();
    let t = if strides[2] == 1 && strides[0] >= dim { t } else { contiguous(t) };
    let stride = if images > 1 { t.meta.strides()[0] } else { dim };
    // SAFETY: image `b < images` holds channels `b·stride .. b·stride + dim`, the last ending at
    // `(images − 1)·stride + dim`: inside the buffer the view (or the copy) was cut from.
    let len = (images.max(1) - 1) * stride + dim;
    (unsafe { BufferArg::from_raw_parts(t.handle.clone(), len) }, stride)
}

/// Panics unless every tensor is f32: the operands a kernel binds as f32 whatever its storage
/// type (gains, tables, RMS), which a buffer of another type would be read past the end of.
fn assert_f32(what: &str, ts: &[&CubeTensor]) {
    for t in ts {
        assert_eq!(t.dtype, DType::F32, "{what}: gains, tables and RMS are f32");
    }
}

/// A new row-major f32 tensor of `shape` on `like`'s device.
fn empty_f32(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), DType::F32)
}

/// A new row-major tensor of `shape` on `like`'s device, with its dtype.
fn empty_like(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_typed(like, shape, like.dtype)
}

/// A new row-major tensor of `shape` and `dtype` on `like`'s device.
fn empty_typed(like: &CubeTensor, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), dtype)
}

/// The cubes and their size for a kernel with one unit per value of `len` values on `like`'s
/// device (the element-wise kernels: `cfg_mix`, `silu_gate`, `gated_residual`).
fn elementwise_grid(like: &CubeTensor, len: usize) -> (cubecl::prelude::CubeCount, cubecl::prelude::CubeDim) {
    let cube_dim = cubecl::prelude::CubeDim::new(&like.client, len);
    (cubecl::calculate_cube_count_elemwise(&like.client, len, cube_dim), cube_dim)
}

/// A contiguous tensor as a kernel's flat buffer argument.
fn buffer(t: &CubeTensor) -> BufferArg {
    // SAFETY: `t` is row-major (made so by `contiguous` or created by `empty_like`), so its
    // buffer holds exactly its elements.
    unsafe { BufferArg::from_raw_parts(t.handle.clone(), t.meta.shape().num_elements()) }
}
