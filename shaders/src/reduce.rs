//! The one reduction the kernels share: a row's RMS, `sqrt(mean(x²) + eps)`, by all units of a
//! cube.

use cubecl::prelude::*;

/// The sum of `value` over the cube's units (`units` = `CUBE_DIM`, a power of two), through
/// shared memory; every unit gets it.
///
/// Every unit of the cube must call it (it synchronises the cube): guard the reads before it,
/// not the call.
#[cube]
pub fn cube_sum<F: Float>(value: F, #[comptime] units: usize) -> F {
    let mut partial = Shared::<[F]>::new_slice(units);
    let unit = UNIT_POS as usize;
    partial[unit] = value;
    sync_cube();
    let mut active = CUBE_DIM as usize / 2;
    while active > 0 {
        if unit < active {
            partial[unit] = partial[unit] + partial[unit + active];
        }
        sync_cube();
        active /= 2;
    }
    partial[0]
}

/// `sqrt(Σ x[start + i]² / dim + eps)` for `i < len`, the row's length `dim` (`len` is 0 for the
/// spare cubes of [`cube_count`], which must still call it: it synchronises the cube).
#[cube]
pub fn row_rms<F: Float>(x: &[F], start: usize, len: usize, dim: usize, eps: f32, #[comptime] units: usize) -> F {
    let mut sum = F::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < len {
        let v = x[start + i];
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
