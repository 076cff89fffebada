//! adaLN-Zero's gated residual, one unit per output value: `x + gate·y` for `x`, `y` `[B, T, D]`
//! and `gate` `[B, 1, D]` (one gate per batch element and channel); and its backward pass, one
//! unit per (b, d) walking the tokens: `Σ_t grad·y`, written at the gate's chunk of the adaLN
//! output's gradient (zeros at the other chunks), and `dy = grad·gate`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{assert_f32, buffer, contiguous, elementwise_grid, empty_like, per_image};

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

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the inputs, both outputs, the shape and the chunks
fn gated_residual_backward_kernel<F: Float>(
    gate: &[F],
    grad: &[F],
    y: &[F],
    dmodulation: &mut [F],
    dy: &mut [F],
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
        let gate = gate[b * gate_stride + d];
        let mut sum = F::new(0.0);
        for t in 0..tokens {
            let i = (b * tokens + t) * dim + d;
            let g = grad[i];
            sum += g * y[i];
            dy[i] = g * gate;
        }
        for c in 0..chunks {
            dmodulation[(b * chunks + c) * dim + d] = if c == index { sum } else { F::new(0.0) };
        }
    }
}

/// [`gated_residual`]'s gradients from the output's `grad` `[B, T, D]`, one unit per image and
/// channel: `[B, chunks·D]`, the gradient of the adaLN output whose chunk `index` is `gate`
/// `[B, 1, D]` (`Σ_t grad·y` there, zeros at the other chunks), and `dy = grad·gate`
/// `[B, T, D]` (f32).
pub fn gated_residual_backward(
    gate: CubeTensor,
    index: usize,
    chunks: usize,
    grad: CubeTensor,
    y: CubeTensor,
) -> (CubeTensor, CubeTensor) {
    assert!(index < chunks, "gated_residual_backward: the gate is a chunk of the modulation");
    assert_f32("gated_residual_backward", &[&gate, &grad, &y]);
    let (grad, y) = (contiguous(grad), contiguous(y));
    let (gate, gate_stride) = per_image(gate);
    let shape = grad.meta.shape().to_vec();
    assert_eq!(y.meta.shape().to_vec(), shape, "gated_residual_backward: grad and y are [B, T, D]");
    let (batch, tokens, dim) = (shape[0], shape[1], shape[2]);
    let dmodulation = empty_like(&grad, vec![batch, chunks * dim]);
    let dy = empty_like(&grad, shape);
    let (count, cube_dim) = elementwise_grid(&grad, batch * dim);
    // SAFETY: `grad`, `y` and `dy` are row-major `[B, T, D]`; one unit per (b, d) < batch·dim
    // (checked in the kernel) reads `gate` at b·gate_stride + d (inside the buffer `per_image`
    // gave), reads and writes their rows b·T..(b+1)·T at column d, and writes `dmodulation` at
    // (b, c·dim + d) for c < chunks, inside its `[B, chunks·D]`.
    unsafe {
        gated_residual_backward_kernel::launch_unchecked::<f32>(
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
    }
    (dmodulation, dy)
}
