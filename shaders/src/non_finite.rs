//! How many values of many tensors are NaN or ±∞, over all of them in one or a few launches
//! (multi-tensor, as PyTorch's `_amp_foreach_non_finite_check_and_unscale_`): the check of f16
//! loss scaling, before the AdamW step. Each cube takes [`CHUNK`] consecutive values of one
//! tensor (cubes numbered tensor by tensor, `first_cube`), each unit every `units`-th of them,
//! and writes its count to its slot of `partial`; the caller sums `partial`.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, cube_sum};
use crate::{buffer, contiguous, empty_f32};

/// Units of a cube.
const UNITS: usize = 256;
/// Values each unit checks.
const PER_UNIT: usize = 16;
/// Values of one cube.
const CHUNK: usize = UNITS * PER_UNIT;

#[cube(launch_unchecked)]
fn non_finite_kernel(
    values: &Sequence<Box<[f32]>>,
    first_cube: &Sequence<usize>,
    lens: &Sequence<usize>,
    partial: &mut [f32],
    offset: usize,
    #[comptime] units: usize,
    #[comptime] per_unit: usize,
) {
    let c = cube_index();
    let count = comptime!(values.len());
    let mut bad = 0.0f32;
    #[unroll]
    for k in 0..count {
        if c >= first_cube[k] && c < first_cube[k + 1] {
            let start = (c - first_cube[k]) * units * per_unit + UNIT_POS as usize;
            for j in 0..per_unit {
                let i = start + j * units;
                if i < lens[k] {
                    let v = values.index(k)[i];
                    if f32::is_nan(v) || f32::is_inf(v) {
                        bad += 1.0;
                    }
                }
            }
        }
    }
    // Every unit of every cube reaches the cube's reduction (its barriers).
    let total = cube_sum::<f32>(bad, units);
    if UNIT_POS == 0 && c < first_cube[count] {
        partial[offset + c] = total;
    }
}

/// Upper bound on the tensors of one launch, whatever the adapter allows: the kernel is unrolled
/// over them.
const MAX_PER_LAUNCH: usize = 64;

/// `[cubes]` f32: counts of the NaN and ±∞ values of `values` (f32, any shapes; at least one
/// value in all), whose sum is the count over all of them. Tensors go in launches of as
/// many as the adapter's storage bindings allow (two of them `partial` and the layout).
pub fn non_finite(values: Vec<CubeTensor>) -> CubeTensor {
    let values: Vec<CubeTensor> = values.into_iter().map(contiguous).collect();
    let first = values.first().expect("non_finite: at least one tensor");
    crate::assert_f32("non_finite", &values.iter().collect::<Vec<_>>());
    let bindings = first.client.properties().hardware.max_bindings as usize;
    let per_launch = bindings.saturating_sub(2).clamp(1, MAX_PER_LAUNCH);
    let chunks = |t: &CubeTensor| t.meta.shape().num_elements().div_ceil(CHUNK);
    let total: usize = values.iter().map(chunks).sum();
    assert!(total > 0, "non_finite: at least one value");
    let partial = empty_f32(first, vec![total]);
    let mut offset = 0;
    for group in values.chunks(per_launch) {
        let mut first_cube = vec![0usize];
        for t in group {
            first_cube.push(first_cube.last().copied().unwrap_or(0) + chunks(t));
        }
        let cubes = *first_cube.last().unwrap_or(&0);
        let lens: Vec<usize> = group.iter().map(|t| t.meta.shape().num_elements()).collect();
        // SAFETY: each tensor is row-major with `lens[k]` f32 values (`contiguous`, checked); cube
        // `c < cubes` reads value `i < lens[k]` of its tensor k only and writes
        // `partial[offset + c]`, inside its `total` values (`offset + cubes ≤ total`); spare
        // cubes of `cube_count` write nothing.
        unsafe {
            non_finite_kernel::launch_unchecked(
                &first.client,
                cube_count(cubes),
                CubeDim::new_1d(UNITS as u32),
                group.iter().map(buffer).collect::<SequenceArg<Box<[f32]>>>(),
                first_cube.into_iter().collect(),
                lens.into_iter().collect(),
                buffer(&partial),
                offset,
                UNITS,
                PER_UNIT,
            );
        }
        offset += cubes;
    }
    partial
}
