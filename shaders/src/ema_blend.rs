//! The EMA update of one parameter, one unit per value: `ema·decay + θ·rest`, `rest` = `1 − decay`
//! worked out in f64 by the caller (in f32, 1 − 0.9999 is off by 1.7e-4 of itself).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

#[cube(launch_unchecked)]
fn ema_blend_kernel<F: Float>(ema: &[F], theta: &[F], out: &mut [F], len: usize, decay: f32, rest: f32) {
    let i = ABSOLUTE_POS;
    if i < len {
        out[i] = ema[i] * F::cast_from(decay) + theta[i] * F::cast_from(rest);
    }
}

/// `ema`, `theta` of one shape (f32) → `ema·decay + theta·rest`.
pub fn ema_blend(ema: CubeTensor, theta: CubeTensor, decay: f32, rest: f32) -> CubeTensor {
    let (ema, theta) = (contiguous(ema), contiguous(theta));
    let shape = ema.meta.shape().to_vec();
    let len: usize = shape.iter().product();
    assert_eq!(theta.meta.shape().num_elements(), len, "ema_blend: the EMA and the parameter differ in size");
    let out = empty_like(&ema, shape);
    let (cube_count, cube_dim) = elementwise_grid(&ema, len);
    // SAFETY: `ema`, `theta` and `out` are row-major with `len` values (checked above); the
    // kernel touches index `i < len` of each.
    unsafe {
        ema_blend_kernel::launch_unchecked::<f32>(
            &ema.client,
            cube_count,
            cube_dim,
            buffer(&ema),
            buffer(&theta),
            buffer(&out),
            len,
            decay,
            rest,
        );
    }
    out
}
