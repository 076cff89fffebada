//! RMSNorm followed by adaLN's modulate, one cube per token:
//! `out = x / sqrt(mean(x²) + eps) · weight · (1 + scale) + shift`. `x` and `weight` are f32;
//! `shift`, `scale` and the output are in the adaLN output's type, f32 or f16 (under mixed
//! precision the products' type: the `qkv` and `w12` products take the output as it is), the
//! arithmetic f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, row_rms, units_for};
use crate::{assert_f32, assert_shape, buffer, contiguous, empty_typed, per_image, tokens_shape, with_float};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // four inputs, the output, the shape, two strides, eps
fn rms_norm_modulate_kernel<M: Float>(
    x: &[f32],
    weight: &[f32],
    shift: &[M],
    scale: &[M],
    out: &mut [M],
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
    let rms = row_rms::<f32, f32>(x, start, len, dim, eps, units);
    let image = row / tokens;
    let (at_shift, at_scale) = (image * shift_stride, image * scale_stride);
    let mut i = UNIT_POS as usize;
    while i < len {
        let normed = x[start + i] / rms * weight[i];
        let (sh, sc) = (f32::cast_from(shift[at_shift + i]), f32::cast_from(scale[at_scale + i]));
        out[start + i] = M::cast_from(normed * (1.0 + sc) + sh);
        i += units;
    }
}

/// `x` `[B, T, D]`, `weight` `[D]` (f32), `shift` and `scale` `[B, 1, D]` (one type, f32 or f16)
/// → `[B, T, D]` in the type of `shift` and `scale`.
pub fn rms_norm_modulate(
    x: CubeTensor,
    weight: CubeTensor,
    shift: CubeTensor,
    scale: CubeTensor,
    eps: f32,
) -> CubeTensor {
    let (x, weight) = (contiguous(x), contiguous(weight));
    assert_f32("rms_norm_modulate", &[&x, &weight]);
    assert_eq!(shift.dtype, scale.dtype, "rms_norm_modulate: shift and scale in one type");
    let out_type = scale.dtype;
    let [batch, tokens, dim] = tokens_shape("rms_norm_modulate", &x);
    assert_shape("rms_norm_modulate", "the gain", &weight, &[dim]);
    let (shift, shift_stride) = per_image("rms_norm_modulate", shift, batch, dim);
    let (scale, scale_stride) = per_image("rms_norm_modulate", scale, batch, dim);
    let rows = batch * tokens;
    let out = empty_typed(&x, vec![batch, tokens, dim], out_type);
    let units = units_for(dim);
    // SAFETY: `x` and `out` are row-major `[rows, dim]`, `weight` `[dim]`, `x` and `weight` f32
    // and `out` in the type of `shift` and `scale` (checked); the kernel reads and writes row
    // `row < rows` at `row·dim + i`, `i < dim`, and `shift`, `scale` at
    // `(row / tokens)·stride + i`, inside the buffers `per_image` gave.
    with_float!(out_type, "rms_norm_modulate", M => unsafe {
        rms_norm_modulate_kernel::launch_unchecked::<M>(
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
    });
    out
}
