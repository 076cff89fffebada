//! How a kernel's rows are spread over threads: [`for_rows`] (in place), [`new_rows`] (a new
//! buffer, written once) and [`for_rows_sum`] (with per-chunk accumulators, for weight
//! gradients). With the `rayon` feature, chunks of rows go to rayon's pool, as burn's Flex
//! backend does; without it (wasm) everything runs on the calling thread.

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

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

/// A new buffer of `len` values, filled by [`for_rows`] with `kernel`. Each chunk of rows is
/// zeroed by the worker thread that then runs the kernel on it, while it is in that core's cache
/// (zeroing the whole buffer on the calling thread first took 2 % of a training step). A value a
/// kernel leaves alone stays 0: the buffer is never read uninitialised, whatever the kernel does.
pub fn new_rows(len: usize, row_len: usize, kernel: &RowKernel<f32>) -> Vec<f32> {
    // Whole rows, so that `for_rows` hands every value to the kernel.
    assert!(len == 0 || (row_len > 0 && len.is_multiple_of(row_len)), "a new buffer of whole rows");
    let mut out = Vec::with_capacity(len);
    let zeroed_values = AtomicUsize::new(0);
    for_rows(&mut out.spare_capacity_mut()[..len], row_len, &|first, rows| {
        zeroed_values.fetch_add(rows.len(), Ordering::Relaxed);
        kernel(first, zeroed(rows))
    });
    // The chunks are disjoint (`&mut` parts of one buffer): if they add up to `len`, every value
    // was zeroed. Checked, not assumed of `for_rows`.
    assert_eq!(zeroed_values.into_inner(), len, "new_rows: every value handed to a kernel");
    // SAFETY: all `len` values were initialised (zeroed, then possibly overwritten), as checked.
    unsafe { out.set_len(len) };
    out
}

/// `values` set to zero, as initialised floats.
pub fn zeroed(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every value was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
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
