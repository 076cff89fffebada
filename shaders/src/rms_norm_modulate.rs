//! RMSNorm followed by adaLN's modulate, one cube per token:
//! `out = x / sqrt(mean(x²) + eps) · weight · (1 + scale) + shift`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, row_rms, units_for};
use crate::{buffer, contiguous, empty_like};

#[cube(launch_unchecked)]
fn rms_norm_modulate_kernel<F: Float>(
    x: &[F],
    weight: &[F],
    shift: &[F],
    scale: &[F],
    out: &mut [F],
    rows: usize,
    dim: usize,
    tokens: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    let row = cube_index();
    let len = if row < rows { dim } else { 0usize };
    let start = row * dim;
    let rms = row_rms::<F>(x, start, len, dim, eps, units);
    let batch = (row / tokens) * dim;
    let mut i = UNIT_POS as usize;
    while i < len {
        let normed = x[start + i] / rms * weight[i];
        out[start + i] = normed * (F::new(1.0) + scale[batch + i]) + shift[batch + i];
        i += units;
    }
}

/// `x` `[B, T, D]`, `weight` `[D]`, `shift` and `scale` `[B, 1, D]` (f32) → `[B, T, D]`.
pub fn rms_norm_modulate(
    x: CubeTensor,
    weight: CubeTensor,
    shift: CubeTensor,
    scale: CubeTensor,
    eps: f32,
) -> CubeTensor {
    let (x, weight, shift, scale) = (contiguous(x), contiguous(weight), contiguous(shift), contiguous(scale));
    let shape = x.meta.shape().to_vec();
    let (dim, tokens) = (shape[2], shape[1]);
    let rows = shape[0] * tokens;
    let out = empty_like(&x, shape);
    let units = units_for(dim);
    unsafe {
        rms_norm_modulate_kernel::launch_unchecked::<f32>(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(units as u32),
            buffer(&x),
            buffer(&weight),
            buffer(&shift),
            buffer(&scale),
            buffer(&out),
            rows,
            dim,
            tokens,
            eps,
            units,
        );
    }
    out
}
