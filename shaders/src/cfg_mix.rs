//! Classifier-free guidance, one unit per output value: `v_u + scale·(v_c − v_u)`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

#[cube(launch_unchecked)]
fn cfg_mix_kernel<F: Float>(v: &[F], out: &mut [F], len: usize, scale: f32) {
    let i = ABSOLUTE_POS;
    if i < len {
        let v_uncond = v[len + i];
        out[i] = v_uncond + (v[i] - v_uncond) * F::cast_from(scale);
    }
}

/// `v` `[2B, …]` (conditional half first, f32) → `[B, …]`.
pub fn cfg_mix(v: CubeTensor, scale: f32) -> CubeTensor {
    let v = contiguous(v);
    let shape = half_batch(v.meta.shape());
    let len: usize = shape.iter().product();
    let out = empty_like(&v, shape);
    let (cube_count, cube_dim) = elementwise_grid(&v, len);
    unsafe {
        cfg_mix_kernel::launch_unchecked::<f32>(&v.client, cube_count, cube_dim, buffer(&v), buffer(&out), len, scale);
    }
    out
}

/// `shape` with its first dimension halved.
pub fn half_batch(shape: &[usize]) -> Vec<usize> {
    let mut shape = shape.to_vec();
    shape[0] /= 2;
    shape
}
