//! RMSNorm kernels: RMSNorm + adaLN modulation (the blocks' and the final layer's norms), and
//! the per-head qk-norm + RoPE of attention, each with its gradient.

use super::isa::Isa;
use super::math::{inv_rms, sum_by_pairs};
use super::rows::{for_rows_sum, new_rows};

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
pub(super) fn rms_norm_input_grad(dx: &mut [f32], dn: &[f32], x: &[f32], inv: f32) {
    let mean = sum_by_pairs(dn, x) * inv / x.len() as f32;
    for ((dx, &dn), &v) in dx.iter_mut().zip(dn).zip(x) {
        *dx = inv * (dn - v * inv * mean);
    }
}

/// One row of RMSNorm (gain `weight`) then RoPE: `o = n·cos + swap_pairs(n)·sin_signed`,
/// `n = x / rms(x) · weight`. `scratch` holds `2·head_dim` values (n and its swapped pairs), so
/// that every loop is element-wise and vectorises.
#[inline(always)]
pub(super) fn norm_rope_row(
    o: &mut [f32],
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
        *o = n * c + s * sn;
    }
}

/// [`norm_rope_row`] for a constant head width: `n` lives in registers and its swapped pairs
/// are a shuffle, so no scratch memory is written and read back (same operations, same
/// rounding).
#[inline(always)]
pub(super) fn norm_rope_row_of<const HD: usize, I: Isa>(
    isa: I,
    o: &mut [f32],
    x: &[f32],
    weight: &[f32],
    cos: &[f32],
    sin: &[f32],
    eps: f32,
) {
    let (o, x): (&mut [f32; HD], &[f32; HD]) = (o.try_into().expect("a row"), x.try_into().expect("a row"));
    let (weight, cos, sin): (&[f32; HD], &[f32; HD], &[f32; HD]) =
        (weight[..HD].try_into().expect("a row"), cos.try_into().expect("a row"), sin.try_into().expect("a row"));
    let inv = inv_rms(x, eps);
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512()
        && HD.is_multiple_of(16)
    {
        return super::attention_avx512::norm_rope_row(avx512, o, x, weight, cos, sin, inv);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    let mut n = [0.0f32; HD];
    for i in 0..HD {
        n[i] = x[i] * inv * weight[i];
    }
    for i in 0..HD {
        o[i] = n[i] * cos[i] + n[i ^ 1] * sin[i];
    }
}

/// `v` with each pair of values swapped (RoPE's `sin_signed` as its transpose reads it).
pub(super) fn swapped_pairs(v: &[f32]) -> Vec<f32> {
    let mut out = v.to_vec();
    out.chunks_exact_mut(2).for_each(|p| p.swap(0, 1));
    out
}

/// The gradient of one row of [`norm_rope_row`]: `dx` from the output gradient `g`, and the
/// gain's gradient added into `dw`. `sin_pairs` is the row of `sin_signed` with its pairs
/// swapped; `scratch` holds `2·head_dim` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // one row's slices, one by one
pub(super) fn norm_rope_row_backward(
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
