//! The gradients of [`crate::rms_norm_modulate`], `out = x̂·w·(1 + scale) + shift` with
//! `x̂ = x / rms`, from the output's gradient `g` `[B, T, D]`:
//!
//! - `dx = (ĝ − x̂·mean(ĝ·x̂)) / rms` with `ĝ = g·(1 + scale)·w`, one cube per row, which
//!   works out the row's RMS as it reads the row and writes it for the next kernel;
//! - per batch image and channel, one unit per (b, d): `Σ_t g` (= `dshift`) and `w·Σ_t g·x̂`
//!   (= `dscale`), written at their chunks of the adaLN output's gradient (zeros at the others),
//!   and `(1 + scale)·Σ_t g·x̂`, whose sum over the images is `dweight`.
//!
//! `x`, `weight`, `dx`, the RMS and `dweight`'s parts are f32; `scale`, `g` and the adaLN
//! output's gradient are in the adaLN output's type, f32 or f16; the arithmetic is f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, cube_sum, row_rms, units_for};
use crate::{
    assert_f32, assert_shape, buffer, contiguous, elementwise_grid, empty_f32, empty_typed, per_image, tokens_shape,
    with_float,
};

#[cube(launch_unchecked)]
fn rms_norm_modulate_dx_kernel<M: Float>(
    x: &[f32],
    weight: &[f32],
    scale: &[M],
    grad: &[M],
    rms: &mut [f32],
    dx: &mut [f32],
    rows: usize,
    dim: usize,
    tokens: usize,
    scale_stride: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    let row = cube_index();
    let len = if row < rows { dim } else { 0usize };
    let start = row * dim;
    let batch = (row / tokens) * scale_stride;
    let r = row_rms::<f32, f32>(x, start, len, dim, eps, units);
    if row < rows && UNIT_POS == 0 {
        rms[row] = r;
    }
    let mut dot = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < len {
        let g_hat = f32::cast_from(grad[start + i]) * (1.0 + f32::cast_from(scale[batch + i])) * weight[i];
        dot += g_hat * x[start + i] / r;
        i += units;
    }
    let mean = cube_sum::<f32>(dot, units) / f32::cast_from(dim);
    let mut i = UNIT_POS as usize;
    while i < len {
        let g_hat = f32::cast_from(grad[start + i]) * (1.0 + f32::cast_from(scale[batch + i])) * weight[i];
        dx[start + i] = (g_hat - x[start + i] / r * mean) / r;
        i += units;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the inputs, both outputs, the shape and the chunks
fn rms_norm_modulate_sums_kernel<M: Float>(
    x: &[f32],
    weight: &[f32],
    scale: &[M],
    grad: &[M],
    rms: &[f32],
    dmodulation: &mut [M],
    partial: &mut [f32],
    batch: usize,
    tokens: usize,
    dim: usize,
    scale_stride: usize,
    index: usize,
    chunks: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < batch * dim {
        let (b, d) = (unit / dim, unit % dim);
        let mut sum_g = 0.0f32;
        let mut sum_gx = 0.0f32;
        for t in 0..tokens {
            let row = b * tokens + t;
            let g = f32::cast_from(grad[row * dim + d]);
            sum_g += g;
            sum_gx += g * x[row * dim + d] / rms[row];
        }
        // [B, chunks·D]: Σ g (dshift) at chunk `index`, w·Σ g·x̂ (dscale) at `index + 1`, zeros
        // at the others; [B, D]: (1 + scale)·Σ g·x̂ (dweight's part from image b).
        for c in 0..chunks {
            let value = if c == index {
                sum_g
            } else if c == index + 1 {
                weight[d] * sum_gx
            } else {
                0.0f32
            };
            dmodulation[(b * chunks + c) * dim + d] = M::cast_from(value);
        }
        partial[unit] = (1.0 + f32::cast_from(scale[b * scale_stride + d])) * sum_gx;
    }
}

/// `dx` `[B, T, D]` and the rows' RMS `[B·T]` (`sqrt(mean(x²) + eps)`, for
/// [`rms_norm_modulate_sums`]) from `x`, the norm's `weight` `[D]` (f32), `scale` `[B, 1, D]` and
/// the output's gradient (one type, f32 or f16).
pub fn rms_norm_modulate_dx(
    x: CubeTensor,
    weight: CubeTensor,
    scale: CubeTensor,
    grad: CubeTensor,
    eps: f32,
) -> (CubeTensor, CubeTensor) {
    let [x, weight, grad] = [x, weight, grad].map(contiguous);
    assert_f32("rms_norm_modulate_dx", &[&x, &weight]);
    assert_eq!(grad.dtype, scale.dtype, "rms_norm_modulate_dx: the gradient in the scale's type");
    let typed = scale.dtype;
    let shape = tokens_shape("rms_norm_modulate_dx", &x);
    let [batch, tokens, dim] = shape;
    assert_shape("rms_norm_modulate_dx", "the gain", &weight, &[dim]);
    assert_shape("rms_norm_modulate_dx", "the gradient", &grad, &shape);
    let (scale, scale_stride) = per_image("rms_norm_modulate_dx", scale, batch, dim);
    let rows = batch * tokens;
    let dx = empty_f32(&x, shape.to_vec());
    let rms = empty_f32(&x, vec![rows]);
    let units = units_for(dim);
    // SAFETY: the other operands are row-major with the shapes above, `x`, `weight`, `dx` and
    // `rms` f32 and `grad` in the scale's type (checked); the kernel reads and writes row
    // `row < rows` at `row·dim + i`, `i < dim`, `rms` at `row`, and reads `scale` at
    // `b·scale_stride + i`, inside the buffer `per_image` gave.
    with_float!(typed, "rms_norm_modulate_dx", M => unsafe {
        rms_norm_modulate_dx_kernel::launch_unchecked::<M>(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(units as u32),
            buffer(&x),
            buffer(&weight),
            scale,
            buffer(&grad),
            buffer(&rms),
            buffer(&dx),
            rows,
            dim,
            tokens,
            scale_stride,
            eps,
            units,
        );
    });
    (dx, rms)
}

/// `dmodulation` `[B, chunks·D]`, the gradient of the adaLN output whose chunks `index` and
/// `index + 1` are the shift and the scale: `Σ_t grad` (`dshift`) and `weight·Σ_t grad·x̂`
/// (`dscale`) there, zeros at the other chunks; and `[B, D]`, `(1 + scale)·Σ_t grad·x̂` (summed
/// over `B`: `dweight`). For `x` and `grad` `[B, T, D]`, `weight` `[D]`, `scale` `[B, 1, D]`,
/// `rms` `[B·T]`, `x̂ = x/rms`; `x`, `weight`, `rms` and the `[B, D]` part f32, `scale`, `grad`
/// and `dmodulation` in one type, f32 or f16.
pub fn rms_norm_modulate_sums(
    x: CubeTensor,
    weight: CubeTensor,
    scale: CubeTensor,
    grad: CubeTensor,
    rms: CubeTensor,
    index: usize,
    chunks: usize,
) -> (CubeTensor, CubeTensor) {
    assert!(index + 1 < chunks, "rms_norm_modulate_sums: shift and scale are chunks of the modulation");
    let [x, weight, grad, rms] = [x, weight, grad, rms].map(contiguous);
    assert_f32("rms_norm_modulate_sums", &[&x, &weight, &rms]);
    assert_eq!(grad.dtype, scale.dtype, "rms_norm_modulate_sums: the gradient in the scale's type");
    let typed = scale.dtype;
    let shape = tokens_shape("rms_norm_modulate_sums", &x);
    let [batch, tokens, dim] = shape;
    assert_shape("rms_norm_modulate_sums", "the gain", &weight, &[dim]);
    assert_shape("rms_norm_modulate_sums", "the gradient", &grad, &shape);
    assert_eq!(rms.meta.shape().num_elements(), batch * tokens, "rms_norm_modulate_sums: one RMS a token");
    let (scale, scale_stride) = per_image("rms_norm_modulate_sums", scale, batch, dim);
    let dmodulation = empty_typed(&x, vec![batch, chunks * dim], typed);
    let partial = empty_f32(&x, vec![batch, dim]);
    let (count, cube_dim) = elementwise_grid(&x, batch * dim);
    // SAFETY: one unit per (b, d) < batch·dim (checked in the kernel) reads rows b·T..(b+1)·T
    // of `x` and `grad` at column d, `rms` at those rows, `weight` at d and `scale` at
    // b·scale_stride + d (inside the buffer `per_image` gave), and writes `dmodulation` at
    // (b, c·dim + d) for c < chunks and `partial` at (b, d); each buffer of the type the kernel
    // binds it as (checked).
    with_float!(typed, "rms_norm_modulate_sums", M => unsafe {
        rms_norm_modulate_sums_kernel::launch_unchecked::<M>(
            &x.client,
            count,
            cube_dim,
            buffer(&x),
            buffer(&weight),
            scale,
            buffer(&grad),
            buffer(&rms),
            buffer(&dmodulation),
            buffer(&partial),
            batch,
            tokens,
            dim,
            scale_stride,
            index,
            chunks,
        );
    });
    (dmodulation, partial)
}
