//! The register blocks and the softmax of [`super::attention`], and the qk-norm + RoPE rows
//! that feed it, written with AVX-512 intrinsics, for the kernel versions that `multiversion!`
//! compiles for AVX-512.
//!
//! The portable blocks have four chains of additions, half of what this CPU's two FMA units
//! need to stay busy (4 cycles latency each); with more, LLVM spilled their plain-array
//! accumulators to memory (docs/cpu.md). Here the accumulators are arrays of `__m512` indexed
//! by constants, which stay in the 32 vector registers: eight chains in [`scores`], and eight
//! or more in [`combine`].
//!
//! Each function takes an [`Avx512`] token, the proof that the CPU has AVX-512, so they are safe
//! to call; every slice access is checked before the pointer loops.

// The loops index several register arrays by the same constant; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mul_ps, _mm512_permute_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::isa::Avx512;
use super::math::{Lanes, exp};

/// Lanes of one register.
const LANES: usize = 16;

/// Rows of a block (the caller's `QUERY_ROWS`).
pub const ROWS: usize = 4;

/// `s[r·padded + j] = Σ_c a[(i0 + r)·HD + c]·b_t[c·padded + j]` for [`ROWS`] rows and all
/// `padded` columns (a multiple of 16): two blocks of 16 columns at a time (eight chains), then
/// one.
#[inline(always)]
pub fn scores<const HD: usize>(_: Avx512, s: &mut [f32], a: &[f32], i0: usize, b_t: &[f32], padded: usize) {
    assert!(
        padded.is_multiple_of(LANES)
            && s.len() >= ROWS * padded
            && b_t.len() >= HD * padded
            && a.len() >= (i0 + ROWS) * HD
    );
    let a = a[i0 * HD..].as_ptr();
    let (b_t, s) = (b_t.as_ptr(), s.as_mut_ptr());
    let mut jb = 0;
    // SAFETY (both loops): the assert above bounds every offset; the token proves the CPU has
    // AVX-512F.
    unsafe {
        while jb + 2 * LANES <= padded {
            let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
            for c in 0..HD {
                let b = [_mm512_loadu_ps(b_t.add(c * padded + jb)), _mm512_loadu_ps(b_t.add(c * padded + jb + LANES))];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * HD + c));
                    acc[0] = _mm512_fmadd_ps(x, b[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b[1], acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(s.add(r * padded + jb), acc[0]);
                _mm512_storeu_ps(s.add(r * padded + jb + LANES), acc[1]);
            }
            jb += 2 * LANES;
        }
        if jb < padded {
            let mut acc = [_mm512_setzero_ps(); ROWS];
            for c in 0..HD {
                let b = _mm512_loadu_ps(b_t.add(c * padded + jb));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * HD + c)), b, *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(s.add(r * padded + jb), *acc);
            }
        }
    }
}

