//! Reductions over the units of a cube (a row's sum, maximum and RMS), shared by the kernels
//! that take one row per cube.

use cubecl::prelude::*;

/// How two partial results of a reduction combine.
#[cube]
pub trait Combine<F: Float>: 'static + Send + Sync {
    fn combine(a: F, b: F) -> F;
}

/// Partial sums add.
pub struct Sum;

/// Partial maxima take the larger.
pub struct Max;

#[cube]
impl<F: Float> Combine<F> for Sum {
    fn combine(a: F, b: F) -> F {
        a + b
    }
}

#[cube]
impl<F: Float> Combine<F> for Max {
    fn combine(a: F, b: F) -> F {
        F::max(a, b)
    }
}

/// `value` combined over the cube's units (`units` = `CUBE_DIM`, a power of two) by `C`, through
/// shared memory; every unit gets the result.
///
/// Every unit of the cube must call it (it synchronises the cube): guard the reads before it,
/// not the call.
#[cube]
pub fn cube_reduce<F: Float, C: Combine<F>>(value: F, #[comptime] units: usize) -> F {
    let mut partial = Shared::<[F]>::new_slice(units);
    let unit = UNIT_POS as usize;
    partial[unit] = value;
    sync_cube();
    let mut active = CUBE_DIM as usize / 2;
    while active > 0 {
        if unit < active {
            partial[unit] = C::combine(partial[unit], partial[unit + active]);
        }
        sync_cube();
        active /= 2;
    }
    partial[0]
}

/// The sum of `value` over the cube's units ([`cube_reduce`]).
#[cube]
pub fn cube_sum<F: Float>(value: F, #[comptime] units: usize) -> F {
    cube_reduce::<F, Sum>(value, units)
}

/// `sqrt(Σ x[start + i]² / dim + eps)` for `i < len`, the row's length `dim` (`len` is 0 for the
/// spare cubes of [`cube_count`], which must still call it: it synchronises the cube), in `F`
/// whatever `x`'s storage type `I`.
#[cube]
pub fn row_rms<I: Float, F: Float>(
    x: &[I],
    start: usize,
    len: usize,
    dim: usize,
    eps: f32,
    #[comptime] units: usize,
) -> F {
    let mut sum = F::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < len {
        let v = F::cast_from(x[start + i]);
        sum += v * v;
        i += units;
    }
    let sum = cube_sum::<F>(sum, units);
    F::sqrt(sum / F::cast_from(dim) + F::cast_from(eps))
}

/// Units per cube for rows of `len` elements: the next power of two, 32 to 256.
pub fn units_for(len: usize) -> usize {
    len.next_power_of_two().clamp(32, 256)
}

/// A cube count of `cubes` cubes, folded into two dimensions past the 65 535 per-dimension
/// limit; kernels number their cube `CUBE_POS_X + CUBE_POS_Y · CUBE_COUNT_X` and skip
/// numbers ≥ `cubes`.
pub fn cube_count(cubes: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let x = cubes.clamp(1, MAX);
    CubeCount::Static(x as u32, cubes.div_ceil(x).max(1) as u32, 1)
}

/// This cube's number under [`cube_count`].
#[cube]
pub fn cube_index() -> usize {
    CUBE_POS_X as usize + CUBE_POS_Y as usize * CUBE_COUNT_X as usize
}
