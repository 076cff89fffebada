//! The RMS of each row, `sqrt(mean(x²) + eps)`, one cube per row: what the backward kernels of
//! the RMSNorm chains read instead of recomputing it for every column. Rows of f32 or f16, the
//! RMS in f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, row_rms, units_for};
use crate::{buffer, contiguous, empty_f32, with_float};

#[cube(launch_unchecked)]
fn rms_rows_kernel<I: Float, F: Float>(
    x: &[I],
    out: &mut [F],
    rows: usize,
    dim: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    let row = cube_index();
    let len = if row < rows { dim } else { 0usize };
    let rms = row_rms::<I, F>(x, row * dim, len, dim, eps, units);
    if row < rows && UNIT_POS == 0 {
        out[row] = rms;
    }
}

/// `x` (f32 or f16) viewed as rows of `dim` values → `[rows]` (f32).
pub fn rms_rows(x: CubeTensor, dim: usize, eps: f32) -> CubeTensor {
    let x = contiguous(x);
    let rows = x.meta.shape().num_elements() / dim.max(1);
    let out = empty_f32(&x, vec![rows]);
    let units = units_for(dim);
    // SAFETY: `x` holds rows·dim values and `out` rows; every index is below those bounds.
    with_float!(x.dtype, "rms_rows", I => unsafe {
        rms_rows_kernel::launch_unchecked::<I, f32>(
            &x.client,
            cube_count(rows),
            CubeDim::new_1d(units as u32),
            buffer(&x),
            buffer(&out),
            rows,
            dim,
            eps,
            units,
        );
    });
    out
}
