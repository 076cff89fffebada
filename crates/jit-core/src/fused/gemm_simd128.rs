//! The matrix product for WebAssembly SIMD (the browser's CPU fallback): `out ← a·b` or
//! `out ← out + a·b` in tiles of 2 rows × 16 columns, whose sums stay in 8 vector registers.
//!
//! The tile, 8 vectors of sums plus 4 of `b` and a broadcast of `a`, leaves room in the 16 vector
//! registers that V8 gives WebAssembly on x86-64; the `gemm` crate's largest SIMD128 tile needs
//! all 16. Timed alone in Node's V8 on the model's shapes (AMD EPYC, Zen 3): `gemm` 20–25
//! GFLOP/s, 2 × 16 tiles 28–36 (docs/cpu.md). Natively the `gemm` crate stays.
//!
//! Each output value is `init + Σ_k a·b` summed in `k` order, each product rounded before its
//! addition (WebAssembly SIMD has no fused multiply-add), the same in both [`Lanes`] versions.
//! The second module, built with relaxed SIMD for browsers that have it, takes
//! `f32x4.relaxed_madd` instead: fused (one rounding) where the CPU has FMA, 1.3× the speed of
//! separate products and sums in V8 on Zen 3 (docs/cpu.md).

use core::cmp::min;

/// Rows of a tile.
const ROWS: usize = 2;
/// Vectors of 4 lanes per tile row.
const VECTORS: usize = 4;
/// Columns of a tile, and of a packed panel of `b`.
const COLS: usize = 4 * VECTORS;
/// Rows of `a` (≤ 48 · k values) that meet every panel of `b` before the next rows are read,
/// so that they stay in the core's cache.
const ROW_CHUNK: usize = 48;

/// Four f32 lanes: WebAssembly's `v128` in the browser ([`Simd128`]), a plain array elsewhere
/// ([`Portable`], which runs the same tiles in native tests).
pub trait Lanes: Copy {
    fn zero() -> Self;
    /// # Safety
    /// `p` must be valid for reading 4 values.
    unsafe fn load(p: *const f32) -> Self;
    /// One value in all four lanes.
    ///
    /// # Safety
    /// `p` must be valid for reading one value.
    unsafe fn splat(p: *const f32) -> Self;
    /// # Safety
    /// `p` must be valid for writing 4 values.
    unsafe fn store(self, p: *mut f32);
    /// `self·b + c`, the product rounded before the sum (fused in the relaxed-SIMD module, where
    /// the CPU has FMA).
    fn mul_add(self, b: Self, c: Self) -> Self;
}

/// [`Lanes`] as a plain array (natively: the tests of the tiling).
#[derive(Clone, Copy)]
pub struct Portable([f32; 4]);

impl Lanes for Portable {
    fn zero() -> Self {
        Self([0.0; 4])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
    }
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self([unsafe { *p }; 4])
    }
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self.0) }
    }
    fn mul_add(self, b: Self, c: Self) -> Self {
        Self(core::array::from_fn(|i| self.0[i] * b.0[i] + c.0[i]))
    }
}

