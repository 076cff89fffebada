//! The linear layers on the CPU: `x·W + b` and its gradients as direct calls to the `gemm`
//! crate (the matrix-product library under burn's Flex backend), on contiguous f32 slices.
//!
//! Through Flex's tensor ops one linear layer is a product into a zeroed buffer that is then
//! copied into an aligned one, plus a separate bias add; the zeroing, the copy and the add run on
//! the calling thread while the other cores wait, and in training the bias gradient is one more
//! pass. Here the product is written
//! once into a fresh buffer (for a layer with a bias, onto rows prefilled with it), the
//! transposed operands of the backward pass are read through strides, and the bias gradient is
//! a column sum split over threads. The zeroing and copying alone were 9 % of the CPU samples of
//! a JiT-S/4 training step on 2 cores, all of it serial (docs/cpu.md).

use super::cpu::new_rows;

/// A matrix operand: its values and the distance between consecutive rows and columns (a
/// transposed operand is its stored matrix with the two strides swapped).
#[derive(Clone, Copy)]
struct Operand<'a> {
    values: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major `[rows, cols]` matrix.
    fn rows(values: &'a [f32], cols: usize) -> Self {
        Self { values, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of a row-major `[rows, cols]` matrix.
    fn transposed(values: &'a [f32], cols: usize) -> Self {
        Self { values, row_stride: 1, col_stride: cols }
    }

    /// Checks that a `[rows, cols]` view fits in the values.
    fn check(&self, rows: usize, cols: usize) {
        let last = (rows.max(1) - 1) * self.row_stride + (cols.max(1) - 1) * self.col_stride;
        assert!(rows == 0 || cols == 0 || last < self.values.len(), "matrix operand out of bounds");
    }
}

/// `out ← a·b` (or `out ← out + a·b` with `accumulate`) for `a` `[m, k]`, `b` `[k, n]` and
/// `out` row-major `[m, n]` behind a raw pointer: written without being read otherwise. Split
/// over threads only where `may_split` (and the product is large).
///
/// # Safety
/// `out` must be valid for writes of `m·n` values (and reads, with `accumulate`).
#[allow(clippy::too_many_arguments)] // a product's dimensions, operands and two switches
unsafe fn product_into(
    out: *mut f32,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    may_split: bool,
    a: Operand,
    b: Operand,
) {
    a.check(m, k);
    b.check(k, n);
    // In the browser (wasm32 with SIMD128) products with consecutive columns, all that
    // sampling has, take the tiles that fit WebAssembly's registers.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if a.col_stride == 1 && b.col_stride == 1 {
        use super::gemm_simd128::{self, Simd128};
        // SAFETY: the operands were bounds-checked above; `out` is the caller's contract.
        return unsafe {
            gemm_simd128::product_into::<Simd128>(
                out,
                n,
                m,
                n,
                k,
                accumulate,
                a.values,
                a.row_stride,
                b.values,
                b.row_stride,
            )
        };
    }
    // Large products split over rayon's pool, small ones stay on one thread (Flex's threshold).
    #[cfg(feature = "rayon")]
    let parallelism =
        if may_split && m * n * k >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    #[cfg(not(feature = "rayon"))]
    let (parallelism, _) = (gemm::Parallelism::None, may_split);
    // SAFETY: the operands were bounds-checked above; `out` is the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            accumulate,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `out ← a·b` for `a` `[m, k]` and `b` `[k, n]` row-major (m = `a.len() / k`) into `out`
/// `[m, n]`, on the calling thread: callers that split rows over threads themselves (the FID
/// extractor's tiles of output pixels).
pub fn product_rows(out: &mut [f32], a: &[f32], k: usize, b: &[f32], n: usize) {
    let m = a.len().checked_div(k).unwrap_or(0);
    assert!(b.len() == k * n && out.len() == m * n, "product_rows: [{m}, {k}]·[{k}, {n}] into {} values", out.len());
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: `out` holds the m·n values (checked above).
    unsafe { product_into(out.as_mut_ptr(), m, n, k, false, false, Operand::rows(a, k), Operand::rows(b, n)) }
}

/// `a·b` `[m, n]` in a new buffer.
fn product(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the buffer has room for m·n values, which gemm writes without reading
    // (`accumulate` off; with k = 0 it writes zeros).
    unsafe {
        product_into(out.as_mut_ptr(), m, n, k, false, true, a, b);
        out.set_len(m * n);
    }
    out
}

/// A linear layer `x·weight + bias` for `x` `[rows, d_in]`, `weight` `[d_in, d_out]` (burn's
/// layout) and `bias` `[d_out]`: `[rows, d_out]`.
pub fn linear(x: &[f32], weight: &[f32], bias: Option<&[f32]>, d_in: usize, d_out: usize) -> Vec<f32> {
    let rows = x.len().checked_div(d_in).unwrap_or(0);
    let (a, b) = (Operand::rows(x, d_in), Operand::rows(weight, d_out));
    let Some(bias) = bias else { return product(rows, d_out, d_in, a, b) };
    assert_eq!(bias.len(), d_out, "bias length");
    // The bias rows, then the product added onto them inside gemm's kernels.
    let mut out = new_rows(rows * d_out, d_out, &|_, chunk| {
        for row in chunk.chunks_exact_mut(d_out) {
            row.copy_from_slice(bias);
        }
    });
    // SAFETY: `out` holds rows·d_out initialised values.
    unsafe { product_into(out.as_mut_ptr(), rows, d_out, d_in, true, true, a, b) };
    out
}

/// The gradients of [`linear`] from the output gradient `g` `[rows, d_out]`, each only where
/// `needed` (`[x, weight, bias]`): `dx = g·weightᵀ` `[rows, d_in]`, `dweight = xᵀ·g`
/// `[d_in, d_out]`, `dbias = Σ_rows g` `[d_out]`.
pub fn linear_backward(
    x: &[f32],
    weight: &[f32],
    g: &[f32],
    d_in: usize,
    d_out: usize,
    needed: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let rows = g.len().checked_div(d_out).unwrap_or(0);
    let dx = needed[0].then(|| product(rows, d_in, d_out, Operand::rows(g, d_out), Operand::transposed(weight, d_out)));
    let dw = needed[1].then(|| product(d_in, d_out, rows, Operand::transposed(x, d_in), Operand::rows(g, d_out)));
    let db = needed[2].then(|| column_sums(g, d_out));
    [dx, dw, db]
}

/// Column sums of a row-major matrix with `cols` columns. Chunks of rows are summed on their
/// own (in parallel with the `rayon` feature) and the chunks' sums added in row order, so the
/// result is the same on any number of threads.
pub fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut total = vec![0.0; cols];
    if cols == 0 || m.is_empty() {
        return total;
    }
    let add_rows = |acc: &mut [f32], rows: &[f32]| {
        for row in rows.chunks_exact(cols) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        }
    };
    let chunk_sum = |rows: &[f32]| {
        let mut acc = vec![0.0; cols];
        add_rows(&mut acc, rows);
        acc
    };
    // About 16 K values per chunk.
    let chunk = (1usize << 14).div_ceil(cols) * cols;
    #[cfg(feature = "rayon")]
    let parts: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        m.par_chunks(chunk).map(chunk_sum).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let parts: Vec<Vec<f32>> = m.chunks(chunk).map(chunk_sum).collect();
    for part in parts {
        add_rows(&mut total, &part);
    }
    total
}
