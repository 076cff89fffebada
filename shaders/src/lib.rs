//! JiT's own GPU kernels, written once in CubeCL (`#[cube]`) and compiled by cubecl for the
//! adapter: WGSL (browsers, the default native build), SPIR-V on Vulkan and MSL on Metal.
//!
//! Each kernel is one pass over memory for a chain that burn runs as several kernels:
//! - [`rms_norm_modulate`]: RMSNorm + adaLN modulate (two per block);
//! - [`qkv_heads`]: the `qkv` projection split into heads, qk-norm and the 2-D RoPE (one per
//!   block; the unfused chain is a permute copy and ~12 element-wise kernels);
//! - [`silu_gate`]: SwiGLU's gate `SiLU(x1)·x2` (one per block);
//! - [`gated_residual`]: adaLN-Zero's `x + gate·y` (two per block);
//! - [`cfg_mix`]: classifier-free guidance in the sampler;
//! - [`ema_blend`]: the EMA update of a parameter (two per parameter and training step).
//!
//! [`launches::count`] counts the kernels some work launches.
//!
//! [`ShaderOps`] is a burn backend extension: `jit-core`'s `fused` module calls it on the
//! `Dispatch` backend for f32 GPU tensors, in sampling and (with the `autodiff` feature, whose
//! backward passes are in `autodiff.rs`: `rms_rows`, `*_dx`, `*_sums`, `*_dweight`) in
//! training; the model files' tensor ops stay the reference everywhere else. With burn's `fusion` (this crate's `fusion`
//! feature) each call is a custom operation in fusion's stream. Parity with the tensor ops is
//! tested on wgpu in `jit-core/tests/shaders.rs`.

extern crate alloc;

#[cfg(feature = "autodiff")]
mod autodiff;
mod cfg_mix;
mod ema_blend;
mod gated_residual;
pub mod launches;
mod qkv_heads;
mod qkv_heads_backward;
mod reduce;
mod rms_norm_modulate;
mod rms_norm_modulate_backward;
mod rms_rows;
mod silu_gate;

use burn::backend::Backend;
use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::BufferArg;

