//! The score block and the softmax of [`super::attention`] written with AVX2 + FMA intrinsics,
//! for the kernel versions that `multiversion!` compiles for AVX2 (`FMA` without `AVX512`).
//!
//! The portable score block keeps four rows × 16 columns in 8 registers, but as one chain of
//! additions per row: the latency of FMA (4 cycles, two units) bounds it, and its softmax runs
//! row by row, each a chain of dependent reductions. Here the accumulators are `__m256` values
//! indexed by constants: eight chains in [`scores`], and the softmax of four rows interleaved.
//! AVX2 has 16 vector registers: [`scores`] needs 11 (8 sums, 2 of `kᵀ`, a broadcast of `q`).
//!
//! Callers must run on a CPU with AVX2 and FMA: these are `unsafe` for that alone; every slice
//! access is checked before the pointer loops.

// The loops index several register arrays by the same constant; iterators would hide that.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

/// Lanes of one register.
const LANES: usize = 8;

/// Rows of a block (the caller's `QUERY_ROWS`).
pub const ROWS: usize = 4;

/// `s[r·padded + j] = Σ_c a[(i0 + r)·HD + c]·b_t[c·padded + j]` for [`ROWS`] rows and all
/// `padded` columns (a multiple of 16), 16 columns (two registers per row) at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub unsafe fn scores<const HD: usize>(s: &mut [f32], a: &[f32], i0: usize, b_t: &[f32], padded: usize) {
    assert!(
        padded.is_multiple_of(2 * LANES)
            && s.len() >= ROWS * padded
            && b_t.len() >= HD * padded
            && a.len() >= (i0 + ROWS) * HD
    );
    let a = a[i0 * HD..].as_ptr();
    let (b_t, s) = (b_t.as_ptr(), s.as_mut_ptr());
    // SAFETY: the assert above bounds every offset; the CPU has AVX2 and FMA.
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

/// `e^x` on 8 lanes: [`super::exp`]'s steps, each rounded as there (products and sums apart),
/// so both give the same values.
#[inline(always)]
unsafe fn exp(x: __m256) -> __m256 {
    // SAFETY: register-only arithmetic; the CPU has AVX2.
    unsafe {
        let c = _mm256_set1_ps;
        let (mul, add) = (_mm256_mul_ps, _mm256_add_ps);
        let x = _mm256_min_ps(_mm256_max_ps(x, c(-87.3)), c(88.3));
        let round = c(12_582_912.0);
        let shifted = add(mul(x, c(std::f32::consts::LOG2_E)), round);
        let n = _mm256_sub_ps(shifted, round);
        let r = _mm256_sub_ps(_mm256_sub_ps(x, mul(n, c(0.693_359_4))), mul(n, c(-2.121_944_4e-4)));
        let mut p = c(1.987_569_1e-4);
        for k in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_66, 0.5] {
            p = add(mul(p, r), c(k));
        }
        let er = add(add(mul(mul(p, r), r), r), c(1.0));
        let bits = _mm256_add_epi32(
            _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(round)),
            _mm256_set1_epi32(127),
        );
        mul(er, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)))
    }
}

/// The largest of a register's lanes, in every lane.
#[inline(always)]
unsafe fn all_max(x: __m256) -> __m256 {
    // SAFETY: register-only; the CPU has AVX2.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_max_ps(x, _mm256_permute_ps::<0b0100_1110>(x));
        _mm256_max_ps(x, _mm256_permute_ps::<0b1011_0001>(x))
    }
}

/// The sum of a register's lanes, in every lane (pairwise: halves, then quarters, then pairs).
#[inline(always)]
unsafe fn all_sum(x: __m256) -> __m256 {
    // SAFETY: register-only; the CPU has AVX2.
    unsafe {
        let x = _mm256_add_ps(x, _mm256_permute2f128_ps::<1>(x, x));
        let x = _mm256_add_ps(x, _mm256_permute_ps::<0b0100_1110>(x));
        _mm256_add_ps(x, _mm256_permute_ps::<0b1011_0001>(x))
    }
}

/// In place: `softmax(scale·x)` over the first `tokens` values of each of [`ROWS`] rows of
/// `padded` values in `s` (the rest of each row is left undefined). The rows go through each
/// pass together: four independent chains of dependent steps.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub unsafe fn softmax(s: &mut [f32], padded: usize, tokens: usize, scale: f32) {
    assert!(padded.is_multiple_of(LANES) && tokens <= padded && tokens > 0 && s.len() >= ROWS * padded);
    let used = tokens.div_ceil(LANES);
    // SAFETY: `r·padded + b·8 + 8 ≤ ROWS·padded` for `b < used ≤ padded / 8`; the CPU has AVX2.
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
            max[r] = all_max(max[r]);
        }
        let scale = _mm256_set1_ps(scale);
        let mut sum = [_mm256_setzero_ps(); ROWS];
        for b in 0..used {
            for r in 0..ROWS {
                let at = base.add(r * padded + b * LANES);
                let mut e = exp(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(at), max[r]), scale));
                if b + 1 == used {
                    e = _mm256_and_ps(e, last);
                }
                _mm256_storeu_ps(at, e);
                sum[r] = _mm256_add_ps(sum[r], e);
            }
        }
        let mut inv = sum;
        for r in 0..ROWS {
            inv[r] = _mm256_div_ps(_mm256_set1_ps(1.0), all_sum(sum[r]));
        }
        for b in 0..used {
            for r in 0..ROWS {
                let at = base.add(r * padded + b * LANES);
                _mm256_storeu_ps(at, _mm256_mul_ps(_mm256_loadu_ps(at), inv[r]));
            }
        }
    }
}
