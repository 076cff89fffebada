//! How a kernel's rows are spread over threads: [`for_rows`] (in place), [`new_rows`] (a new
//! buffer, written once) and [`for_rows_sum`] (with per-chunk accumulators, for weight
//! gradients). With the `rayon` feature, chunks of rows go to rayon's pool, as burn's Flex
//! backend does; without it (wasm) everything runs on the calling thread.

use core::mem::MaybeUninit;

/// Elements below which a kernel stays on one thread (splitting costs more than it gains).
const PARALLEL_MIN: usize = 1 << 15;

/// A kernel over a chunk of rows: `(first_row, rows)`.
pub type RowKernel<'a, T = f32> = dyn Fn(usize, &mut [T]) + Sync + 'a;

/// A kernel over a chunk of rows that also adds into an accumulator: `(first_row, rows, acc)`.
pub type RowSumKernel<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `kernel(first_row, rows)` over `out`, a whole number of rows of `row_len` values, split
/// into chunks of rows across threads where that pays.
pub fn for_rows<T: Send>(out: &mut [T], row_len: usize, kernel: &RowKernel<T>) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    #[cfg(feature = "rayon")]
    if out.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        let rows_per_task = (PARALLEL_MIN / 4).div_ceil(row_len).max(1);
        out.par_chunks_mut(rows_per_task * row_len).enumerate().for_each(|(i, rows)| kernel(i * rows_per_task, rows));
        return;
    }
    let _ = PARALLEL_MIN;
    kernel(0, out)
}

/// A new buffer of `len` values, filled by [`for_rows`] with `kernel`, which must write every
/// one of them. Each value is written once, by the worker thread that computes it: no zeroing
/// first (zeroing on the calling thread took 2 % of a training step, and on the workers it was
/// still a pass over memory).
pub fn new_rows(len: usize, row_len: usize, kernel: &RowKernel<MaybeUninit<f32>>) -> Vec<f32> {
    // Whole rows, so that `for_rows` hands every value to the kernel.
    assert!(len == 0 || (row_len > 0 && len.is_multiple_of(row_len)), "a new buffer of whole rows");
    let mut out = Vec::with_capacity(len);
    for_rows(&mut out.spare_capacity_mut()[..len], row_len, kernel);
    // SAFETY: the kernels write all `len` values (the contract above).
    unsafe { out.set_len(len) };
    out
}

/// [`for_rows`] for kernels that also accumulate `acc_len` sums (weight gradients): each chunk
/// of rows adds into its own zeroed accumulator, and the chunks' sums are added in row order,
/// so the result does not depend on the thread count's timing.
pub fn for_rows_sum(out: &mut [f32], row_len: usize, acc_len: usize, kernel: &RowSumKernel) -> Vec<f32> {
    let mut total = vec![0.0; acc_len];
    if row_len == 0 || out.is_empty() {
        return total;
    }
    #[cfg(feature = "rayon")]
    if out.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        let rows_per_task = (PARALLEL_MIN / 4).div_ceil(row_len).max(1);
        let parts: Vec<Vec<f32>> = out
            .par_chunks_mut(rows_per_task * row_len)
            .enumerate()
            .map(|(i, rows)| {
                let mut acc = vec![0.0; acc_len];
                kernel(i * rows_per_task, rows, &mut acc);
                acc
            })
            .collect();
        for part in parts {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
        return total;
    }
    kernel(0, out, &mut total);
    total
}
