//! Attention on the CPU: `softmax(scale·q·kᵀ)·v` per head, for sampling (values only) and for
//! training (also the probabilities, then the gradients of `q`, `k` and `v`), one batch element
//! per task.
//!
//! The `[T, T]` products of a head are small (T ≈ 70, head width 16–64), so they run as
//! register-blocked loops rather than through gemm: a block of [`QUERY_ROWS`] rows at a time,
//! whose accumulators stay in vector registers and form independent chains of additions. The
//! output is written straight in token order `[B, T, heads·head_dim]` (the `proj` layer's
//! input), and its gradient is read from there, so no transposed copies are made.

use core::cell::RefCell;
use core::mem::MaybeUninit;

use super::elementwise::softmax_row;
use super::heads::{HeadPart, QkNormRope, QkvLayout, head_rows};
use super::isa::Isa;
use super::math::sum_by_pairs;
use super::rows::zeroed;

/// Shapes of [`attention`]: `q`, `k`, `v` `[B, heads, T, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Batch size B.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Tokens T.
    pub tokens: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl AttentionShape {
    /// Values of `q` (or `k`, `v`, or the output) per batch element.
    fn per_batch(&self) -> usize {
        self.heads * self.tokens * self.head_dim
    }

    /// Score columns per row, rounded up to whole [`BLOCK`]s.
    fn padded(&self) -> usize {
        self.tokens.div_ceil(BLOCK) * BLOCK
    }
}

/// Head widths the kernels here take (the presets' 16, 32 and 64).
pub fn attention_supports(head_dim: usize) -> bool {
    matches!(head_dim, 16 | 32 | 64)
}

/// Score columns computed at once (one AVX-512 register of accumulators per row).
const BLOCK: usize = 16;

/// Rows computed at once: each block of `kᵀ` and each row of `v` loaded serves this many rows.
/// Four natively. Two in wasm, whose engines have 16 SIMD registers of 4 lanes: four rows'
/// accumulators (16 of them at head width 16) were spilled, and with two the browser's attention
/// ran 1.4× (JiT-T/4) and 1.5× (JiT-S/4) faster relative to its matrix products (V8 profiles).
const QUERY_ROWS: usize = if cfg!(target_arch = "wasm32") { 2 } else { 4 };

/// Runs `$body` for `$i0` over `0..$n` in blocks of [`QUERY_ROWS`], then one row at a time, with
/// the const `$r` the block's row count.
macro_rules! in_row_blocks {
    ($n:expr, |$i0:ident, $r:ident| $body:expr) => {{
        let n = $n;
        let full = n / QUERY_ROWS * QUERY_ROWS;
        {
            const $r: usize = QUERY_ROWS;
            for $i0 in (0..full).step_by($r) {
                $body;
            }
        }
        {
            const $r: usize = 1;
            for $i0 in full..n {
                $body;
            }
        }
    }};
}

