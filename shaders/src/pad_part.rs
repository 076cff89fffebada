//! The gradient of a part of a tensor: `grad` placed at part `index` of `parts` equal parts along
//! one dimension, zeros elsewhere, in one pass (burn's slice backward fills zeros, then assigns
//! the slice: two launches). One unit per output value.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like, with_float};

#[cube(launch_unchecked)]
fn pad_part_kernel<F: Float>(grad: &[F], out: &mut [F], len: usize, part_len: usize, parts: usize, index: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        // Row-major, the output is [outer, parts, part_len] and `grad` [outer, part_len].
        let outer = i / (parts * part_len);
        let rest = i - outer * parts * part_len;
        let part = rest / part_len;
        let mut value = F::new(0.0);
        if part == index {
            value = grad[outer * part_len + rest - part * part_len];
        }
        out[i] = value;
    }
}

/// `grad` (f32 or f16) placed at part `index` of `parts` along dimension `dim`, zeros elsewhere: the
/// shape of `grad` with `parts` times its size along `dim`.
pub fn pad_part(grad: CubeTensor, dim: usize, index: usize, parts: usize) -> CubeTensor {
    let grad = contiguous(grad);
    let mut shape = grad.meta.shape().to_vec();
    assert!(dim < shape.len() && index < parts, "pad_part: part {index} of {parts} along dimension {dim} of {shape:?}");
    let part_len: usize = shape[dim..].iter().product();
    shape[dim] *= parts;
    let len: usize = shape.iter().product();
    let out = empty_like(&grad, shape);
    let (cube_count, cube_dim) = elementwise_grid(&grad, len);
    // SAFETY: `out` is row-major with `len` = outer·parts·part_len values and `grad` with
    // outer·part_len; the kernel writes index `i < len` of `out` and reads `grad` at
    // `outer·part_len + j`, `j < part_len`.
    with_float!(grad.dtype, "pad_part", F => unsafe {
        pad_part_kernel::launch_unchecked::<F>(
            &grad.client,
            cube_count,
            cube_dim,
            buffer(&grad),
            buffer(&out),
            len,
            part_len,
            parts,
            index,
        );
    });
    out
}
