//! The score block and the softmax of [`super::attention`] written with AVX2 + FMA intrinsics,
//! for the kernel versions that `multiversion!` compiles for AVX2 (`FMA` without `AVX512`).
//!
//! The portable score block keeps four rows × 16 columns in 8 registers, but as one chain of
//! additions per row: the latency of FMA (4 cycles, two units) bounds it, and its softmax runs
//! row by row, each a chain of dependent reductions. Here the accumulators are `__m256` values
//! indexed by constants: eight chains in [`scores`], and the softmax of four rows interleaved.
//! AVX2 has 16 vector registers: [`scores`] needs 11 (8 sums, 2 of `kᵀ`, a broadcast of `q`).
//!
//! Each function takes an [`Avx2`] token, the proof that the CPU has AVX2 and FMA, so they are
//! safe to call; every slice access is checked before the pointer loops.

// The loops index several register arrays by the same constant; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use super::isa::Avx2;
use super::math::{Lanes, exp};

/// Lanes of one register.
const LANES: usize = 8;

/// Rows of a block (the caller's `QUERY_ROWS`).
pub const ROWS: usize = 4;

/// `s[r·padded + j] = Σ_c a[(i0 + r)·HD + c]·b_t[c·padded + j]` for [`ROWS`] rows and all
/// `padded` columns (a multiple of 16), 16 columns (two registers per row) at a time.
#[inline(always)]
pub fn scores<const HD: usize>(_: Avx2, s: &mut [f32], a: &[f32], i0: usize, b_t: &[f32], padded: usize) {
    assert!(
        padded.is_multiple_of(2 * LANES)
            && s.len() >= ROWS * padded
            && b_t.len() >= HD * padded
            && a.len() >= (i0 + ROWS) * HD
    );
    let a = a[i0 * HD..].as_ptr();
    let (b_t, s) = (b_t.as_ptr(), s.as_mut_ptr());
    // SAFETY: the assert above bounds every offset; the token proves the CPU has AVX2 and FMA.
    unsafe {
        for jb in (0..padded).step_by(2 * LANES) {
            let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
            for c in 0..HD {
                let b = [_mm256_loadu_ps(b_t.add(c * padded + jb)), _mm256_loadu_ps(b_t.add(c * padded + jb + LANES))];
                for r in 0..ROWS {
                    let x = _mm256_set1_ps(*a.add(r * HD + c));
                    acc[r][0] = _mm256_fmadd_ps(x, b[0], acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(x, b[1], acc[r][1]);
                }
            }
            for r in 0..ROWS {
                _mm256_storeu_ps(s.add(r * padded + jb), acc[r][0]);
                _mm256_storeu_ps(s.add(r * padded + jb + LANES), acc[r][1]);
            }
        }
    }
}

/// 8 lanes for [`exp`]; only an [`Avx2`] token makes one.
#[derive(Clone, Copy)]
struct F32x8(__m256, Avx2);

// SAFETY (every method): register-only arithmetic; the token in each value proves the CPU has
// AVX2.
impl Lanes for F32x8 {
    #[inline(always)]
    fn splat(self, v: f32) -> Self {
        F32x8(unsafe { _mm256_set1_ps(v) }, self.1)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        F32x8(unsafe { _mm256_add_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        F32x8(unsafe { _mm256_sub_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        F32x8(unsafe { _mm256_mul_ps(self.0, o.0) }, self.1)
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> Self {
        F32x8(unsafe { _mm256_min_ps(_mm256_max_ps(self.0, _mm256_set1_ps(lo)), _mm256_set1_ps(hi)) }, self.1)
    }
    #[inline(always)]
    fn pow2_of_shifted(self, round: Self) -> Self {
        let pow2 = unsafe {
            let bits = _mm256_add_epi32(
                _mm256_sub_epi32(_mm256_castps_si256(self.0), _mm256_castps_si256(round.0)),
                _mm256_set1_epi32(127),
            );
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits))
        };
        F32x8(pow2, self.1)
    }
}

/// The largest of a register's lanes, in every lane.
#[inline(always)]
fn all_max(_: Avx2, x: __m256) -> __m256 {
    // SAFETY: register-only; the token proves the CPU has AVX2.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_max_ps(x, _mm256_permute_ps::<0b0100_1110>(x));
        _mm256_max_ps(x, _mm256_permute_ps::<0b1011_0001>(x))
    }
}

/// The sum of a register's lanes, in every lane (pairwise: halves, then quarters, then pairs).
#[inline(always)]
fn all_sum(_: Avx2, x: __m256) -> __m256 {
    // SAFETY: register-only; the token proves the CPU has AVX2.
    unsafe {
        let x = _mm256_add_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_add_ps(x, _mm256_permute_ps::<0b0100_1110>(x));
        _mm256_add_ps(x, _mm256_permute_ps::<0b1011_0001>(x))
    }
}

/// In place: `softmax(scale·x)` over the first `tokens` values of each of [`ROWS`] rows of
/// `padded` values in `s` (the rest of each row is left undefined). The rows go through each
/// pass together: four independent chains of dependent steps.
#[inline(always)]
pub fn softmax(isa: Avx2, s: &mut [f32], padded: usize, tokens: usize, scale: f32) {
    assert!(padded.is_multiple_of(LANES) && tokens <= padded && tokens > 0 && s.len() >= ROWS * padded);
    let used = tokens.div_ceil(LANES);
    // SAFETY: `r·padded + b·8 + 8 ≤ ROWS·padded` for `b < used ≤ padded / 8`; the token proves
    // the CPU has AVX2.
    // Loops, not closures: a closure does not inherit the kernel's target features, and
    // intrinsics that cannot be inlined become calls.
    unsafe {
        let base = s.as_mut_ptr();
        // Lanes of the last used register that hold scores: all ones where `lane < tail`.
        let tail = (tokens - (used - 1) * LANES) as i32;
        let last =
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        let low = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut max = [low; ROWS];
        for b in 0..used {
            for r in 0..ROWS {
                let mut x = _mm256_loadu_ps(base.add(r * padded + b * LANES));
                if b + 1 == used {
                    x = _mm256_blendv_ps(low, x, last);
                }
                max[r] = _mm256_max_ps(max[r], x);
            }
        }
        for r in 0..ROWS {
            max[r] = all_max(isa, max[r]);
        }
        let scale = _mm256_set1_ps(scale);
        let mut sum = [_mm256_setzero_ps(); ROWS];
        for b in 0..used {
            for r in 0..ROWS {
                let at = base.add(r * padded + b * LANES);
                let mut e = exp(F32x8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(at), max[r]), scale), isa)).0;
                if b + 1 == used {
                    e = _mm256_and_ps(e, last);
                }
                _mm256_storeu_ps(at, e);
                sum[r] = _mm256_add_ps(sum[r], e);
            }
        }
        let mut inv = sum;
        for r in 0..ROWS {
            inv[r] = _mm256_div_ps(_mm256_set1_ps(1.0), all_sum(isa, sum[r]));
        }
        for b in 0..used {
            for r in 0..ROWS {
                let at = base.add(r * padded + b * LANES);
                _mm256_storeu_ps(at, _mm256_mul_ps(_mm256_loadu_ps(at), inv[r]));
            }
        }
    }
}
