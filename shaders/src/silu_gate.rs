//! SwiGLU's gate, one unit per output value: rows of `2·hidden` values `(x1, x2)` → rows of
//! `hidden` values `SiLU(x1)·x2`, `SiLU(a) = a / (1 + e^−a)`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

#[cube(launch_unchecked)]
fn silu_gate_kernel<F: Float>(h: &[F], out: &mut [F], len: usize, hidden: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let row = i / hidden;
        let at = row * 2 * hidden + (i - row * hidden);
        let a = h[at];
        out[i] = a / (F::new(1.0) + F::exp(-a)) * h[at + hidden];
    }
}

/// `h` `[…, 2·hidden]` (f32) → `[…, hidden]`.
pub fn silu_gate(h: CubeTensor) -> CubeTensor {
    let h = contiguous(h);
    let mut shape = h.meta.shape().to_vec();
    let last = shape.len() - 1;
    shape[last] /= 2;
    let hidden = shape[last];
    let len: usize = shape.iter().product();
    let out = empty_like(&h, shape);
    let (cube_count, cube_dim) = elementwise_grid(&h, len);
    // SAFETY: `h` and `out` are row-major with `2·len` and `len` values, and the kernel reads
    // `h` at `row·2·hidden + c (+ hidden)` and writes `out` at `i` only for `i < len`.
    unsafe {
        silu_gate_kernel::launch_unchecked::<f32>(
            &h.client,
            cube_count,
            cube_dim,
            buffer(&h),
            buffer(&out),
            len,
            hidden,
        );
    }
    out
}
