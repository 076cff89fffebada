//! The arithmetic the kernels share: `exp` (written once, for scalars and for vector
//! registers), SiLU, and reductions in independent partial sums that vectorise.

/// A value the [`exp`] polynomial runs on: an `f32`, or a vector register of them (the AVX2 and
/// AVX-512 kernels' wrappers, which only a capability token makes). Constants are made from an
/// existing value ([`Lanes::splat`] takes `self`), so generic code never needs a token.
pub trait Lanes: Copy {
    /// `v` in every lane.
    fn splat(self, v: f32) -> Self;
    /// Lane-wise `self + o`.
    fn add(self, o: Self) -> Self;
    /// Lane-wise `self − o`.
    fn sub(self, o: Self) -> Self;
    /// Lane-wise `self · o`.
    fn mul(self, o: Self) -> Self;
    /// Lane-wise `self` limited to `[lo, hi]`.
    fn clamp(self, lo: f32, hi: f32) -> Self;
    /// Lane-wise `2^n`, where `self = n + round` with `round = 1.5·2²³` (so `self`'s low mantissa
    /// bits hold `n`, |n| ≤ 128): the exponent bits built from those without a float→int
    /// conversion.
    fn pow2_of_shifted(self, round: Self) -> Self;
}

impl Lanes for f32 {
    #[inline(always)]
    fn splat(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn add(self, o: f32) -> f32 {
        self + o
    }
    #[inline(always)]
    fn sub(self, o: f32) -> f32 {
        self - o
    }
    #[inline(always)]
    fn mul(self, o: f32) -> f32 {
        self * o
    }
    #[inline(always)]
    fn clamp(self, lo: f32, hi: f32) -> f32 {
        f32::clamp(self, lo, hi)
    }
    #[inline(always)]
    fn pow2_of_shifted(self, round: f32) -> f32 {
        let biased = self.to_bits().wrapping_sub(round.to_bits()).wrapping_add(127);
        f32::from_bits(biased << 23)
    }
}

/// `e^x` lane by lane, within 2 ulp over the normal range, without branches.
///
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`; `e^r` by a degree-6 polynomial (Cephes' `expf`
/// coefficients); `2^n` built in the exponent bits. Inputs are clamped to `[-87.3, 88.3]`, so
/// very negative inputs give ≈1e-38 instead of 0 and very positive ones ≈2e38 instead of ∞;
/// callers here only feed it `x ≤ 0` (softmax) or use it in ratios where that is harmless
/// (SiLU). Every step is rounded on its own (no fused multiply-adds), so the scalar and the
/// vector versions give the same values. Replaces libm's scalar `expf`, which alone took a
/// fifth of the sampling time (docs/cpu.md).
#[inline(always)]
pub fn exp<V: Lanes>(x: V) -> V {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    const POLY: [f32; 5] = [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_66, 0.5];
    let x = x.clamp(-87.3, 88.3);
    let round = x.splat(ROUND);
    let shifted = x.mul(x.splat(LOG2E)).add(round);
    let n = shifted.sub(round);
    let r = x.sub(n.mul(x.splat(LN2_HI))).sub(n.mul(x.splat(LN2_LO)));
    let mut p = x.splat(1.987_569_1e-4);
    for k in POLY {
        p = p.mul(r).add(x.splat(k));
    }
    let er = p.mul(r).mul(r).add(r).add(x.splat(1.0));
    er.mul(shifted.pow2_of_shifted(round))
}

/// Lanes of the reductions below: independent partial sums, so that they vectorise.
pub const LANES: usize = 16;

/// `Σ f(x)` over `xs`, in [`LANES`] partial sums.
#[inline(always)]
pub fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    for (acc, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *acc = f(v);
    }
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    fold_lanes(acc, |a, b| a + b)
}

/// `Σ a·b` in [`LANES`] partial sums.
#[inline(always)]
pub fn sum_by_pairs(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for ((acc, &x), &y) in acc.iter_mut().zip(ac.remainder()).zip(bc.remainder()) {
        *acc = x * y;
    }
    for (ac, bc) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += ac[i] * bc[i];
        }
    }
    fold_lanes(acc, |a, b| a + b)
}

/// The largest value of `xs` (−∞ when empty; NaNs are skipped).
#[inline(always)]
pub fn max_of(xs: &[f32]) -> f32 {
    let max = |m: f32, v: f32| if v > m { v } else { m };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    for (acc, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *acc = max(*acc, v);
    }
    for c in chunks {
        for i in 0..LANES {
            acc[i] = max(acc[i], c[i]);
        }
    }
    fold_lanes(acc, max)
}

/// The partial results of a reduction combined pairwise: four dependent steps instead of a
/// chain of fifteen, whose latency bounded the row kernels (softmax, norms) on short rows.
#[inline(always)]
fn fold_lanes(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] = op(acc[i], acc[i + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// SiLU `x·σ(x) = x / (1 + e^−x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
#[inline(always)]
pub fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (sum_by(row, |v| v * v) / row.len() as f32 + eps).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_two_ulp_over_the_softmax_range() {
        let mut worst = 0.0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0f32), 1.0);
        assert!(exp(-1e4f32) < 1e-37 && exp(-1e4f32) >= 0.0);
        assert!(exp(1e4f32).is_finite());
        assert!(exp(f32::NAN).is_nan(), "NaN propagates");
    }
}