/// [`Lanes`] as WebAssembly's 128-bit vectors.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[derive(Clone, Copy)]
pub struct Simd128(core::arch::wasm32::v128);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Lanes for Simd128 {
    #[inline(always)]
    fn zero() -> Self {
        Self(core::arch::wasm32::f32x4_splat(0.0))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's contract (wasm loads need no alignment).
        Self(unsafe { core::arch::wasm32::v128_load(p.cast()) })
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Self {
        // SAFETY: the caller's contract.
        Self(unsafe { core::arch::wasm32::v128_load32_splat(p.cast()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { core::arch::wasm32::v128_store(p.cast(), self.0) }
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        // The module built with relaxed SIMD (`relaxed-simd`, for browsers that have it; see
        // scripts/build-web.sh): one instruction, which the engine fuses where the CPU has FMA.
        // (That module only starts where the engine validates relaxed SIMD, which the worker
        // checks; the functions this is inlined into enable the feature, so it stays inline.)
        #[cfg(feature = "relaxed-simd")]
        return Self(core::arch::wasm32::f32x4_relaxed_madd(self.0, b.0, c.0));
        #[cfg(not(feature = "relaxed-simd"))]
        {
            use core::arch::wasm32::{f32x4_add, f32x4_mul};
            Self(f32x4_add(f32x4_mul(self.0, b.0), c.0))
        }
    }
}

/// `out ← a·b` (or `out ← out + a·b` with `accumulate`) for `a` `[m, k]` with rows `lda` apart,
/// `b` `[k, n]` with rows `ldb` apart (both with consecutive columns), and `out` `[m, n]` with
/// rows `ldo` apart.
///
/// # Safety
/// `a` and `b` must hold their views (`(m-1)·lda + k` and `(k-1)·ldb + n` values when not empty);
/// `out` must be valid for writes (and reads, with `accumulate`) of its view.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(all(target_arch = "wasm32", feature = "relaxed-simd"), target_feature(enable = "relaxed-simd"))]
pub unsafe fn product_into<L: Lanes>(
    out: *mut f32,
    ldo: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
) {
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i of the output view.
                unsafe { core::ptr::write_bytes(out.add(i * ldo), 0, n) };
            }
        }
        return;
    }
    // `b` in panels of 16 columns, each `[k, 16]` (zeros past column n), so that a tile reads
    // one contiguous line of 64 bytes per step.
    let mut packed = Vec::with_capacity(n.div_ceil(COLS) * k * COLS);
    for j in (0..n).step_by(COLS) {
        let width = min(COLS, n - j);
        for kk in 0..k {
            packed.extend_from_slice(&b[kk * ldb + j..][..width]);
            packed.resize(packed.len() + COLS - width, 0.0);
        }
    }
    for i0 in (0..m).step_by(ROW_CHUNK) {
        let i1 = min(i0 + ROW_CHUNK, m);
        for (p, panel) in packed.chunks_exact(k * COLS).enumerate() {
            let (j, width) = (p * COLS, min(COLS, n - p * COLS));
            for i in (i0..i1).step_by(ROWS) {
                let rows = min(ROWS, i1 - i);
                // SAFETY: rows i..i + rows and columns j..j + width are inside the views.
                unsafe {
                    let (a_rows, o) = (a.as_ptr().add(i * lda), out.add(i * ldo + j));
                    if width == COLS && rows == ROWS {
                        tile::<L, ROWS>(o, ldo, accumulate, a_rows, lda, panel, k);
                    } else {
                        edge_tile::<L>(o, ldo, rows, width, accumulate, a_rows, lda, panel, k);
                    }
                }
            }
        }
    }
}

/// One tile of `R` rows × 16 columns: `o ← init + a·panel`, `init` read from `o` with
/// `accumulate`, else zero.
///
/// # Safety
/// `o` must be valid for `R` rows of 16 values `ldo` apart; `a` for `R` rows of `k` values `lda`
/// apart; `panel` holds `k · 16` values.
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize>(
    o: *mut f32,
    ldo: usize,
    accumulate: bool,
    a: *const f32,
    lda: usize,
    panel: &[f32],
    k: usize,
) {
    debug_assert!(panel.len() >= k * COLS);
    let mut sums = [[L::zero(); VECTORS]; R];
    // SAFETY (whole body): the function's contract.
    unsafe {
        if accumulate {
            for (r, row) in sums.iter_mut().enumerate() {
                for (v, sum) in row.iter_mut().enumerate() {
                    *sum = L::load(o.add(r * ldo + 4 * v));
                }
            }
        }
        let b = panel.as_ptr();
        for kk in 0..k {
            let line: [L; VECTORS] = core::array::from_fn(|v| L::load(b.add(kk * COLS + 4 * v)));
            for (r, row) in sums.iter_mut().enumerate() {
                let x = L::splat(a.add(r * lda + kk));
                for (sum, &y) in row.iter_mut().zip(&line) {
                    *sum = x.mul_add(y, *sum);
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                sum.store(o.add(r * ldo + 4 * v));
            }
        }
    }
}

/// A tile at the bottom or right edge (`rows` ≤ 2, `width` ≤ 16): computed in a full tile on
/// the stack, of which the valid values are copied out.
///
/// # Safety
/// As [`tile`], for `rows` rows of `width` values of `o`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(all(target_arch = "wasm32", feature = "relaxed-simd"), target_feature(enable = "relaxed-simd"))]
unsafe fn edge_tile<L: Lanes>(
    o: *mut f32,
    ldo: usize,
    rows: usize,
    width: usize,
    accumulate: bool,
    a: *const f32,
    lda: usize,
    panel: &[f32],
    k: usize,
) {
    let mut full = [[0.0f32; COLS]; ROWS];
    // SAFETY (whole body): the function's contract; `full` is a whole tile.
    unsafe {
        for (r, row) in full.iter_mut().enumerate().take(rows) {
            if accumulate {
                core::ptr::copy_nonoverlapping(o.add(r * ldo), row.as_mut_ptr(), width);
            }
        }
        let t = full.as_mut_ptr().cast::<f32>();
        if rows == ROWS {
            tile::<L, ROWS>(t, COLS, true, a, lda, panel, k);
        } else {
            tile::<L, 1>(t, COLS, true, a, lda, panel, k);
        }
        for (r, row) in full.iter().enumerate().take(rows) {
            core::ptr::copy_nonoverlapping(row.as_ptr(), o.add(r * ldo), width);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    /// Every edge: rows and columns not multiples of the tile, k = 0 and 1, row strides longer
    /// than the rows, with and without accumulation, against an f64 product.
    #[test]
    fn tiles_match_an_f64_product() {
        for &(m, n, k) in &[(1, 1, 1), (2, 16, 3), (3, 17, 5), (5, 33, 64), (49, 40, 7), (97, 100, 192), (4, 8, 0)] {
            let (lda, ldb, ldo) = (k + 3, n + 5, n + 2);
            let (a, b) = (values(m * lda, 1), values(k * ldb, 2));
            for accumulate in [false, true] {
                let init = values(m * ldo, 3);
                let mut out = init.clone();
                // SAFETY: the views fit in the buffers.
                unsafe { product_into::<Portable>(out.as_mut_ptr(), ldo, m, n, k, accumulate, &a, lda, &b, ldb) };
                for i in 0..m {
                    for j in 0..ldo {
                        let got = out[i * ldo + j];
                        if j >= n {
                            assert_eq!(got, init[i * ldo + j], "padding ({i}, {j}) of {m}×{n}×{k} was written");
                            continue;
                        }
                        let start = if accumulate { init[i * ldo + j] as f64 } else { 0.0 };
                        let want = (0..k).fold(start, |s, kk| s + a[i * lda + kk] as f64 * b[kk * ldb + j] as f64);
                        assert!(
                            (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()) * (k as f64).sqrt().max(1.0),
                            "({i}, {j}) of {m}×{n}×{k}, accumulate {accumulate}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
