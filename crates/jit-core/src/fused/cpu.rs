//! The CPU kernels of [`super`]: one pass over memory per operation, on contiguous f32 slices.
//!
//! Plain loops without branches (and without `mul_add`, a libm call where the target has no
//! FMA, as in wasm32), so that LLVM vectorises them; on x86-64 each kernel is compiled a second
//! time for AVX2 + FMA and picked at run time (`multiversion!`).
//! `exp` is a polynomial rather than libm's scalar `expf`, which alone took a fifth of the
//! sampling time (docs/cpu.md). With the `rayon` feature, rows are split over rayon's pool, as
//! burn's Flex backend does; without it everything runs on the calling thread (wasm).

/// Elements below which a kernel stays on one thread (splitting costs more than it gains).
const PARALLEL_MIN: usize = 1 << 15;

/// `e^x` for f32, within 2 ulp over the normal range, without branches.
///
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`; `e^r` by a degree-6 polynomial (Cephes' `expf`
/// coefficients); `2^n` built in the exponent bits. Inputs are clamped to `[-87.3, 88.3]`, so
/// very negative inputs give ≈1e-38 instead of 0 and very positive ones ≈2e38 instead of ∞;
/// callers here only feed it `x ≤ 0` (softmax) or use it in ratios where that is harmless (SiLU).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // `shifted`'s low mantissa bits hold n (|n| ≤ 128 ≪ 2²²): 2^n without a float→int conversion.
    let biased = shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    er * f32::from_bits(biased << 23)
}

/// Lanes of the reductions below: independent partial sums, so that they vectorise.
const LANES: usize = 16;

/// `Σ f(x)` over `xs`, in [`LANES`] partial sums.
#[inline(always)]
fn sum_by(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `xs` (−∞ when empty; NaNs are skipped).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// SiLU `x·σ(x) = x / (1 + e^−x)`.
#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Defines `fn $name(args)` compiled twice on x86-64: for AVX2 + FMA, picked at run time
/// where the CPU has them, and for the baseline. (Elsewhere once: wasm32 is built with SIMD128
/// for the whole module, aarch64 always has NEON.)
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Runs `kernel(first_row, rows)` over `out`, a whole number of rows of `row_len` values, split
/// into chunks of rows across threads where that pays.
fn for_rows(out: &mut [f32], row_len: usize, kernel: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    if row_len == 0 || out.is_empty() {
        return;
    }
    #[cfg(feature = "rayon")]
    if out.len() >= PARALLEL_MIN {
        use rayon::prelude::*;
        let rows_per_task = (PARALLEL_MIN / 4).div_ceil(row_len).max(1);
        out.par_chunks_mut(rows_per_task * row_len)
            .enumerate()
            .for_each(|(i, rows)| kernel(i * rows_per_task, rows));
        return;
    }
    let _ = PARALLEL_MIN;
    kernel(0, out)
}

/// In place, row by row: `softmax(scale·x)` over rows of `row_len` values (`scale > 0`).
pub fn softmax_rows(x: &mut [f32], row_len: usize, scale: f32) {
    multiversion! {
        fn rows_kernel(rows: &mut [f32], row_len: usize, scale: f32) {
            for row in rows.chunks_exact_mut(row_len) {
                let max = max_of(row);
                row.iter_mut().for_each(|v| *v = exp((*v - max) * scale));
                let inv = 1.0 / sum_by(row, |v| v);
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }
    for_rows(x, row_len, &|_, rows| rows_kernel(rows, row_len, scale));
}

/// In place: `x ← SiLU(x)`.
pub fn silu_inplace(x: &mut [f32]) {
    multiversion! {
        fn kernel(xs: &mut [f32]) {
            xs.iter_mut().for_each(|v| *v = silu(*v));
        }
    }
    for_rows(x, 1, &|_, xs| kernel(xs));
}

/// SwiGLU's gate: rows of `2·hidden` values `(x1, x2)` → rows of `hidden` values `SiLU(x1)·x2`.
pub fn silu_gate(h: &[f32], hidden: usize) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [f32], h: &[f32], hidden: usize) {
            for (o, x) in out.chunks_exact_mut(hidden).zip(h.chunks_exact(2 * hidden)) {
                let (x1, x2) = x.split_at(hidden);
                for ((o, &a), &b) in o.iter_mut().zip(x1).zip(x2) {
                    *o = silu(a) * b;
                }
            }
        }
    }
    let mut out = vec![0.0; h.len() / 2];
    for_rows(&mut out, hidden, &|first, rows| kernel(rows, &h[first * 2 * hidden..], hidden));
    out
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
#[inline(always)]
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (sum_by(row, |v| v * v) / row.len() as f32 + eps).sqrt()
}

/// RMSNorm then adaLN modulation, for `x` `[B, T, D]`:
/// `out = x / rms(x) · weight · (1 + scale[b]) + shift[b]`, with `weight` `[D]` and `shift`,
/// `scale` `[B, D]`.
pub fn rms_norm_modulate(x: &[f32], tokens: usize, weight: &[f32], shift: &[f32], scale: &[f32], eps: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [f32], x: &[f32], first: usize, tokens: usize, weight: &[f32], shift: &[f32], scale: &[f32], eps: f32) {
            let d = weight.len();
            for (r, (o, xs)) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let b = (first + r) / tokens;
                let (sh, sc) = (&shift[b * d..][..d], &scale[b * d..][..d]);
                let inv = inv_rms(xs, eps);
                for ((((o, &v), &w), &sh), &sc) in o.iter_mut().zip(xs).zip(weight).zip(sh).zip(sc) {
                    *o = v * inv * w * (1.0 + sc) + sh;
                }
            }
        }
    }
    let d = weight.len();
    let mut out = vec![0.0; x.len()];
    for_rows(&mut out, d, &|first, rows| kernel(rows, &x[first * d..], first, tokens, weight, shift, scale, eps));
    out
}

/// Token layout of [`qkv_heads`]: `qkv` is `[B, T, 3, heads, head_dim]`, the RoPE tables
/// `[T, head_dim]`.
pub struct QkvLayout {
    /// Batch size B.
    pub batch: usize,
    /// Tokens T.
    pub tokens: usize,
    /// Heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

/// The per-head RMSNorm (`norm = (weight, eps)`) and RoPE of [`qkv_heads`], for the output rows
/// `first..` of one part (`which`: 0 queries, 1 keys, 2 values, which are only copied).
struct HeadPart<'a> {
    qkv: &'a [f32],
    layout: &'a QkvLayout,
    which: usize,
    norm: Option<(&'a [f32], f32)>,
    cos: &'a [f32],
    sin_signed: &'a [f32],
}

multiversion! {
    fn head_rows(out: &mut [f32], first: usize, p: &HeadPart) {
        let l = p.layout;
        let hd = l.head_dim;
        for (r, o) in out.chunks_exact_mut(hd).enumerate() {
            // Rows of the output are (b, h, t) in order.
            let row = first + r;
            let (t, bh) = (row % l.tokens, row / l.tokens);
            let (b, h) = (bh / l.heads, bh % l.heads);
            let src = &p.qkv[(((b * l.tokens + t) * 3 + p.which) * l.heads + h) * hd..][..hd];
            let Some((weight, eps)) = p.norm else {
                o.copy_from_slice(src);
                continue;
            };
            let inv = inv_rms(src, eps);
            let (cos, sin) = (&p.cos[t * hd..][..hd], &p.sin_signed[t * hd..][..hd]);
            let pairs = o.chunks_exact_mut(2).zip(src.chunks_exact(2)).zip(weight.chunks_exact(2));
            for (((o, x), w), (c, s)) in pairs.zip(cos.chunks_exact(2).zip(sin.chunks_exact(2))) {
                let (x0, x1) = (x[0] * inv * w[0], x[1] * inv * w[1]);
                o[0] = x0 * c[0] + x1 * s[0];
                o[1] = x1 * c[1] + x0 * s[1];
            }
        }
    }
}

/// Splits the `qkv` projection into heads and applies the per-head RMSNorm (`q_weight`,
/// `k_weight`, `[head_dim]`) and RoPE (`x·cos + swap_pairs(x)·sin_signed`) to queries and keys.
/// Returns `(q, k, v)`, each `[B, heads, T, head_dim]` contiguous.
pub fn qkv_heads(
    qkv: &[f32],
    layout: &QkvLayout,
    q_weight: &[f32],
    k_weight: &[f32],
    cos: &[f32],
    sin_signed: &[f32],
    eps: f32,
) -> [Vec<f32>; 3] {
    let l = layout;
    let part = |which: usize, norm: Option<(&[f32], f32)>| {
        let p = HeadPart { qkv, layout, which, norm, cos, sin_signed };
        let mut out = vec![0.0; l.batch * l.heads * l.tokens * l.head_dim];
        for_rows(&mut out, l.head_dim, &|first, rows| head_rows(rows, first, &p));
        out
    };
    [part(0, Some((q_weight, eps))), part(1, Some((k_weight, eps))), part(2, None)]
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
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
        assert!(exp(1e4).is_finite());
    }

    #[test]
    fn softmax_rows_sum_to_one_and_follow_the_definition() {
        let mut x: Vec<f32> = (0..3 * 70).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
        let orig = x.clone();
        softmax_rows(&mut x, 70, 0.25);
        for (row, o) in x.chunks(70).zip(orig.chunks(70)) {
            let z: f64 = o.iter().map(|&v| (0.25 * v as f64).exp()).sum();
            for (&p, &v) in row.iter().zip(o) {
                assert!((p as f64 - (0.25 * v as f64).exp() / z).abs() < 1e-7);
            }
        }
    }
}
