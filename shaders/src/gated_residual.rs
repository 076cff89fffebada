//! adaLN-Zero's gated residual, one unit per output value: `x + gate·y` for `x`, `y` `[B, T, D]`
//! and `gate` `[B, 1, D]` (one gate per batch element and channel); and its backward pass, one
//! unit per (b, d) walking the tokens: `Σ_t grad·y`, written at the gate's chunk of the adaLN
//! output's gradient (zeros at the other chunks), and `dy = grad·gate`. `x`, `y` and the output
//! are f32; the gate and the adaLN output's gradient are in the adaLN output's type, f32 or f16;
//! the arithmetic is f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{
    assert_f32, assert_shape, buffer, contiguous, elementwise_grid, empty_like, empty_typed, per_image, tokens_shape,
    with_float,
};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // three inputs, the output, the shape, the gate's stride
fn gated_residual_kernel<M: Float>(
    x: &[f32],
    gate: &[M],
    y: &[f32],
    out: &mut [f32],
    len: usize,
    tokens: usize,
    dim: usize,
    gate_stride: usize,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let row = i / dim;
        let g = (row / tokens) * gate_stride + (i - row * dim);
        out[i] = x[i] + f32::cast_from(gate[g]) * y[i];
    }
}

/// `x`, `y` `[B, T, D]` (f32), `gate` `[B, 1, D]` (f32 or f16) → `[B, T, D]` (f32).
pub fn gated_residual(x: CubeTensor, gate: CubeTensor, y: CubeTensor) -> CubeTensor {
    let (x, y) = (contiguous(x), contiguous(y));
    assert_f32("gated_residual", &[&x, &y]);
    let shape = tokens_shape("gated_residual", &x);
    let [batch, tokens, dim] = shape;
    assert_shape("gated_residual", "y", &y, &shape);
    let typed = gate.dtype;
    let (gate, gate_stride) = per_image("gated_residual", gate, batch, dim);
    let len: usize = shape.iter().product();
    let out = empty_like(&x, shape.to_vec());
    let (cube_count, cube_dim) = elementwise_grid(&x, len);
    // SAFETY: `x`, `y` and `out` are row-major with `len` values; the kernel touches index
    // `i < len` of those and `(row / tokens)·gate_stride + c`, `c < dim`, of `gate`, inside the
    // buffer `per_image` gave; `x`, `y` and `out` f32 (checked), `gate` of the kernel's type.
    with_float!(typed, "gated_residual", M => unsafe {
        gated_residual_kernel::launch_unchecked::<M>(
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
    });
    out
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the inputs, both outputs, the shape and the chunks
fn gated_residual_backward_kernel<M: Float>(
    gate: &[M],
    grad: &[f32],
    y: &[f32],
    dmodulation: &mut [M],
    dy: &mut [f32],
    batch: usize,
    tokens: usize,
    dim: usize,
    gate_stride: usize,
    index: usize,
    chunks: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < batch * dim {
        let (b, d) = (unit / dim, unit % dim);
        let gate = f32::cast_from(gate[b * gate_stride + d]);
        let mut sum = 0.0f32;
        for t in 0..tokens {
            let i = (b * tokens + t) * dim + d;
            let g = grad[i];
            sum += g * y[i];
            dy[i] = g * gate;
        }
        for c in 0..chunks {
            dmodulation[(b * chunks + c) * dim + d] = M::cast_from(if c == index { sum } else { 0.0f32 });
        }
    }
}

/// [`gated_residual`]'s gradients from the output's `grad` `[B, T, D]`, one unit per image and
/// channel: `[B, chunks·D]`, the gradient of the adaLN output whose chunk `index` is `gate`
/// `[B, 1, D]` (`Σ_t grad·y` there, zeros at the other chunks), in the gate's type (f32 or f16),
/// and `dy = grad·gate` `[B, T, D]` (f32, as `grad` and `y`).
pub fn gated_residual_backward(
    gate: CubeTensor,
    index: usize,
    chunks: usize,
    grad: CubeTensor,
    y: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    assert!(index < chunks, "gated_residual_backward: the gate is a chunk of the modulation");
    assert_f32("gated_residual_backward", &[&grad, &y]);
    let (grad, y) = (contiguous(grad), contiguous(y));
    let shape = tokens_shape("gated_residual_backward", &grad);
    let [batch, tokens, dim] = shape;
    assert_shape("gated_residual_backward", "y", &y, &shape);
    let typed = gate.dtype;
    let (gate, gate_stride) = per_image("gated_residual_backward", gate, batch, dim);
    let dmodulation = empty_typed(&grad, vec![batch, chunks * dim], typed);
    let dy = empty_like(&grad, shape.to_vec());
    let (count, cube_dim) = elementwise_grid(&grad, batch * dim);
    // SAFETY: `grad`, `y` and `dy` are row-major `[B, T, D]`; one unit per (b, d) < batch·dim
    // (checked in the kernel) reads `gate` at b·gate_stride + d (inside the buffer `per_image`
    // gave), reads and writes their rows b·T..(b+1)·T at column d, and writes `dmodulation` at
    // (b, c·dim + d) for c < chunks, inside its `[B, chunks·D]`; `grad`, `y`, `dy` f32 (checked),
    // `gate` and `dmodulation` of the kernel's type.
    with_float!(typed, "gated_residual_backward", M => unsafe {
        gated_residual_backward_kernel::launch_unchecked::<M>(
            &grad.client,
            count,
            cube_dim,
            gate,
            buffer(&grad),
            buffer(&y),
            buffer(&dmodulation),
            buffer(&dy),
            batch,
            tokens,
            dim,
            gate_stride,
            index,
            chunks,
        );
    });
    (dmodulation, dy)
}
