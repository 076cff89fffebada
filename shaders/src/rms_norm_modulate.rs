//! RMSNorm followed by adaLN's modulate, one cube per token:
//! `out = x / sqrt(mean(x²) + eps) · weight · (1 + scale) + shift`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, row_rms, units_for};
use crate::{buffer, contiguous, empty_like, per_image};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // four inputs, the output, the shape, two strides, eps
fn rms_norm_modulate_kernel<F: Float>(
    x: &[F],
    weight: &[F],
    shift: &[F],
    scale: &[F],
    out: &mut [F],
    rows: usize,
    dim: usize,
    tokens: usize,
    shift_stride: usize,
    scale_stride: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    let row = cube_index();
    let len = if row < rows { dim } else { 0usize };
    let start = row * dim;
    let rms = row_rms::<F, F>(x, start, len, dim, eps, units);
    let image = row / tokens;
    let (at_shift, at_scale) = (image * shift_stride, image * scale_stride);
    let mut i = UNIT_POS as usize;
    while i < len {
        let normed = x[start + i] / rms * weight[i];
        out[start + i] = normed * (F::new(1.0) + scale[at_scale + i]) + shift[at_shift + i];
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
    let (x, weight) = (contiguous(x), contiguous(weight));
    let ((shift, shift_stride), (scale, scale_stride)) = (per_image(shift), per_image(scale));
    let shape = x.meta.shape().to_vec();
    let (dim, tokens) = (shape[2], shape[1]);
    let rows = shape[0] * tokens;
    let out = empty_like(&x, shape);
    let units = units_for(dim);
    // SAFETY: `x` and `out` are row-major `[rows, dim]`, `weight` `[dim]`; the kernel reads and
    // writes row `row < rows` at `row·dim + i`, `i < dim`, and `shift`, `scale` at
    // `(row / tokens)·stride + i`, inside the buffers `per_image` gave.
    unsafe {
        rms_norm_modulate_kernel::launch_unchecked::<f32>(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(units as u32),
            buffer(&x),
            buffer(&weight),
            shift,
            scale,
            buffer(&out),
            rows,
            dim,
            tokens,
            shift_stride,
            scale_stride,
            eps,
            units,
        );
    }
    out
}
