//! The `qkv` projection split into heads, with the per-head qk-norm + RoPE of queries and keys
//! (the reference's `Attention.forward` before the scores), and its gradient.

use super::isa::Isa;
use super::norm::{norm_rope_row, norm_rope_row_backward, norm_rope_row_of, swapped_pairs};
use super::rows::{for_rows_sum, new_rows};

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
pub(super) struct HeadPart<'a> {
    pub(super) qkv: &'a [f32],
    pub(super) bias: Option<&'a [f32]>,
    pub(super) layout: &'a QkvLayout,
    pub(super) which: usize,
    pub(super) norm: Option<(&'a [f32], f32)>,
    pub(super) cos: &'a [f32],
    pub(super) sin_signed: &'a [f32],
}

multiversion! {
    /// The rows `first..` of one part of [`qkv_heads`] into `out`, every value written.
    pub(super) fn head_rows[isa](out: &mut [f32], first: usize, p: &HeadPart) {
        match p.layout.head_dim {
            16 => head_rows_of::<16, _>(isa, out, first, p),
            32 => head_rows_of::<32, _>(isa, out, first, p),
            64 => head_rows_of::<64, _>(isa, out, first, p),
            _ => head_rows_of::<0, _>(isa, out, first, p),
        }
    }
}

/// [`head_rows`] for head width `HD`, or any width with `HD = 0`. With the width a constant,
/// LLVM unrolls each row's loops into whole vectors, and [`norm_rope_row_of`] keeps each row in
/// registers. One thread, 16 images of 72 tokens: width 16 0.29–0.41 → 0.16–0.18 ms, width 32
/// 1.1–1.6 → 0.63–0.70 ms (the scratch row it replaced was written as scalars and read back as
/// vectors).
#[inline(always)]
fn head_rows_of<const HD: usize, I: Isa>(isa: I, out: &mut [f32], first: usize, p: &HeadPart) {
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
                    head_row::<HD, I>(isa, o, first / per + e, h, t, p, &mut biased, &mut scratch);
                }
            }
        }
        return;
    }
    // Rows of the output are (b, h, t) in order: counters instead of divisions per row.
    let (mut t, bh) = (first % l.tokens, first / l.tokens);
    let (mut b, mut h) = (bh / l.heads, bh % l.heads);
    for o in out.chunks_exact_mut(hd) {
        head_row::<HD, I>(isa, o, b, h, t, p, &mut biased, &mut scratch);
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
#[allow(clippy::too_many_arguments)] // one row's place and buffers, one by one
fn head_row<const HD: usize, I: Isa>(
    isa: I,
    o: &mut [f32],
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
            o.copy_from_slice(src);
        }
        Some((weight, eps)) => {
            let (cos, sin) = (&p.cos[t * hd..][..hd], &p.sin_signed[t * hd..][..hd]);
            if HD == 0 {
                norm_rope_row(o, src, &weight[..hd], cos, sin, eps, scratch);
            } else {
                norm_rope_row_of::<HD, I>(isa, o, src, weight, cos, sin, eps);
            }
        }
    }
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
