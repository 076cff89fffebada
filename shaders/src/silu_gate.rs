//! SwiGLU's gate and its gradient, one unit per gated value: rows of `2·hidden` values
//! `(x1, x2)` → rows of `hidden` values `SiLU(x1)·x2`, `SiLU(a) = a / (1 + e^−a)`. Storage f32
//! or f16 (the mixed-precision products' type: the `w12` product's output and the `w3`
//! product's input, no casts around the kernels), arithmetic f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like, with_float};

/// Where gated value `i` (row-major `[rows, hidden]`) finds its `x1` in `h` `[rows, 2·hidden]`
/// (its `x2` lies `hidden` further on).
#[cube]
fn x1_at(i: usize, hidden: usize) -> usize {
    let row = i / hidden;
    row * 2 * hidden + (i - row * hidden)
}

/// `σ(a) = 1 / (1 + e^−a)`.
#[cube]
fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + f32::exp(-a))
}

#[cube(launch_unchecked)]
fn silu_gate_kernel<F: Float>(h: &[F], out: &mut [F], len: usize, hidden: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let at = x1_at(i, hidden);
        let a = f32::cast_from(h[at]);
        out[i] = F::cast_from(a * sigmoid(a) * f32::cast_from(h[at + hidden]));
    }
}

/// `dh = (g·x2·SiLU'(x1), g·SiLU(x1))`, `SiLU'(a) = σ(a)·(1 + a·(1 − σ(a)))`.
#[cube(launch_unchecked)]
fn silu_gate_backward_kernel<F: Float>(h: &[F], grad: &[F], dh: &mut [F], len: usize, hidden: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let at = x1_at(i, hidden);
        let (a, b, g) = (f32::cast_from(h[at]), f32::cast_from(h[at + hidden]), f32::cast_from(grad[i]));
        let s = sigmoid(a);
        dh[at] = F::cast_from(g * b * s * (1.0 + a * (1.0 - s)));
        dh[at + hidden] = F::cast_from(g * a * s);
    }
}

/// `h`'s shape `[…, 2·hidden]` with its last dimension halved (checked to be even).
fn half_shape(h: &CubeTensor, op: &str) -> Vec<usize> {
    let mut shape = h.meta.shape().to_vec();
    let last = shape.last_mut().filter(|w| w.is_multiple_of(2));
    *last.unwrap_or_else(|| panic!("{op}: h's last dimension is even, [.., 2·hidden]")) /= 2;
    shape
}

/// `h` `[…, 2·hidden]` (f32 or f16) → `[…, hidden]` in its type.
pub fn silu_gate(h: CubeTensor) -> CubeTensor {
    let h = contiguous(h);
    let shape = half_shape(&h, "silu_gate");
    let hidden = shape[shape.len() - 1];
    let len: usize = shape.iter().product();
    let out = empty_like(&h, shape);
    let (cube_count, cube_dim) = elementwise_grid(&h, len);
    // SAFETY: `h` and `out` are row-major in one type (`out` made like `h`) with `2·len` and
    // `len` values, and the kernel reads `h` at `row·2·hidden + c (+ hidden)` and writes `out`
    // at `i` only for `i < len`.
    with_float!(h.dtype, "silu_gate", F => unsafe {
        silu_gate_kernel::launch_unchecked::<F>(&h.client, cube_count, cube_dim, buffer(&h), buffer(&out), len, hidden);
    });
    out
}

/// [`silu_gate`]'s gradient: `h` `[…, 2·hidden]` and the output's gradient `grad`
/// `[…, hidden]`, one type (f32 or f16) → `dh` `[…, 2·hidden]` in it.
pub fn silu_gate_backward(h: CubeTensor, grad: CubeTensor) -> CubeTensor {
    let (h, grad) = (contiguous(h), contiguous(grad));
    let half = half_shape(&h, "silu_gate_backward");
    assert!(
        grad.dtype == h.dtype && grad.meta.shape().to_vec() == half,
        "silu_gate_backward: the gradient has h's type and shape [.., hidden]"
    );
    let (hidden, len) = (half[half.len() - 1], grad.meta.shape().num_elements());
    let dh = empty_like(&h, h.meta.shape().to_vec());
    let (cube_count, cube_dim) = elementwise_grid(&h, len);
    // SAFETY: `h` and `dh` are row-major with `2·len` values and `grad` with `len`, one type
    // (checked); the kernel reads `grad` at `i`, and `h` and writes `dh` at `row·2·hidden + c`
    // and `hidden` further, only for `i < len`: each value of `dh` exactly once.
    with_float!(h.dtype, "silu_gate_backward", F => unsafe {
        silu_gate_backward_kernel::launch_unchecked::<F>(
            &h.client,
            cube_count,
            cube_dim,
            buffer(&h),
            buffer(&grad),
            buffer(&dh),
            len,
            hidden,
        );
    });
    dh
}