/// `s[r][j] = Σ_c a[i0 + r][c]·b[j][c]` for `R` rows of `a` `[n, HD]`, from `b_t` = `bᵀ`
/// `[HD, padded]`, into rows of `padded` values of `s`.
#[inline(always)]
fn scores<const HD: usize, const R: usize, I: Isa>(
    isa: I,
    s: &mut [f32],
    a: &[f32],
    i0: usize,
    b_t: &[f32],
    padded: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512()
        && R == super::attention_avx512::ROWS
    {
        return super::attention_avx512::scores::<HD>(avx512, s, a, i0, b_t, padded);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = isa.avx2()
        && R == super::attention_avx2::ROWS
    {
        return super::attention_avx2::scores::<HD>(avx2, s, a, i0, b_t, padded);
    }
    let rows: [&[f32; HD]; R] = std::array::from_fn(|r| a[(i0 + r) * HD..][..HD].try_into().expect("HD values"));
    for jb in (0..padded).step_by(BLOCK) {
        let mut acc = [[0.0f32; BLOCK]; R];
        for c in 0..HD {
            let bc: &[f32; BLOCK] = b_t[c * padded + jb..][..BLOCK].try_into().expect("a block");
            for r in 0..R {
                let ac = rows[r][c];
                for j in 0..BLOCK {
                    acc[r][j] = isa.mul_add(ac, bc[j], acc[r][j]);
                }
            }
        }
        for r in 0..R {
            s[r * padded + jb..][..BLOCK].copy_from_slice(&acc[r]);
        }
    }
}

/// In place: `softmax(scale·x)` over the first `tokens` values of each of `R` rows of `padded`
/// values in `s`.
#[inline(always)]
fn softmax_block<const R: usize, I: Isa>(isa: I, s: &mut [f32], padded: usize, tokens: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512()
        && R == super::attention_avx512::ROWS
    {
        return super::attention_avx512::softmax(avx512, s, padded, tokens, scale);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(avx2) = isa.avx2()
        && R == super::attention_avx2::ROWS
    {
        return super::attention_avx2::softmax(avx2, s, padded, tokens, scale);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    for row in s.chunks_exact_mut(padded).take(R) {
        softmax_row(&mut row[..tokens], scale);
    }
}

/// `o[r] = Σ_j coef[r·rs + j·cs]·rows[j]` for `R` output rows, `rows` `[n, HD]`.
#[inline(always)]
fn combine<const HD: usize, const R: usize, I: Isa>(
    isa: I,
    coef: &[f32],
    rs: usize,
    cs: usize,
    rows: &[f32],
) -> [[f32; HD]; R] {
    #[cfg(target_arch = "x86_64")]
    if let Some(avx512) = isa.avx512()
        && R == super::attention_avx512::ROWS
    {
        return super::attention_avx512::combine::<HD, R>(avx512, coef, rs, cs, rows);
    }
    // AVX2 has 16 vector registers of 8 lanes: four rows of width 32 or 64 (16 or 32
    // accumulators) were spilled to the stack. Two rows of width 32, or one of 64, keep 8.
    #[cfg(target_arch = "x86_64")]
    if isa.avx2().is_some() && R == 4 && HD >= 32 {
        let mut o = [[0.0f32; HD]; R];
        if HD == 32 {
            for g in [0, 2] {
                [o[g], o[g + 1]] = combine::<HD, 2, I>(isa, &coef[g * rs..], rs, cs, rows);
            }
        } else {
            for (g, o) in o.iter_mut().enumerate() {
                [*o] = combine::<HD, 1, I>(isa, &coef[g * rs..], rs, cs, rows);
            }
        }
        return o;
    }
    let mut o = [[0.0f32; HD]; R];
    for (j, row) in rows.chunks_exact(HD).enumerate() {
        let row: &[f32; HD] = row.try_into().expect("HD values");
        for r in 0..R {
            let p = coef[r * rs + j * cs];
            for c in 0..HD {
                o[r][c] = isa.mul_add(p, row[c], o[r][c]);
            }
        }
    }
    o
}

/// `m` `[n, HD]` transposed into `t` `[HD, padded]` (columns beyond `n` stay as they are: zero).
#[inline(always)]
fn transpose<const HD: usize>(t: &mut [f32], m: &[f32], padded: usize) {
    for (j, row) in m.chunks_exact(HD).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * padded + j] = x;
        }
    }
}

/// The forward pass of one batch element, head width `HD`: `out` `[T, heads·HD]`; with `p`
/// (`[heads, T, T]`) also the probabilities.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the kernel variant, the output, the probabilities and the inputs
fn forward<const HD: usize, I: Isa>(
    isa: I,
    out: &mut [f32],
    mut p: Option<&mut [f32]>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape,
    scale: f32,
) {
    let (tokens, padded) = (shape.tokens, shape.padded());
    let d = shape.heads * HD;
    let mut k_t = vec![0.0f32; HD * padded];
    let mut s = vec![0.0f32; QUERY_ROWS * padded];
    for h in 0..shape.heads {
        let at = h * tokens * HD..(h + 1) * tokens * HD;
        let (q, k, v) = (&q[at.clone()], &k[at.clone()], &v[at]);
        transpose::<HD>(&mut k_t, k, padded);
        in_row_blocks!(tokens, |i0, R| {
            scores::<HD, R, I>(isa, &mut s, q, i0, &k_t, padded);
            softmax_block::<R, I>(isa, &mut s, padded, tokens, scale);
            for r in 0..R {
                let row = &mut s[r * padded..][..tokens];
                if let Some(p) = p.as_deref_mut() {
                    p[(h * tokens + i0 + r) * tokens..][..tokens].copy_from_slice(row);
                }
            }
            let o = combine::<HD, R, I>(isa, &s, padded, 1, v);
            for (r, o) in o.iter().enumerate() {
                out[(i0 + r) * d + h * HD..][..HD].copy_from_slice(o);
            }
        });
    }
}

