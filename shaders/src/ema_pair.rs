//! Both EMA updates of one parameter in one pass, one unit per value:
//! `(ema1·decay1 + θ·rest1, ema2·decay2 + θ·rest2)`, each `rest` = `1 − decay` worked out in f64
//! by the caller (in f32, 1 − 0.9999 is off by 1.7e-4 of itself).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // three inputs, two outputs, their length, four factors
fn ema_pair_kernel<F: Float>(
    ema1: &[F],
    ema2: &[F],
    theta: &[F],
    out1: &mut [F],
    out2: &mut [F],
    len: usize,
    decay1: f32,
    rest1: f32,
    decay2: f32,
    rest2: f32,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let t = theta[i];
        out1[i] = ema1[i] * F::cast_from(decay1) + t * F::cast_from(rest1);
        out2[i] = ema2[i] * F::cast_from(decay2) + t * F::cast_from(rest2);
    }
}

/// `ema1`, `ema2`, `theta` of one size (f32) → `(ema1·decay1 + theta·rest1, ema2·decay2 +
/// theta·rest2)`, `factors` = `[decay1, rest1, decay2, rest2]`.
pub fn ema_pair(ema1: CubeTensor, ema2: CubeTensor, theta: CubeTensor, factors: [f32; 4]) -> (CubeTensor, CubeTensor) {
    let (ema1, ema2, theta) = (contiguous(ema1), contiguous(ema2), contiguous(theta));
    let shape = ema1.meta.shape().to_vec();
    let len: usize = shape.iter().product();
    for other in [&ema2, &theta] {
        assert_eq!(other.meta.shape().num_elements(), len, "ema_pair: the EMAs and the parameter differ in size");
    }
    let out1 = empty_like(&ema1, shape.clone());
    let out2 = empty_like(&ema2, shape);
    let (cube_count, cube_dim) = elementwise_grid(&ema1, len);
    let [decay1, rest1, decay2, rest2] = factors;
    // SAFETY: `ema1`, `ema2`, `theta`, `out1` and `out2` are row-major with `len` values
    // (checked above); the kernel touches index `i < len` of each.
    unsafe {
        ema_pair_kernel::launch_unchecked::<f32>(
            &ema1.client,
            cube_count,
            cube_dim,
            buffer(&ema1),
            buffer(&ema2),
            buffer(&theta),
            buffer(&out1),
            buffer(&out2),
            len,
            decay1,
            rest1,
            decay2,
            rest2,
        );
    }
    (out1, out2)
}
