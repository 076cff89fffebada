//! The CPU kernels of [`super`]: one pass over memory per operation, on contiguous f32 slices.
//!
//! Plain loops without branches (and without `mul_add`, a libm call where the target has no
//! FMA, as in wasm32), so that LLVM vectorises them; on x86-64 each kernel is also compiled
//! for AVX-512 and for AVX2 + FMA, picked at run time (`multiversion!`).
//! `exp` is a polynomial rather than libm's scalar `expf`, which alone took a fifth of the
//! sampling time (docs/cpu.md). With the `rayon` feature, rows are split over rayon's pool, as
//! burn's Flex backend does; without it everything runs on the calling thread (wasm).

use core::mem::MaybeUninit;

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

/// The largest value of `xs` (−∞ when empty; NaNs are skipped).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
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
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Defines `fn $name(args)` compiled three times on x86-64: for AVX-512, for AVX2 + FMA and for
/// the baseline, the widest the CPU has picked at run time. (Elsewhere once: wasm32 is built with SIMD128
/// for the whole module, aarch64 always has NEON.) The body sees `const FMA: bool`, whether its
/// version may fuse multiply-adds (see [`mul_add`]), and `const AVX512: bool`, whether it may
/// use AVX-512 intrinsics.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)] // kernels take their slices and sizes one by one
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn generic<const FMA: bool, const AVX512: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    generic::<true, true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    generic::<true, false>($($arg),*)
                }
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has the features `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic::<{ cfg!(target_arch = "aarch64") }, false>($($arg),*)
        }
    };
}

/// `a·b + c`, fused into one instruction (one rounding) in the kernel versions of
/// `multiversion!` compiled for a CPU that has FMA (`FMA`), else a product and a sum (where
/// `mul_add` would be a slow libm call: baseline x86-64, wasm32).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
pub use attention::{
    AttentionShape, attention, attention_backward, attention_supports, attention_with_probs, qkv_attention,
};

/// A kernel over a chunk of rows: `(first_row, rows)`.
type RowKernel<'a, T = f32> = dyn Fn(usize, &mut [T]) + Sync + 'a;

/// A kernel over a chunk of rows that also adds into an accumulator: `(first_row, rows, acc)`.
type RowSumKernel<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Runs `kernel(first_row, rows)` over `out`, a whole number of rows of `row_len` values, split
/// into chunks of rows across threads where that pays.
fn for_rows<T: Send>(out: &mut [T], row_len: usize, kernel: &RowKernel<T>) {
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
pub(super) fn new_rows(len: usize, row_len: usize, kernel: &RowKernel<MaybeUninit<f32>>) -> Vec<f32> {
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
fn for_rows_sum(out: &mut [f32], row_len: usize, acc_len: usize, kernel: &RowSumKernel) -> Vec<f32> {
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

/// In place, row by row: `softmax(scale·x)` over rows of `row_len` values (`scale > 0`).
pub fn softmax_rows(x: &mut [f32], row_len: usize, scale: f32) {
    multiversion! {
        fn rows_kernel(rows: &mut [f32], row_len: usize, scale: f32) {
            for row in rows.chunks_exact_mut(row_len) {
                softmax_row(row, scale);
            }
        }
    }
    for_rows(x, row_len, &|_, rows| rows_kernel(rows, row_len, scale));
}

/// One row of [`softmax_rows`], in place.
#[inline(always)]
fn softmax_row(row: &mut [f32], scale: f32) {
    let max = max_of(row);
    row.iter_mut().for_each(|v| *v = exp((*v - max) * scale));
    let inv = 1.0 / sum_by(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Gradient of [`softmax_rows`]: from the probabilities `p` and the output gradient `g`,
/// `scale·p·(g − Σ g·p)` per row.
pub fn softmax_rows_backward(p: &[f32], g: &[f32], row_len: usize, scale: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], p: &[f32], g: &[f32], row_len: usize, scale: f32) {
            let rows = out.chunks_exact_mut(row_len).zip(p.chunks_exact(row_len)).zip(g.chunks_exact(row_len));
            for ((o, p), g) in rows {
                let dot = sum_by_pairs(p, g);
                for ((o, &p), &g) in o.iter_mut().zip(p).zip(g) {
                    o.write(scale * p * (g - dot));
                }
            }
        }
    }
    new_rows(p.len(), row_len, &|first, rows| {
        let at = first * row_len..first * row_len + rows.len();
        kernel(rows, &p[at.clone()], &g[at], row_len, scale)
    })
}

/// Classifier-free guidance: from velocities `v` `[2B, …]` (conditional half first, then the
/// unconditional half), `v_u + scale·(v_c − v_u)` `[B, …]`.
pub fn cfg_mix(v: &[f32], scale: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], cond: &[f32], uncond: &[f32], scale: f32) {
            for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
                o.write(u + scale * (c - u));
            }
        }
    }
    let half = v.len() / 2;
    let (cond, uncond) = v.split_at(half);
    new_rows(half, 1, &|first, rows| {
        let at = first..first + rows.len();
        kernel(rows, &cond[at.clone()], &uncond[at], scale)
    })
}

/// The EMA update `ema·decay + θ·(1 − decay)`, with the two products rounded as burn's
/// separate `mul_scalar`s round them (the factors are given in f32: `decay` and `1 − decay`).
pub fn ema_blend(ema: &[f32], theta: &[f32], decay: f32, one_minus_decay: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], ema: &[f32], theta: &[f32], decay: f32, one_minus_decay: f32) {
            for ((o, &e), &t) in out.iter_mut().zip(ema).zip(theta) {
                o.write(e * decay + t * one_minus_decay);
            }
        }
    }
    assert_eq!(ema.len(), theta.len(), "ema_blend: one value of θ per EMA value");
    new_rows(ema.len(), 1, &|first, rows| {
        let at = first..first + rows.len();
        kernel(rows, &ema[at.clone()], &theta[at], decay, one_minus_decay)
    })
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

/// SwiGLU's gate: rows of `2·hidden` values `(x1, x2)` → rows of `hidden` values `SiLU(x1)·x2`,
/// with `bias` (`2·hidden` values: the `w12` layer's, when `h` is its product without it) added
/// to each row first.
pub fn silu_gate(h: &[f32], hidden: usize, bias: Option<&[f32]>) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], h: &[f32], hidden: usize, bias: Option<&[f32]>) {
            for (o, x) in out.chunks_exact_mut(hidden).zip(h.chunks_exact(2 * hidden)) {
                let (x1, x2) = x.split_at(hidden);
                match bias {
                    None => {
                        for ((o, &a), &b) in o.iter_mut().zip(x1).zip(x2) {
                            o.write(silu(a) * b);
                        }
                    }
                    Some(bias) => {
                        let (b1, b2) = bias.split_at(hidden);
                        for ((((o, &a), &b), &ba), &bb) in o.iter_mut().zip(x1).zip(x2).zip(b1).zip(b2) {
                            o.write(silu(a + ba) * (b + bb));
                        }
                    }
                }
            }
        }
    }
    // Every output value is written (the contract of `new_rows`): whole rows only.
    assert_eq!(h.len() % (2 * hidden).max(1), 0, "silu_gate: rows of 2·hidden values");
    assert!(bias.is_none_or(|b| b.len() == 2 * hidden), "silu_gate: a bias of 2·hidden values");
    new_rows(h.len() / 2, hidden, &|first, rows| kernel(rows, &h[first * 2 * hidden..], hidden, bias))
}

/// Gradient of [`silu_gate`] with respect to `h` (rows of `2·hidden`), from the output gradient
/// `g` (rows of `hidden`): `(g·x2·SiLU'(x1), g·SiLU(x1))`, `SiLU'(a) = σ(a)·(1 + a·(1 − σ(a)))`.
pub fn silu_gate_backward(h: &[f32], g: &[f32], hidden: usize) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], h: &[f32], g: &[f32], hidden: usize) {
            let rows = out.chunks_exact_mut(2 * hidden).zip(h.chunks_exact(2 * hidden)).zip(g.chunks_exact(hidden));
            for ((o, x), g) in rows {
                let (d1, d2) = o.split_at_mut(hidden);
                let (x1, x2) = x.split_at(hidden);
                for ((((d1, d2), &a), &b), &g) in d1.iter_mut().zip(d2).zip(x1).zip(x2).zip(g) {
                    let sig = 1.0 / (1.0 + exp(-a));
                    d1.write(g * b * sig * (1.0 + a * (1.0 - sig)));
                    d2.write(g * a * sig);
                }
            }
        }
    }
    assert!(
        h.len().is_multiple_of((2 * hidden).max(1)) && g.len() * 2 == h.len(),
        "silu_gate_backward: rows of 2·hidden and hidden values"
    );
    new_rows(h.len(), 2 * hidden, &|first, rows| kernel(rows, &h[first * 2 * hidden..], &g[first * hidden..], hidden))
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
        fn kernel(out: &mut [MaybeUninit<f32>], x: &[f32], first: usize, tokens: usize, weight: &[f32], shift: &[f32], scale: &[f32], eps: f32) {
            let d = weight.len();
            for (r, (o, xs)) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let b = (first + r) / tokens;
                let (sh, sc) = (&shift[b * d..][..d], &scale[b * d..][..d]);
                let inv = inv_rms(xs, eps);
                for ((((o, &v), &w), &sh), &sc) in o.iter_mut().zip(xs).zip(weight).zip(sh).zip(sc) {
                    o.write(v * inv * w * (1.0 + sc) + sh);
                }
            }
        }
    }
    let d = weight.len();
    assert_eq!(x.len() % d.max(1), 0, "rms_norm_modulate: rows of weight.len() values");
    new_rows(x.len(), d, &|first, rows| kernel(rows, &x[first * d..], first, tokens, weight, shift, scale, eps))
}

/// Gradients of [`rms_norm_modulate`] from the output gradient `g` `[B, T, D]`:
/// `(dx [B, T, D], dweight [D], dshift [B, D], dscale [B, D])`.
pub fn rms_norm_modulate_backward(
    x: &[f32],
    tokens: usize,
    weight: &[f32],
    scale: &[f32],
    g: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    multiversion! {
        /// `acc` = `[dweight (D) | dshift (B·D) | dscale (B·D)]`.
        fn kernel(dx: &mut [f32], acc: &mut [f32], x: &[f32], g: &[f32], first: usize, tokens: usize, weight: &[f32], scale: &[f32], eps: f32) {
            let d = weight.len();
            let (dw, rest) = acc.split_at_mut(d);
            let (dshift, dscale) = rest.split_at_mut(rest.len() / 2);
            let mut dn = vec![0.0f32; d];
            let rows = dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d));
            for (r, ((dx, xs), g)) in rows.enumerate() {
                let b = (first + r) / tokens;
                let sc = &scale[b * d..][..d];
                let (dsh, dsc) = (&mut dshift[b * d..][..d], &mut dscale[b * d..][..d]);
                let inv = inv_rms(xs, eps);
                // n = x·inv; out = n·w·(1 + sc) + sh.
                for i in 0..d {
                    let n = xs[i] * inv;
                    dsh[i] += g[i];
                    dsc[i] += g[i] * n * weight[i];
                    dw[i] += g[i] * n * (1.0 + sc[i]);
                    dn[i] = g[i] * weight[i] * (1.0 + sc[i]);
                }
                rms_norm_input_grad(dx, &dn, xs, inv);
            }
        }
    }
    let d = weight.len();
    let batch = scale.len() / d;
    let mut dx = vec![0.0; x.len()];
    let acc = for_rows_sum(&mut dx, d, d + 2 * batch * d, &|first, rows, acc| {
        let at = first * d..first * d + rows.len();
        kernel(rows, acc, &x[at.clone()], &g[at], first, tokens, weight, scale, eps)
    });
    let dw = acc[..d].to_vec();
    let dshift = acc[d..d + batch * d].to_vec();
    let dscale = acc[d + batch * d..].to_vec();
    (dx, dw, dshift, dscale)
}

/// RMSNorm's input gradient for one row: `dx = inv·(dn − n·mean(dn·n))` with `n = x·inv`, from
/// the gradient `dn` with respect to the normalised row.
#[inline(always)]
fn rms_norm_input_grad(dx: &mut [f32], dn: &[f32], x: &[f32], inv: f32) {
    let mean = sum_by_pairs(dn, x) * inv / x.len() as f32;
    for ((dx, &dn), &v) in dx.iter_mut().zip(dn).zip(x) {
        *dx = inv * (dn - v * inv * mean);
    }
}

/// `Σ a·b` in [`LANES`] partial sums.
#[inline(always)]
fn sum_by_pairs(a: &[f32], b: &[f32]) -> f32 {
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

/// Token layout of [`qkv_heads`]: `qkv` is `[B, T, 3, heads, head_dim]`, the RoPE tables
/// `[T, head_dim]`.
#[derive(Debug, Clone, Copy)]
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
/// `first..` of one part (`which`: 0 queries, 1 keys, 2 values, which are only copied). `bias`
/// (`3·heads·head_dim` values, the `qkv` layer's when `qkv` is its product without it) is added
/// to each row first.
struct HeadPart<'a> {
    qkv: &'a [f32],
    bias: Option<&'a [f32]>,
    layout: &'a QkvLayout,
    which: usize,
    norm: Option<(&'a [f32], f32)>,
    cos: &'a [f32],
    sin_signed: &'a [f32],
}

multiversion! {
    fn head_rows(out: &mut [MaybeUninit<f32>], first: usize, p: &HeadPart) {
        match p.layout.head_dim {
            16 => head_rows_of::<16, AVX512>(out, first, p),
            32 => head_rows_of::<32, AVX512>(out, first, p),
            64 => head_rows_of::<64, AVX512>(out, first, p),
            _ => head_rows_of::<0, AVX512>(out, first, p),
        }
    }
}

/// [`head_rows`] for head width `HD`, or any width with `HD = 0`. With the width a constant,
/// LLVM unrolls each row's loops into whole vectors, and [`norm_rope_row_of`] keeps each row in
/// registers. One thread, 16 images of 72 tokens: width 16 0.29–0.41 → 0.16–0.18 ms, width 32
/// 1.1–1.6 → 0.63–0.70 ms (the scratch row it replaced was written as scalars and read back as
/// vectors).
#[inline(always)]
fn head_rows_of<const HD: usize, const AVX512: bool>(out: &mut [MaybeUninit<f32>], first: usize, p: &HeadPart) {
    let l = p.layout;
    let hd = if HD == 0 { l.head_dim } else { HD };
    let mut scratch = vec![0.0f32; if HD == 0 { 2 * hd } else { 0 }];
    let mut biased = vec![0.0f32; if p.bias.is_some() { hd } else { 0 }];
    let per = l.heads * l.tokens;
    if first.is_multiple_of(per) && (out.len() / hd).is_multiple_of(per) {
        // Whole batch elements (sampling's attention takes one at a time): token by token, so
        // that each token's `heads·hd` values of this part are read in order. Head by head,
        // every row read was two cache lines `3·heads·hd` values apart, fetched from beyond
        // the L2 cache (`gemm` has just written them) without the prefetcher's help.
        for (e, out) in out.chunks_exact_mut(per * hd).enumerate() {
            for t in 0..l.tokens {
                for h in 0..l.heads {
                    let o = &mut out[(h * l.tokens + t) * hd..][..hd];
                    head_row::<HD, AVX512>(o, first / per + e, h, t, p, &mut biased, &mut scratch);
                }
            }
        }
        return;
    }
    // Rows of the output are (b, h, t) in order: counters instead of divisions per row.
    let (mut t, bh) = (first % l.tokens, first / l.tokens);
    let (mut b, mut h) = (bh / l.heads, bh % l.heads);
    for o in out.chunks_exact_mut(hd) {
        head_row::<HD, AVX512>(o, b, h, t, p, &mut biased, &mut scratch);
        t += 1;
        if t == l.tokens {
            (t, h) = (0, h + 1);
            if h == l.heads {
                (h, b) = (0, b + 1);
            }
        }
    }
}

/// The output row of [`head_rows_of`] for batch element `b`, head `h`, token `t`. `biased` holds
/// `head_dim` values when the part has a bias, `scratch` `2·head_dim` when `HD = 0`.
#[inline(always)]
fn head_row<const HD: usize, const AVX512: bool>(
    o: &mut [MaybeUninit<f32>],
    b: usize,
    h: usize,
    t: usize,
    p: &HeadPart,
    biased: &mut [f32],
    scratch: &mut [f32],
) {
    let l = p.layout;
    let hd = if HD == 0 { l.head_dim } else { HD };
    let mut src = &p.qkv[(((b * l.tokens + t) * 3 + p.which) * l.heads + h) * hd..][..hd];
    if let Some(bias) = p.bias {
        let bias = &bias[(p.which * l.heads + h) * hd..][..hd];
        for ((o, &x), &b) in biased.iter_mut().zip(src).zip(bias) {
            *o = x + b;
        }
        src = biased;
    }
    match p.norm {
        None => {
            o.write_copy_of_slice(src);
        }
        Some((weight, eps)) => {
            let (cos, sin) = (&p.cos[t * hd..][..hd], &p.sin_signed[t * hd..][..hd]);
            if HD == 0 {
                norm_rope_row(o, src, &weight[..hd], cos, sin, eps, scratch);
            } else {
                norm_rope_row_of::<HD, AVX512>(o, src, weight, cos, sin, eps);
            }
        }
    }
}

/// One row of RMSNorm (gain `weight`) then RoPE: `o = n·cos + swap_pairs(n)·sin_signed`,
/// `n = x / rms(x) · weight`. `scratch` holds `2·head_dim` values (n and its swapped pairs), so
/// that every loop is element-wise and vectorises.
#[inline(always)]
fn norm_rope_row(
    o: &mut [MaybeUninit<f32>],
    x: &[f32],
    weight: &[f32],
    cos: &[f32],
    sin: &[f32],
    eps: f32,
    scratch: &mut [f32],
) {
    let inv = inv_rms(x, eps);
    let (n, swapped) = scratch.split_at_mut(x.len());
    for ((n, &x), &w) in n.iter_mut().zip(x).zip(weight) {
        *n = x * inv * w;
    }
    for (s, n) in swapped.chunks_exact_mut(2).zip(n.chunks_exact(2)) {
        s[0] = n[1];
        s[1] = n[0];
    }
    for ((((o, &n), &s), &c), &sn) in o.iter_mut().zip(n.iter()).zip(swapped.iter()).zip(cos).zip(sin) {
        o.write(n * c + s * sn);
    }
}

/// [`norm_rope_row`] for a constant head width: `n` lives in registers and its swapped pairs
/// are a shuffle, so no scratch memory is written and read back (same operations, same
/// rounding).
#[inline(always)]
fn norm_rope_row_of<const HD: usize, const AVX512: bool>(
    o: &mut [MaybeUninit<f32>],
    x: &[f32],
    weight: &[f32],
    cos: &[f32],
    sin: &[f32],
    eps: f32,
) {
    let (o, x): (&mut [MaybeUninit<f32>; HD], &[f32; HD]) =
        (o.try_into().expect("a row"), x.try_into().expect("a row"));
    let (weight, cos, sin): (&[f32; HD], &[f32; HD], &[f32; HD]) =
        (weight[..HD].try_into().expect("a row"), cos.try_into().expect("a row"), sin.try_into().expect("a row"));
    let inv = inv_rms(x, eps);
    #[cfg(target_arch = "x86_64")]
    if AVX512 && HD.is_multiple_of(16) {
        // SAFETY: `AVX512` is only set in the kernel versions that run on CPUs with AVX-512.
        return unsafe { attention_avx512::norm_rope_row(o, x, weight, cos, sin, inv) };
    }
    let mut n = [0.0f32; HD];
    for i in 0..HD {
        n[i] = x[i] * inv * weight[i];
    }
    for i in 0..HD {
        o[i].write(n[i] * cos[i] + n[i ^ 1] * sin[i]);
    }
}

/// RMSNorm over `head_dim` then RoPE, for `x` `[B, heads, T, head_dim]` (`cos`, `sin_signed`
/// `[T, head_dim]`, `weight` `[head_dim]`): the queries' or keys' path of [`qkv_heads`] on its
/// own, for training.
pub fn rms_norm_rope(x: &[f32], tokens: usize, weight: &[f32], cos: &[f32], sin_signed: &[f32], eps: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [MaybeUninit<f32>], x: &[f32], first: usize, tokens: usize, weight: &[f32], cos: &[f32], sin: &[f32], eps: f32) {
            let hd = weight.len();
            let mut scratch = vec![0.0f32; 2 * hd];
            let mut t = first % tokens;
            for (o, xs) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)) {
                norm_rope_row(o, xs, weight, &cos[t * hd..][..hd], &sin[t * hd..][..hd], eps, &mut scratch);
                t = if t + 1 == tokens { 0 } else { t + 1 };
            }
        }
    }
    let hd = weight.len();
    new_rows(x.len(), hd, &|first, rows| kernel(rows, &x[first * hd..], first, tokens, weight, cos, sin_signed, eps))
}

/// `v` with each pair of values swapped (RoPE's `sin_signed` as its transpose reads it).
fn swapped_pairs(v: &[f32]) -> Vec<f32> {
    let mut out = v.to_vec();
    out.chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
    out
}

/// The gradient of one row of [`norm_rope_row`]: `dx` from the output gradient `g`, and the
/// gain's gradient added into `dw`. `sin_pairs` is the row of `sin_signed` with its pairs
/// swapped; `scratch` holds `2·head_dim` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one row's slices, one by one
fn norm_rope_row_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    x: &[f32],
    g: &[f32],
    weight: &[f32],
    cos: &[f32],
    sin_pairs: &[f32],
    eps: f32,
    scratch: &mut [f32],
) {
    let (g_pairs, dn) = scratch.split_at_mut(x.len());
    let inv = inv_rms(x, eps);
    for (gp, g) in g_pairs.chunks_exact_mut(2).zip(g.chunks_exact(2)) {
        gp[0] = g[1];
        gp[1] = g[0];
    }
    // Through RoPE's transpose (du_c = g_c·cos_c + g_c'·sin_c', c' = c's pair), then the gain.
    let terms = dn.iter_mut().zip(dw.iter_mut()).zip(g.iter().zip(g_pairs.iter())).zip(cos.iter().zip(sin_pairs));
    for (((((dn, dw), (&g, &gp)), (&c, &s)), &v), &w) in terms.zip(x).zip(weight) {
        let du = g * c + gp * s;
        *dw += du * v * inv;
        *dn = du * w;
    }
    rms_norm_input_grad(dx, dn, x, inv);
}

/// Gradients of [`rms_norm_rope`] from the output gradient `g`: `(dx, dweight)`.
pub fn rms_norm_rope_backward(
    x: &[f32],
    tokens: usize,
    weight: &[f32],
    cos: &[f32],
    sin_signed: &[f32],
    g: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    multiversion! {
        fn kernel(dx: &mut [f32], dw: &mut [f32], x: &[f32], g: &[f32], first: usize, tokens: usize, weight: &[f32], cos: &[f32], sin_pairs: &[f32], eps: f32) {
            let hd = weight.len();
            let mut scratch = vec![0.0f32; 2 * hd];
            let mut t = first % tokens;
            for ((dx, xs), g) in dx.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).zip(g.chunks_exact(hd)) {
                let (c, s) = (&cos[t * hd..][..hd], &sin_pairs[t * hd..][..hd]);
                t = if t + 1 == tokens { 0 } else { t + 1 };
                norm_rope_row_backward(dx, dw, xs, g, weight, c, s, eps, &mut scratch);
            }
        }
    }
    let hd = weight.len();
    let sin_pairs = swapped_pairs(sin_signed);
    let mut dx = vec![0.0; x.len()];
    let dw = for_rows_sum(&mut dx, hd, hd, &|first, rows, dw| {
        let at = first * hd..first * hd + rows.len();
        kernel(rows, dw, &x[at.clone()], &g[at], first, tokens, weight, cos, &sin_pairs, eps)
    });
    (dx, dw)
}

/// The per-head RMSNorm gains of queries and keys (`[head_dim]` each, epsilon `eps`) and the
/// RoPE tables (`[T, head_dim]`) that [`qkv_heads`] applies.
pub struct QkNormRope<'a> {
    /// The queries' RMSNorm gain.
    pub q_weight: &'a [f32],
    /// The keys' RMSNorm gain.
    pub k_weight: &'a [f32],
    /// RoPE's cosines.
    pub cos: &'a [f32],
    /// RoPE's signed sines.
    pub sin_signed: &'a [f32],
    /// RMSNorm's epsilon.
    pub eps: f32,
}

/// Splits the `qkv` projection into heads and applies the per-head RMSNorm and RoPE
/// (`x·cos + swap_pairs(x)·sin_signed`) of `norm_rope` to queries and keys.
/// Returns `(q, k, v)`, each `[B, heads, T, head_dim]` contiguous.
pub fn qkv_heads(qkv: &[f32], layout: &QkvLayout, norm_rope: &QkNormRope) -> [Vec<f32>; 3] {
    let (l, n) = (layout, norm_rope);
    let part = |which: usize, norm: Option<(&[f32], f32)>| {
        let p = HeadPart { qkv, bias: None, layout, which, norm, cos: n.cos, sin_signed: n.sin_signed };
        new_rows(l.batch * l.heads * l.tokens * l.head_dim, l.head_dim, &|first, rows| head_rows(rows, first, &p))
    };
    [part(0, Some((n.q_weight, n.eps))), part(1, Some((n.k_weight, n.eps))), part(2, None)]
}

/// Gradients of [`qkv_heads`] from the gradients `dq`, `dk`, `dv` of its outputs (each
/// `[B, heads, T, head_dim]`): `(dqkv [B, T, 3, heads, head_dim], dq_weight, dk_weight)`,
/// written token row by token row.
pub fn qkv_heads_backward(
    qkv: &[f32],
    layout: &QkvLayout,
    norm_rope: &QkNormRope,
    [dq, dk, dv]: [&[f32]; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    multiversion! {
        fn kernel(dqkv: &mut [f32], dw: &mut [f32], first: usize, l: &QkvLayout, qkv: &[f32], weights: [&[f32]; 2], cos: &[f32], sin_pairs: &[f32], grads: [&[f32]; 3], eps: f32) {
            let hd = l.head_dim;
            let row_len = 3 * l.heads * hd;
            let mut scratch = vec![0.0f32; 2 * hd];
            for (r, out) in dqkv.chunks_exact_mut(row_len).enumerate() {
                let (b, t) = ((first + r) / l.tokens, (first + r) % l.tokens);
                let x = &qkv[(first + r) * row_len..][..row_len];
                let (c, s) = (&cos[t * hd..][..hd], &sin_pairs[t * hd..][..hd]);
                for (i, (out, x)) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)).enumerate() {
                    let (which, h) = (i / l.heads, i % l.heads);
                    let g = &grads[which][((b * l.heads + h) * l.tokens + t) * hd..][..hd];
                    if which == 2 {
                        out.copy_from_slice(g);
                    } else {
                        let dw = &mut dw[which * hd..][..hd];
                        norm_rope_row_backward(out, dw, x, g, weights[which], c, s, eps, &mut scratch);
                    }
                }
            }
        }
    }
    let hd = layout.head_dim;
    let n = norm_rope;
    let sin_pairs = swapped_pairs(n.sin_signed);
    let mut dqkv = vec![0.0; qkv.len()];
    let dw = for_rows_sum(&mut dqkv, 3 * layout.heads * hd, 2 * hd, &|first, rows, dw| {
        kernel(rows, dw, first, layout, qkv, [n.q_weight, n.k_weight], n.cos, &sin_pairs, [dq, dk, dv], n.eps)
    });
    let (dqw, dkw) = dw.split_at(hd);
    (dqkv, dqw.to_vec(), dkw.to_vec())
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