/// The backward pass of one batch element, head width `HD`, from the probabilities `p`
/// `[heads, T, T]` and the output gradient `g` `[T, heads·HD]`: per head
/// `dv = pᵀ·g`, `ds = scale·p·(g·vᵀ − Σ_row (g·vᵀ)·p)`, `dq = ds·k`, `dk = dsᵀ·q`.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the forward pass's inputs, its probabilities and the output gradient
fn backward<const HD: usize, I: Isa>(
    isa: I,
    [dq, dk, dv]: [&mut [f32]; 3],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    g: &[f32],
    shape: &AttentionShape,
    scale: f32,
) {
    let (tokens, padded) = (shape.tokens, shape.padded());
    let d = shape.heads * HD;
    let mut v_t = vec![0.0f32; HD * padded];
    let mut gh = vec![0.0f32; tokens * HD];
    let mut ds = vec![0.0f32; tokens * padded];
    for h in 0..shape.heads {
        let at = h * tokens * HD..(h + 1) * tokens * HD;
        let (q, k, v) = (&q[at.clone()], &k[at.clone()], &v[at.clone()]);
        let (dq, dk, dv) = (&mut dq[at.clone()], &mut dk[at.clone()], &mut dv[at]);
        let p = &p[h * tokens * tokens..][..tokens * tokens];
        for (i, row) in gh.chunks_exact_mut(HD).enumerate() {
            row.copy_from_slice(&g[i * d + h * HD..][..HD]);
        }
        transpose::<HD>(&mut v_t, v, padded);
        // dv[j] = Σ_i p[i][j]·g[i]
        in_row_blocks!(tokens, |j0, R| {
            let o = combine::<HD, R, I>(isa, &p[j0..], 1, tokens, &gh);
            for (r, o) in o.iter().enumerate() {
                dv[(j0 + r) * HD..][..HD].copy_from_slice(o);
            }
        });
        // ds rows: the probabilities' gradient g·vᵀ, then softmax's backward (with the scale).
        in_row_blocks!(tokens, |i0, R| {
            scores::<HD, R, I>(isa, &mut ds[i0 * padded..], &gh, i0, &v_t, padded);
        });
        for (row, p) in ds.chunks_exact_mut(padded).zip(p.chunks_exact(tokens)) {
            let row = &mut row[..tokens];
            let dot = sum_by_pairs(row, p);
            row.iter_mut().zip(p).for_each(|(x, &p)| *x = scale * p * (*x - dot));
        }
        // dq[i] = Σ_j ds[i][j]·k[j];  dk[j] = Σ_i ds[i][j]·q[i]
        in_row_blocks!(tokens, |i0, R| {
            let o = combine::<HD, R, I>(isa, &ds[i0 * padded..], padded, 1, k);
            for (r, o) in o.iter().enumerate() {
                dq[(i0 + r) * HD..][..HD].copy_from_slice(o);
            }
        });
        in_row_blocks!(tokens, |j0, R| {
            let o = combine::<HD, R, I>(isa, &ds[j0..], 1, padded, q);
            for (r, o) in o.iter().enumerate() {
                dk[(j0 + r) * HD..][..HD].copy_from_slice(o);
            }
        });
    }
}

/// `N` new buffers of `lens` values, each cut into `batch` equal chunks, filled by
/// `f(b, the chunks of batch element b)`: one task per batch element (in parallel with the
/// `rayon` feature). Each chunk is zeroed by the task that fills it.
fn new_batches<const N: usize>(
    lens: [usize; N],
    batch: usize,
    f: &(dyn Fn(usize, [&mut [f32]; N]) + Sync),
) -> [Vec<f32>; N] {
    if batch == 0 || lens.contains(&0) {
        return lens.map(|len| vec![0.0; len]);
    }
    assert!(lens.iter().all(|len| len % batch == 0), "buffers of whole batch elements");
    let mut bufs: [Vec<f32>; N] = lens.map(Vec::with_capacity);
    let mut i = 0;
    let mut chunks = bufs.each_mut().map(|buf| {
        let per = lens[i] / batch;
        i += 1;
        buf.spare_capacity_mut()[..per * batch].chunks_exact_mut(per)
    });
    let tasks: Vec<[&mut [MaybeUninit<f32>]; N]> =
        (0..batch).map(|_| chunks.each_mut().map(|c| c.next().expect("a chunk per batch element"))).collect();
    let task = |(b, chunks): (usize, [&mut [MaybeUninit<f32>]; N])| f(b, chunks.map(zeroed));
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        tasks.into_par_iter().enumerate().for_each(task);
    }
    #[cfg(not(feature = "rayon"))]
    tasks.into_iter().enumerate().for_each(task);
    for (buf, len) in bufs.iter_mut().zip(lens) {
        // SAFETY: the tasks zeroed every chunk, and the chunks cover all `len` values.
        unsafe { buf.set_len(len) };
    }
    bufs
}

multiversion! {
    /// [`forward`] for one batch element, dispatched on the head width.
    fn forward_kernel[isa](out: &mut [f32], p: Option<&mut [f32]>, q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, scale: f32) {
        match shape.head_dim {
            16 => forward::<16, _>(isa, out, p, q, k, v, shape, scale),
            32 => forward::<32, _>(isa, out, p, q, k, v, shape, scale),
            64 => forward::<64, _>(isa, out, p, q, k, v, shape, scale),
            _ => unreachable!("attention_supports"),
        }
    }
}

