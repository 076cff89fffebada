//! adaLN-Zero's gated residual, one unit per output value: `x + gate·y` for `x`, `y` `[B, T, D]`
//! and `gate` `[B, 1, D]` (one gate per batch element and channel).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

#[cube(launch_unchecked)]
fn gated_residual_kernel<F: Float>(x: &[F], gate: &[F], y: &[F], out: &mut [F], len: usize, tokens: usize, dim: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let row = i / dim;
        let g = (row / tokens) * dim + (i - row * dim);
        out[i] = x[i] + gate[g] * y[i];
    }
}

/// `x`, `y` `[B, T, D]`, `gate` `[B, 1, D]` (f32) → `[B, T, D]`.
pub fn gated_residual(x: CubeTensor, gate: CubeTensor, y: CubeTensor) -> CubeTensor {
    let (x, gate, y) = (contiguous(x), contiguous(gate), contiguous(y));
    let shape = x.meta.shape().to_vec();
    let (tokens, dim) = (shape[1], shape[2]);
    let len: usize = shape.iter().product();
    let out = empty_like(&x, shape);
    let (cube_count, cube_dim) = elementwise_grid(&x, len);
    // SAFETY: `x`, `y` and `out` are row-major with `len` values and `gate` with `len / tokens`;
    // the kernel touches index `i < len` of those and `(row / tokens)·dim + c` of `gate`.
    unsafe {
        gated_residual_kernel::launch_unchecked::<f32>(
            &x.client,
            cube_count,
            cube_dim,
            buffer(&x),
            buffer(&gate),
            buffer(&y),
            buffer(&out),
            len,
            tokens,
            dim,
        );
    }
    out
}
