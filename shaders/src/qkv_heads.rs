//! The attention's inputs from the `qkv` projection, one cube per (token, part, head): queries
//! and keys through their RMSNorm and the 2-D RoPE, values copied, all into per-head layout.
//!
//! RoPE on interleaved pairs: `out[i] = n[i]·cos[t, i] + n[i ^ 1]·sin_signed[t, i]`, where
//! `n = x / sqrt(mean(x²) + eps) · weight` and `sin_signed` carries rotate-half's sign. `qkv`
//! and the output are f32 or f16 (the mixed-precision products' type: no casts around the
//! kernel), the arithmetic, gains and tables f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index, row_rms, units_for};
use crate::{assert_f32, assert_shape, buffer, contiguous, empty_like, with_float};

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // qkv, gains, tables, output, shape, eps, the cube
fn qkv_heads_kernel<I: Float, F: Float>(
    qkv: &[I],
    q_weight: &[F],
    k_weight: &[F],
    cos: &[F],
    sin_signed: &[F],
    out: &mut [I],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    // Rows of `qkv` viewed as [B, T, 3, heads, head_dim].
    let row = cube_index();
    let rows = batch * tokens * 3 * heads;
    let len = if row < rows { head_dim } else { 0usize };
    let start = row * head_dim;
    let rms = row_rms::<I, F>(qkv, start, len, head_dim, eps, units);

    let head = row % heads;
    let part = (row / heads) % 3;
    let bt = row / (3 * heads);
    let t = bt % tokens;
    let b = bt / tokens;
    // Output [3, B, heads, T, head_dim].
    let dst = (((part * batch + b) * heads + head) * tokens + t) * head_dim;
    let table = t * head_dim;
    let mut i = UNIT_POS as usize;
    while i < len {
        if part == 2 {
            out[dst + i] = qkv[start + i];
        } else {
            let pair = i ^ 1;
            let (w, w_pair) = if part == 0 { (q_weight[i], q_weight[pair]) } else { (k_weight[i], k_weight[pair]) };
            let n = F::cast_from(qkv[start + i]) / rms * w;
            let n_pair = F::cast_from(qkv[start + pair]) / rms * w_pair;
            out[dst + i] = I::cast_from(n * cos[table + i] + n_pair * sin_signed[table + i]);
        }
        i += units;
    }
}

/// `qkv` `[B, T, 3·heads·hd]` (f32 or f16), norm gains `[hd]`, RoPE tables `[T, hd]` (f32) →
/// `[3, B, heads, T, hd]` in `qkv`'s type: queries, keys, values.
pub fn qkv_heads(
    qkv: CubeTensor,
    q_weight: CubeTensor,
    k_weight: CubeTensor,
    cos: CubeTensor,
    sin_signed: CubeTensor,
    heads: usize,
    eps: f32,
) -> CubeTensor {
    let [qkv, q_weight, k_weight, cos, sin_signed] = [qkv, q_weight, k_weight, cos, sin_signed].map(contiguous);
    let shape = qkv.meta.shape().to_vec();
    let [batch, tokens, head_dim] = qkv_layout("qkv_heads", &qkv, heads, &[&cos, &sin_signed], &[&q_weight, &k_weight]);
    assert_f32("qkv_heads", &[&q_weight, &k_weight, &cos, &sin_signed]);
    let out = empty_like(&qkv, qkv_heads_shape(&shape, heads));
    let units = units_for(head_dim);
    // SAFETY: `qkv` is row-major `[B, T, 3·heads·hd]` and `out` `[3, B, heads, T, hd]` in its
    // type, the gains `[hd]` and tables `[T, hd]` f32 (checked); row `row < B·T·3·heads` reads
    // and writes `head_dim` values at `row·head_dim` and at its per-head place, the tables at
    // token `t`'s row and the gains below `head_dim`.
    with_float!(qkv.dtype, "qkv_heads", I => unsafe {
        qkv_heads_kernel::launch_unchecked::<I, f32>(
            &qkv.client,
            cube_count(batch * tokens * 3 * heads),
            CubeDim::new_1d(units as u32),
            buffer(&qkv),
            buffer(&q_weight),
            buffer(&k_weight),
            buffer(&cos),
            buffer(&sin_signed),
            buffer(&out),
            batch,
            tokens,
            heads,
            head_dim,
            eps,
            units,
        );
    });
    out
}

/// `qkv`'s `[B, T, hd]` once checked to be `[B, T, 3·heads·hd]`, with each RoPE table `[T, hd]`
/// and each norm gain `[hd]`: the layout the kernels index by.
pub(crate) fn qkv_layout(
    what: &str,
    qkv: &CubeTensor,
    heads: usize,
    tables: &[&CubeTensor],
    gains: &[&CubeTensor],
) -> [usize; 3] {
    let shape = qkv.meta.shape().to_vec();
    assert!(
        shape.len() == 3 && heads > 0 && shape[2].is_multiple_of(3 * heads),
        "{what}: qkv is [B, T, 3·heads·hd] with {heads} heads, not {shape:?}"
    );
    let (tokens, head_dim) = (shape[1], shape[2] / 3 / heads);
    for t in tables {
        assert_shape(what, "a RoPE table", t, &[tokens, head_dim]);
    }
    for g in gains {
        assert_shape(what, "a norm gain", g, &[head_dim]);
    }
    [shape[0], tokens, head_dim]
}

/// The output shape of [`qkv_heads`] for `qkv` of `shape`.
pub fn qkv_heads_shape(shape: &[usize], heads: usize) -> Vec<usize> {
    vec![3, shape[0], heads, shape[1], shape[2] / 3 / heads]
}