multiversion! {
    /// [`backward`] for one batch element, dispatched on the head width.
    fn backward_kernel[isa](d: [&mut [f32]; 3], q: &[f32], k: &[f32], v: &[f32], p: &[f32], g: &[f32], shape: &AttentionShape, scale: f32) {
        match shape.head_dim {
            16 => backward::<16, _>(isa, d, q, k, v, p, g, shape, scale),
            32 => backward::<32, _>(isa, d, q, k, v, p, g, shape, scale),
            64 => backward::<64, _>(isa, d, q, k, v, p, g, shape, scale),
            _ => unreachable!("attention_supports"),
        }
    }
}

/// Attention without gradients: `softmax(scale·q·kᵀ)·v` for every head of `q`, `k`, `v`
/// `[B, heads, T, head_dim]`, in token order `[B, T, heads·head_dim]`. Neither the `[B, heads,
/// T, T]` scores nor transposed copies are materialised. `head_dim` must be one of
/// [`attention_supports`].
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, scale: f32) -> Vec<f32> {
    let per = shape.per_batch();
    let [out] = new_batches([shape.batch * per], shape.batch, &|b, [out]| {
        let at = b * per..(b + 1) * per;
        forward_kernel(out, None, &q[at.clone()], &k[at.clone()], &v[at], shape, scale)
    });
    out
}

/// [`super::qkv_heads`] then [`attention`] for sampling, from the `qkv` projection `[B, T, 3,
/// heads, head_dim]`: `[B, T, heads·head_dim]`. One batch element per task, whose queries, keys
/// and values (`3·heads·T·head_dim` values, 166 KB for JiT-S) live only in that task's scratch
/// buffer, which stays in cache, instead of three arrays of the whole batch written out to
/// memory and read back. `bias` (`3·heads·head_dim` values: the `qkv` layer's, when `qkv` is its
/// product without it) is added as the rows are read. `head_dim` must be one of
/// [`attention_supports`].
pub fn qkv_attention(
    qkv: &[f32],
    bias: Option<&[f32]>,
    layout: &QkvLayout,
    norm_rope: &QkNormRope,
    scale: f32,
) -> Vec<f32> {
    let (l, n) = (layout, norm_rope);
    let shape = AttentionShape { batch: l.batch, heads: l.heads, tokens: l.tokens, head_dim: l.head_dim };
    let per = shape.per_batch();
    let parts = [(0, Some((n.q_weight, n.eps))), (1, Some((n.k_weight, n.eps))), (2, None)]
        .map(|(which, norm)| HeadPart { qkv, bias, layout, which, norm, cos: n.cos, sin_signed: n.sin_signed });
    let [out] = new_batches([l.batch * per], l.batch, &|b, [out]| {
        // This thread's scratch, kept between calls (zeroed once, not per image); a fresh one
        // should the thread already be using it.
        HEADS.with(|scratch| {
            let mut fresh = Vec::new();
            let mut kept = scratch.try_borrow_mut();
            let heads = match kept.as_deref_mut() {
                Ok(kept) => kept,
                Err(_) => &mut fresh,
            };
            if heads.len() < 3 * per {
                heads.resize(3 * per, 0.0);
            }
            for (part, rows) in parts.iter().zip(heads.chunks_exact_mut(per)) {
                head_rows(rows, b * l.heads * l.tokens, part);
            }
            let (q, kv) = heads.split_at(per);
            let (k, v) = kv[..2 * per].split_at(per);
            forward_kernel(out, None, q, k, v, &shape, scale)
        })
    });
    out
}

thread_local! {
    /// [`qkv_attention`]'s per-thread scratch: one batch element's queries, keys and values.
    static HEADS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// [`attention`] for training: the output and the probabilities `[B, heads, T, T]`, which
/// [`attention_backward`] takes.
pub fn attention_with_probs(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (per, per_p) = (shape.per_batch(), shape.heads * shape.tokens * shape.tokens);
    let [out, p] = new_batches([shape.batch * per, shape.batch * per_p], shape.batch, &|b, [out, p]| {
        let at = b * per..(b + 1) * per;
        forward_kernel(out, Some(p), &q[at.clone()], &k[at.clone()], &v[at], shape, scale)
    });
    (out, p)
}

/// The gradients `[dq, dk, dv]` (`[B, heads, T, head_dim]` each) of [`attention`] from the
/// probabilities `p` of [`attention_with_probs`] and the output gradient `g` `[B, T,
/// heads·head_dim]`.
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    g: &[f32],
    shape: &AttentionShape,
    scale: f32,
) -> [Vec<f32>; 3] {
    let (per, per_p) = (shape.per_batch(), shape.heads * shape.tokens * shape.tokens);
    let n = shape.batch * per;
    new_batches([n; 3], shape.batch, &|b, d| {
        let at = b * per..(b + 1) * per;
        let pb = &p[b * per_p..][..per_p];
        backward_kernel(d, &q[at.clone()], &k[at.clone()], &v[at.clone()], pb, &g[at], shape, scale)
    })
}
