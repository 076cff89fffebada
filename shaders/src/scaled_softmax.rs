//! Attention's softmax `p = softmax(scale·s)` over each row of the scores, and its backward pass
//! `ds = scale · p ⊙ (dp − Σ dp ⊙ p)`, one cube per row. burn runs the forward pass as a cast,
//! a scale, a row maximum, a subtraction, an exponential, a row sum, a division and a cast
//! back (eight kernels over a `[B, heads, T, T]` tensor) and the backward pass as five; here each
//! is one pass over the rows, with the arithmetic in f32 whatever the scores' type (as the
//! reference's autocast runs its softmax in f32).

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{Max, cube_count, cube_index, cube_reduce, cube_sum, units_for};
use crate::{buffer, contiguous, empty_f32, empty_like, with_float};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the scores, two outputs, their shape, the scale, the cube
fn scaled_softmax_kernel<F: Float>(
    scores: &[F],
    probs: &mut [f32],
    probs_typed: &mut [F],
    rows: usize,
    len: usize,
    scale: f32,
    #[comptime] units: usize,
    #[comptime] typed: bool,
) {
    let row = cube_index();
    let n = if row < rows { len } else { 0usize };
    let start = row * len;
    let mut max = f32::min_value();
    let mut i = UNIT_POS as usize;
    while i < n {
        max = f32::max(max, f32::cast_from(scores[start + i]) * scale);
        i += units;
    }
    let max = cube_reduce::<f32, Max>(max, units);
    let mut sum = 0.0f32;
    i = UNIT_POS as usize;
    while i < n {
        sum += f32::exp(f32::cast_from(scores[start + i]) * scale - max);
        i += units;
    }
    let sum = cube_sum::<f32>(sum, units);
    i = UNIT_POS as usize;
    while i < n {
        let p = f32::exp(f32::cast_from(scores[start + i]) * scale - max) / sum;
        probs[start + i] = p;
        if typed {
            probs_typed[start + i] = F::cast_from(p);
        }
        i += units;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // two inputs, the output, its shape, the scale, the cube
fn scaled_softmax_backward_kernel<F: Float>(
    probs: &[f32],
    grad: &[F],
    out: &mut [F],
    rows: usize,
    len: usize,
    scale: f32,
    #[comptime] units: usize,
) {
    let row = cube_index();
    let n = if row < rows { len } else { 0usize };
    let start = row * len;
    let mut dot = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < n {
        dot += probs[start + i] * f32::cast_from(grad[start + i]);
        i += units;
    }
    let dot = cube_sum::<f32>(dot, units);
    i = UNIT_POS as usize;
    while i < n {
        let p = probs[start + i];
        out[start + i] = F::cast_from(p * (f32::cast_from(grad[start + i]) - dot) * scale);
        i += units;
    }
}

/// The rows (all dimensions but the last) and the row length of `t`.
fn rows_of(t: &CubeTensor) -> (usize, usize) {
    let shape = t.meta.shape();
    let len = shape.to_vec().last().copied().unwrap_or(1);
    (shape.num_elements() / len.max(1), len)
}

/// `softmax(scale·scores)` over the last dimension of `scores` (f32 or f16) → the probabilities
/// in f32 (what the backward pass reads) and in the scores' type (the next product's operand;
/// the same tensor for f32 scores).
pub fn scaled_softmax(scores: CubeTensor, scale: f32) -> (CubeTensor, CubeTensor) {
    let scores = contiguous(scores);
    let shape = scores.meta.shape().to_vec();
    let (rows, len) = rows_of(&scores);
    let probs = empty_f32(&scores, shape.clone());
    let typed = scores.dtype != DType::F32;
    // Not written for f32 scores (the f32 probabilities are those): one value, not an alias of
    // `probs` (a buffer bound twice, once writable, is invalid in WebGPU).
    let probs_typed = empty_like(&scores, if typed { shape } else { vec![1] });
    let units = units_for(len);
    let (count, dim) = (cube_count(rows), CubeDim::new_1d(units as u32));
    // SAFETY: `scores` and `probs` hold rows·len values (`probs_typed` too where `typed`), and the
    // kernel touches indices `row·len + i`, `row < rows`, `i < len` only.
    with_float!(scores.dtype, "scaled_softmax", F => unsafe {
        scaled_softmax_kernel::launch_unchecked::<F>(
            &scores.client,
            count,
            dim,
            buffer(&scores),
            buffer(&probs),
            buffer(&probs_typed),
            rows,
            len,
            scale,
            units,
            typed,
        );
    });
    if typed { (probs, probs_typed) } else { (probs.clone(), probs) }
}

/// The gradient of the scaled scores from the probabilities `probs` (f32) and theirs, `grad`
/// (f32 or f16, the probabilities' shape): `scale · p ⊙ (grad − Σ grad ⊙ p)` per row, in
/// `grad`'s type.
pub fn scaled_softmax_backward(probs: CubeTensor, grad: CubeTensor, scale: f32) -> CubeTensor {
    let (probs, grad) = (contiguous(probs), contiguous(grad));
    assert_eq!(
        probs.meta.shape(),
        grad.meta.shape(),
        "scaled_softmax_backward: probabilities and gradient differ in shape"
    );
    assert_eq!(probs.dtype, DType::F32, "scaled_softmax_backward: the probabilities are f32");
    let (rows, len) = rows_of(&grad);
    let out = empty_like(&grad, grad.meta.shape().to_vec());
    let units = units_for(len);
    let (count, dim) = (cube_count(rows), CubeDim::new_1d(units as u32));
    // SAFETY: `probs`, `grad` and `out` hold rows·len values (shapes checked above), and the
    // kernel touches indices `row·len + i`, `row < rows`, `i < len` only.
    with_float!(grad.dtype, "scaled_softmax_backward", F => unsafe {
        scaled_softmax_backward_kernel::launch_unchecked::<F>(
            &grad.client,
            count,
            dim,
            buffer(&probs),
            buffer(&grad),
            buffer(&out),
            rows,
            len,
            scale,
            units,
        );
    });
    out
}