/// The fused operations on GPU tensors (f32, contiguous or not). Under autodiff (this crate's
/// `autodiff` feature) the chains of a training step are each one tracked operation whose
/// backward pass runs the `*_dx`, `*_sums` and `*_dweight` kernels below.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"), Autodiff: cfg(feature = "autodiff"))]
pub trait ShaderOps: Backend {
    /// `x / sqrt(mean(x²) + eps) · weight · (1 + scale) + shift` for `x` `[B, T, D]`,
    /// `weight` `[D]`, `shift` and `scale` `[B, 1, D]` → `[B, T, D]`.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm_modulate(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `qkv` `[B, T, 3·heads·hd]` → `[3, B, heads, T, hd]`: queries and keys through RMSNorm
    /// (gains `[hd]`, `eps`) and RoPE (`cos`, `sin_signed` `[T, hd]`), then the values.
    #[fusion(dtype = qkv, shape = qkv_heads_shape(qkv, heads))]
    fn qkv_heads(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        heads: usize,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `v` `[2B, …]` (conditional velocities, then unconditional) → `v_u + scale·(v_c − v_u)`
    /// `[B, …]`.
    #[fusion(dtype = v, shape = half_batch_shape(v))]
    fn cfg_mix(v: FloatTensor<Self>, scale: f32) -> FloatTensor<Self>;

    /// `h` `[…, 2·hidden]` → `SiLU(x1)·x2` `[…, hidden]` (`x1`, `x2` the halves of each row).
    #[fusion(dtype = h, shape = half_last_shape(h))]
    fn silu_gate(h: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x + gate·y` for `x`, `y` `[B, T, D]` and `gate` `[B, 1, D]` → `[B, T, D]`.
    #[fusion(dtype = x, shape = x)]
    fn gated_residual(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The EMA update `ema·decay + theta·rest` of one parameter, `rest` = `1 − decay` worked
    /// out in f64 (never differentiated: EMAs live outside autodiff).
    #[fusion(dtype = ema, shape = ema)]
    fn ema_blend(ema: FloatTensor<Self>, theta: FloatTensor<Self>, decay: f32, rest: f32) -> FloatTensor<Self>;

    /// The RMS `sqrt(mean(x²) + eps)` of each run of `dim` values of `x` → `[len / dim]`.
    /// (Backward passes only: not differentiated.)
    #[fusion(dtype = x, shape = rows_shape(x, dim))]
    fn rms_rows(x: FloatTensor<Self>, dim: usize, eps: f32) -> FloatTensor<Self>;

    /// [`ShaderOps::rms_norm_modulate`]'s `dx` `[B, T, D]` from `x`, `weight`, `scale`, the
    /// output's gradient `grad` and `rms` = [`ShaderOps::rms_rows`] of `x`.
    #[fusion(dtype = x, shape = x)]
    fn rms_norm_modulate_dx(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `[B, 2, D]`: `Σ_t grad` and `Σ_t grad·x/rms` for `x`, `grad` `[B, T, D]`.
    #[fusion(dtype = x, shape = sums_shape(x))]
    fn rms_norm_modulate_sums(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`ShaderOps::qkv_heads`]'s `dqkv` `[B, T, 3·heads·hd]` from its inputs, the output's
    /// gradient `[3, B, heads, T, hd]` and `rms` = [`ShaderOps::rms_rows`] of `qkv` by `hd`.
    #[fusion(dtype = qkv, shape = qkv)]
    #[allow(clippy::too_many_arguments)] // the forward's inputs and the gradient
    fn qkv_heads_dx(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// `[chunks, 2, hd]`: partial sums (over chunks of rows) of the gradients of
    /// [`ShaderOps::qkv_heads`]'s query and key gains; their sum over the chunks is the gradient.
    #[fusion(dtype = qkv, shape = dweight_shape(qkv, heads))]
    fn qkv_heads_dweight(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn rows_shape(x: &Shape, dim: &usize) -> Shape {
    Shape::from(vec![x.num_elements() / (*dim).max(1)])
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn sums_shape(x: &Shape) -> Shape {
    Shape::from(rms_norm_modulate_backward::sums_shape(x))
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn dweight_shape(qkv: &Shape, heads: &usize) -> Shape {
    Shape::from(qkv_heads_backward::dweight_partials_shape(qkv, *heads))
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn qkv_heads_shape(qkv: &Shape, heads: &usize) -> Shape {
    Shape::from(qkv_heads::qkv_heads_shape(qkv, *heads))
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn half_batch_shape(v: &Shape) -> Shape {
    Shape::from(cfg_mix::half_batch(v))
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn half_last_shape(h: &Shape) -> Shape {
    let mut dims = h.to_vec();
    if let Some(last) = dims.last_mut() {
        *last /= 2;
    }
    Shape::from(dims)
}

impl ShaderOps for CubeBackend {
    fn rms_norm_modulate(
        x: CubeTensor,
        weight: CubeTensor,
        shift: CubeTensor,
        scale: CubeTensor,
        eps: f32,
    ) -> CubeTensor {
        rms_norm_modulate::rms_norm_modulate(x, weight, shift, scale, eps)
    }

    fn qkv_heads(
        qkv: CubeTensor,
        q_weight: CubeTensor,
        k_weight: CubeTensor,
        cos: CubeTensor,
        sin_signed: CubeTensor,
        heads: usize,
        eps: f32,
    ) -> CubeTensor {
        qkv_heads::qkv_heads(qkv, q_weight, k_weight, cos, sin_signed, heads, eps)
    }

    fn cfg_mix(v: CubeTensor, scale: f32) -> CubeTensor {
        cfg_mix::cfg_mix(v, scale)
    }

    fn silu_gate(h: CubeTensor) -> CubeTensor {
        silu_gate::silu_gate(h)
    }

    fn gated_residual(x: CubeTensor, gate: CubeTensor, y: CubeTensor) -> CubeTensor {
        gated_residual::gated_residual(x, gate, y)
    }

    fn ema_blend(ema: CubeTensor, theta: CubeTensor, decay: f32, rest: f32) -> CubeTensor {
        ema_blend::ema_blend(ema, theta, decay, rest)
    }

    fn rms_rows(x: CubeTensor, dim: usize, eps: f32) -> CubeTensor {
        rms_rows::rms_rows(x, dim, eps)
    }

    fn rms_norm_modulate_dx(
        x: CubeTensor,
        weight: CubeTensor,
        scale: CubeTensor,
        grad: CubeTensor,
        rms: CubeTensor,
    ) -> CubeTensor {
        rms_norm_modulate_backward::rms_norm_modulate_dx(x, weight, scale, grad, rms)
    }

    fn rms_norm_modulate_sums(x: CubeTensor, grad: CubeTensor, rms: CubeTensor) -> CubeTensor {
        rms_norm_modulate_backward::rms_norm_modulate_sums(x, grad, rms)
    }

    #[allow(clippy::too_many_arguments)] // the forward's inputs and the gradient
    fn qkv_heads_dx(
        qkv: CubeTensor,
        q_weight: CubeTensor,
        k_weight: CubeTensor,
        cos: CubeTensor,
        sin_signed: CubeTensor,
        grad: CubeTensor,
        rms: CubeTensor,
        heads: usize,
    ) -> CubeTensor {
        qkv_heads_backward::qkv_heads_dx(qkv, q_weight, k_weight, cos, sin_signed, grad, rms, heads)
    }

    fn qkv_heads_dweight(
        qkv: CubeTensor,
        cos: CubeTensor,
        sin_signed: CubeTensor,
        grad: CubeTensor,
        rms: CubeTensor,
        heads: usize,
    ) -> CubeTensor {
        qkv_heads_backward::qkv_heads_dweight(qkv, cos, sin_signed, grad, rms, heads)
    }
}

/// `t` in row-major order, copied only where it is a view (chunks, transposes) or tiled.
fn contiguous(t: CubeTensor) -> CubeTensor {
    into_contiguous(t)
}

/// A new row-major tensor of `shape` on `like`'s device, with its dtype.
fn empty_like(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), like.dtype)
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
