//! The gradients of [`crate::rms_norm_modulate`], `out = x̂·w·(1 + scale) + shift` with
//! `x̂ = x / rms`, from the output's gradient `g` `[B, T, D]`:
//!
//! - `dx = (ĝ − x̂·mean(ĝ·x̂)) / rms` with `ĝ = g·(1 + scale)·w`, one cube per row, which
//!   works out the row's RMS as it reads the row and writes it for the next kernel;
//! - per batch image and channel, one unit per (b, d): `Σ_t g` (= `dshift`) and `w·Σ_t g·x̂`
//!   (= `dscale`), written at their chunks of the adaLN output's gradient (zeros at the others),
//!   and `(1 + scale)·Σ_t g·x̂`, whose sum over the images is `dweight`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, cube_sum, row_rms, units_for};
use crate::{buffer, contiguous, elementwise_grid, empty_like, per_image};

#[cube(launch_unchecked)]
fn rms_norm_modulate_dx_kernel<F: Float>(
    x: &[F],
    weight: &[F],
    scale: &[F],
    grad: &[F],
    rms: &mut [F],
    dx: &mut [F],
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
    let r = row_rms::<F, F>(x, start, len, dim, eps, units);
    if row < rows && UNIT_POS == 0 {
        rms[row] = r;
    }
    let mut dot = F::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < len {
        let g_hat = grad[start + i] * (F::new(1.0) + scale[batch + i]) * weight[i];
        dot += g_hat * x[start + i] / r;
        i += units;
    }
    let mean = cube_sum::<F>(dot, units) / F::cast_from(dim);
    let mut i = UNIT_POS as usize;
    while i < len {
        let g_hat = grad[start + i] * (F::new(1.0) + scale[batch + i]) * weight[i];
        dx[start + i] = (g_hat - x[start + i] / r * mean) / r;
        i += units;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the inputs, both outputs, the shape and the chunks
fn rms_norm_modulate_sums_kernel<F: Float>(
    x: &[F],
    weight: &[F],
    scale: &[F],
    grad: &[F],
    rms: &[F],
    dmodulation: &mut [F],
    partial: &mut [F],
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
        let mut sum_g = F::new(0.0);
        let mut sum_gx = F::new(0.0);
        for t in 0..tokens {
            let row = b * tokens + t;
            let g = grad[row * dim + d];
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
                F::new(0.0)
            };
            dmodulation[(b * chunks + c) * dim + d] = value;
        }
        partial[unit] = (F::new(1.0) + scale[b * scale_stride + d]) * sum_gx;
    }
}

/// `dx` `[B, T, D]` and the rows' RMS `[B·T]` (`sqrt(mean(x²) + eps)`, for
/// [`rms_norm_modulate_sums`]) from `x`, the norm's `weight` `[D]`, `scale` `[B, 1, D]` and the
/// output's gradient (f32).
pub fn rms_norm_modulate_dx(
    x: CubeTensor,
    weight: CubeTensor,
    scale: CubeTensor,
    grad: CubeTensor,
    eps: f32,
) -> (CubeTensor, CubeTensor) {
    let [x, weight, grad] = [x, weight, grad].map(contiguous);
    let (scale, scale_stride) = per_image(scale);
    let shape = x.meta.shape().to_vec();
    let (tokens, dim) = (shape[1], shape[2]);
    let rows = shape[0] * tokens;
    let dx = empty_like(&x, shape);
    let rms = empty_like(&x, vec![rows]);
    let units = units_for(dim);
    // SAFETY: the other operands are row-major with the shapes above; the kernel reads and
    // writes row `row < rows` at `row·dim + i`, `i < dim`, `rms` at `row`, and reads `scale`
    // at `b·scale_stride + i`, inside the buffer `per_image` gave.
    unsafe {
        rms_norm_modulate_dx_kernel::launch_unchecked::<f32>(
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
    }
    (dx, rms)
}

/// `dmodulation` `[B, chunks·D]`, the gradient of the adaLN output whose chunks `index` and
/// `index + 1` are the shift and the scale: `Σ_t grad` (`dshift`) and `weight·Σ_t grad·x̂`
/// (`dscale`) there, zeros at the other chunks; and `[B, D]`, `(1 + scale)·Σ_t grad·x̂` (summed
/// over `B`: `dweight`). For `x` and `grad` `[B, T, D]`, `weight` `[D]`, `scale` `[B, 1, D]`,
/// `rms` `[B·T]`, `x̂ = x/rms` (all f32).
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
    let (scale, scale_stride) = per_image(scale);
    let shape = x.meta.shape().to_vec();
    let (batch, tokens, dim) = (shape[0], shape[1], shape[2]);
    let dmodulation = empty_like(&x, vec![batch, chunks * dim]);
    let partial = empty_like(&x, vec![batch, dim]);
    let (count, cube_dim) = elementwise_grid(&x, batch * dim);
    // SAFETY: one unit per (b, d) < batch·dim (checked in the kernel) reads rows b·T..(b+1)·T
    // of `x` and `grad` at column d, `rms` at those rows, `weight` at d and `scale` at
    // b·scale_stride + d (inside the buffer `per_image` gave), and writes `dmodulation` at
    // (b, c·dim + d) for c < chunks and `partial` at (b, d).
    unsafe {
        rms_norm_modulate_sums_kernel::launch_unchecked::<f32>(
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
    }
    (dmodulation, partial)
}