/// `o[r] = Σ_j coef[r·rs + j·cs]·rows[j]` for `R` output rows, `rows` `[n, HD]` (`HD` 16, 32
/// or 64). At width 16 (one register per row) even and odd `j` go to two sets of accumulators,
/// so there are always at least eight chains.
#[inline(always)]
pub fn combine<const HD: usize, const R: usize>(
    _: Avx512,
    coef: &[f32],
    rs: usize,
    cs: usize,
    rows: &[f32],
) -> [[f32; HD]; R] {
    const { assert!(HD.is_multiple_of(LANES) && HD <= 4 * LANES) };
    let v = HD / LANES;
    let sets = if v == 1 { 2 } else { 1 };
    let n = rows.len() / HD;
    if n > 0 {
        assert!(R > 0 && (R - 1) * rs + (n - 1) * cs < coef.len());
    }
    let (coef, rows) = (coef.as_ptr(), rows.as_ptr());
    let mut o = [[0.0f32; HD]; R];
    // SAFETY: `j < n` keeps `rows` reads in bounds, the assert above the `coef` reads, `o` has
    // `R × HD` values; the token proves the CPU has AVX-512F.
    unsafe {
        let mut acc: [[[__m512; 4]; R]; 2] = [[[_mm512_setzero_ps(); 4]; R]; 2];
        let mut j = 0;
        while j + sets <= n {
            for (set, acc) in acc.iter_mut().enumerate().take(sets) {
                let row = rows.add((j + set) * HD);
                let mut x = [_mm512_setzero_ps(); 4];
                for (i, x) in x.iter_mut().enumerate().take(v) {
                    *x = _mm512_loadu_ps(row.add(i * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*coef.add(r * rs + (j + set) * cs));
                    for i in 0..v {
                        acc[i] = _mm512_fmadd_ps(p, x[i], acc[i]);
                    }
                }
            }
            j += sets;
        }
        if j < n {
            let row = rows.add(j * HD);
            for (r, acc) in acc[0].iter_mut().enumerate() {
                let p = _mm512_set1_ps(*coef.add(r * rs + j * cs));
                for i in 0..v {
                    acc[i] = _mm512_fmadd_ps(p, _mm512_loadu_ps(row.add(i * LANES)), acc[i]);
                }
            }
        }
        for (r, o) in o.iter_mut().enumerate() {
            for i in 0..v {
                let sum = if sets == 2 { _mm512_add_ps(acc[0][r][i], acc[1][r][i]) } else { acc[0][r][i] };
                _mm512_storeu_ps(o.as_mut_ptr().add(i * LANES), sum);
            }
        }
    }
    o
}

/// 16 lanes for [`exp`]; only an [`Avx512`] token makes one.
#[derive(Clone, Copy)]
struct F32x16(__m512, Avx512);

// SAFETY (every method): register-only arithmetic; the token in each value proves the CPU has
// AVX-512F.
impl Lanes for F32x16 {
    #[inline(always)]
    fn splat(self, v: f32) -> Self {
        F32x16(unsafe { _mm512_set1_ps(v) }, self.1)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        F32x16(unsafe { _mm512_add_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        F32x16(unsafe { core::arch::x86_64::_mm512_sub_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        F32x16(unsafe { _mm512_mul_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        use core::arch::x86_64::{_mm512_max_ps, _mm512_min_ps};
        F32x16(unsafe { _mm512_min_ps(_mm512_max_ps(self.0, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)) }, self.1)
    }
    #[inline(always)]
    fn pow2_of_shifted(self, round: Self) -> Self {
        use core::arch::x86_64::*;
        let pow2 = unsafe {
            let bits = _mm512_add_epi32(
                _mm512_sub_epi32(_mm512_castps_si512(self.0), _mm512_castps_si512(round.0)),
                _mm512_set1_epi32(127),
            );
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits))
        };
        F32x16(pow2, self.1)
    }
}

/// In place: `softmax(scale·x)` over the first `tokens` values of each of [`ROWS`] rows of
/// `padded` values in `s` (the rest of each row is left undefined).
#[inline(always)]
pub fn softmax(isa: Avx512, s: &mut [f32], padded: usize, tokens: usize, scale: f32) {
    use core::arch::x86_64::*;
    assert!(padded.is_multiple_of(LANES) && tokens <= padded && tokens > 0 && s.len() >= ROWS * padded);
    let blocks = padded / LANES;
    // Lanes of the last block that hold scores.
    let last: __mmask16 = if tokens.is_multiple_of(LANES) { !0 } else { (1 << (tokens % LANES)) - 1 };
    let used = tokens.div_ceil(LANES);
    // SAFETY: `r·padded + b·16 + 16 ≤ ROWS·padded` for `b < blocks`; the token proves the CPU
    // has AVX-512F.
    // The rows go through each pass together: four independent chains of dependent steps.
    unsafe {
        let base = s.as_mut_ptr();
        let row = |r: usize, b: usize| base.add(r * padded + b * LANES);
        let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); ROWS];
        for b in 0..used {
            let mask = if b + 1 == used { last } else { !0 };
            for (r, max) in max.iter_mut().enumerate() {
                *max = _mm512_mask_max_ps(*max, mask, *max, _mm512_loadu_ps(row(r, b)));
            }
        }
        // Loops, not closures: closures do not inherit the caller's target features, and
        // intrinsics that cannot be inlined become calls (a closure in a row kernel made
        // sampling 3× slower).
        for m in &mut max {
            *m = _mm512_set1_ps(_mm512_reduce_max_ps(*m));
        }
        let scale = _mm512_set1_ps(scale);
        let mut sum = [_mm512_setzero_ps(); ROWS];
        for b in 0..used {
            let mask = if b + 1 == used { last } else { !0 };
            for r in 0..ROWS {
                let e = exp(F32x16(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row(r, b)), max[r]), scale), isa)).0;
                _mm512_storeu_ps(row(r, b), e);
                sum[r] = _mm512_mask_add_ps(sum[r], mask, sum[r], e);
            }
        }
        let mut inv = sum;
        for s in &mut inv {
            *s = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(*s));
        }
        for b in 0..used.min(blocks) {
            for r in 0..ROWS {
                _mm512_storeu_ps(row(r, b), _mm512_mul_ps(_mm512_loadu_ps(row(r, b)), inv[r]));
            }
        }
    }
}

/// One row of qk-norm then RoPE, `o = n·cos + swap_pairs(n)·sin`, `n = x·inv·weight` (the
/// AVX-512 form of `super::norm::norm_rope_row_of`, same operations and rounding; `HD` a multiple of
/// 16). The pair swap is one lane permutation: indexed as `n[i ^ 1]`, LLVM made it four gathers
/// per row, half of the whole split's time.
#[inline(always)]
pub fn norm_rope_row<const HD: usize>(
    _: Avx512,
    o: &mut [f32; HD],
    x: &[f32; HD],
    weight: &[f32; HD],
    cos: &[f32; HD],
    sin: &[f32; HD],
    inv: f32,
) {
    const { assert!(HD.is_multiple_of(LANES)) };
    let o = o.as_mut_ptr();
    // SAFETY: every offset is below HD, the length of each array; the token proves the CPU has
    // AVX-512F.
    unsafe {
        let inv = _mm512_set1_ps(inv);
        for c in (0..HD).step_by(LANES) {
            let n = _mm512_mul_ps(
                _mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(c)), inv),
                _mm512_loadu_ps(weight.as_ptr().add(c)),
            );
            let swapped = _mm512_permute_ps::<0b1011_0001>(n);
            let rotated = _mm512_add_ps(
                _mm512_mul_ps(n, _mm512_loadu_ps(cos.as_ptr().add(c))),
                _mm512_mul_ps(swapped, _mm512_loadu_ps(sin.as_ptr().add(c))),
            );
            _mm512_storeu_ps(o.add(c), rotated);
        }
    }
}
