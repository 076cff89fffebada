//! adaLN-Zero's gated residual, one unit per output value: `x + gate·y` for `x`, `y` `[B, T, D]`
//! and `gate` `[B, 1, D]` (one gate per batch element and channel).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like, per_image};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // three inputs, the output, the shape, the gate's stride
fn gated_residual_kernel<F: Float>(
    x: &[F],
    gate: &[F],
    y: &[F],
    out: &mut [F],
    len: usize,
    tokens: usize,
    dim: usize,
    gate_stride: usize,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let row = i / dim;
        let g = (row / tokens) * gate_stride + (i - row * dim);
        out[i] = x[i] + gate[g] * y[i];
    }
}

/// `x`, `y` `[B, T, D]`, `gate` `[B, 1, D]` (f32) → `[B, T, D]`.
pub fn gated_residual(x: CubeTensor, gate: CubeTensor, y: CubeTensor) -> CubeTensor {
    let (x, y) = (contiguous(x), contiguous(y));
    let (gate, gate_stride) = per_image(gate);
    let shape = x.meta.shape().to_vec();
    let (tokens, dim) = (shape[1], shape[2]);
    let len: usize = shape.iter().product();
    let out = empty_like(&x, shape);
    let (cube_count, cube_dim) = elementwise_grid(&x, len);
    // SAFETY: `x`, `y` and `out` are row-major with `len` values; the kernel touches index
    // `i < len` of those and `(row / tokens)·gate_stride + c`, `c < dim`, of `gate`, inside the
    // buffer `per_image` gave.
    unsafe {
        gated_residual_kernel::launch_unchecked::<f32>(
            &x.client,
            cube_count,
            cube_dim,
            buffer(&x),
            gate,
            buffer(&y),
            buffer(&out),
            len,
            tokens,
            dim,
            gate_stride,
        );
    }
    out
}
