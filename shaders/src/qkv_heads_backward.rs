//! The gradients of [`crate::qkv_heads`] from the gradients `g` of its three parts `[B, heads,
//! T, hd]` (queries, keys, values: separate tensors, as attention's backward pass gives them):
//! for a query or key row, RoPE's transpose `ĝ[i] = g[i]·cos[t, i] + g[i ^ 1]·sin_signed[t, i ^ 1]`,
//! then RMSNorm's
//!
//! - `dqkv = (ĝ·w − x̂·mean(ĝ·w·x̂)) / rms` with `x̂ = x / rms` (values: `g` moved back), one cube
//!   per row, written in `qkv`'s layout `[B, T, 3·heads·hd]`; it works out each row's RMS of
//!   `hd` values as it reads the row, and writes it for the next kernel;
//! - `dw[i] = Σ_rows ĝ[i]·x̂[i]` for the queries' and the keys' gains: partial sums over chunks of
//!   [`ROWS_PER_CHUNK`] rows, one unit per (chunk, part, i), which the caller adds up (a
//!   B/16 batch of 128 has 393 216 query rows: one unit per (part, i) would loop over all).
//!
//! `qkv`, the gradient and `dqkv` are f32 or f16 (as the forward kernel's), the arithmetic, the
//! RMS, the gains, the tables and the partial sums f32.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::qkv_heads::qkv_layout;
use crate::reduce::{cube_count, cube_index, cube_sum, row_rms, units_for};
use crate::{assert_f32, buffer, contiguous, elementwise_grid, empty_f32, empty_like, with_float};

/// `ĝ[i]`: RoPE's transpose of the output gradient at `dst` (the row's start) for channel `i`.
#[cube]
fn rope_transpose<I: Float, F: Float>(
    grad: &[I],
    cos: &[F],
    sin_signed: &[F],
    dst: usize,
    table: usize,
    i: usize,
) -> F {
    let pair = i ^ 1;
    F::cast_from(grad[dst + i]) * cos[table + i] + F::cast_from(grad[dst + pair]) * sin_signed[table + pair]
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the forward's inputs, the gradient, the RMS, the output, shape
fn qkv_heads_dx_kernel<I: Float, F: Float>(
    qkv: &[I],
    q_weight: &[F],
    k_weight: &[F],
    cos: &[F],
    sin_signed: &[F],
    dq: &[I],
    dk: &[I],
    dv: &[I],
    rms: &mut [F],
    dqkv: &mut [I],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    eps: f32,
    #[comptime] units: usize,
) {
    // Rows of `qkv` viewed as [B, T, 3, heads, head_dim], as the forward kernel.
    let row = cube_index();
    let rows = batch * tokens * 3 * heads;
    let len = if row < rows { head_dim } else { 0usize };
    let start = row * head_dim;
    let head = row % heads;
    let part = (row / heads) % 3;
    let bt = row / (3 * heads);
    let t = bt % tokens;
    let b = bt / tokens;
    let dst = ((b * heads + head) * tokens + t) * head_dim;
    let table = t * head_dim;
    let r = row_rms::<I, F>(qkv, start, len, head_dim, eps, units);
    if row < rows && UNIT_POS == 0 {
        rms[row] = r;
    }
    let mut dot = F::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < len && part < 2 {
        let g_hat = if part == 0 {
            rope_transpose::<I, F>(dq, cos, sin_signed, dst, table, i) * q_weight[i]
        } else {
            rope_transpose::<I, F>(dk, cos, sin_signed, dst, table, i) * k_weight[i]
        };
        dot += g_hat * F::cast_from(qkv[start + i]) / r;
        i += units;
    }
    let mean = cube_sum::<F>(dot, units) / F::cast_from(head_dim);
    let mut i = UNIT_POS as usize;
    while i < len {
        if part == 2 {
            dqkv[start + i] = dv[dst + i];
        } else {
            let g_hat = if part == 0 {
                rope_transpose::<I, F>(dq, cos, sin_signed, dst, table, i) * q_weight[i]
            } else {
                rope_transpose::<I, F>(dk, cos, sin_signed, dst, table, i) * k_weight[i]
            };
            dqkv[start + i] = I::cast_from((g_hat - F::cast_from(qkv[start + i]) / r * mean) / r);
        }
        i += units;
    }
}

/// Query (or key) rows per partial sum of [`qkv_heads_dweight`].
pub const ROWS_PER_CHUNK: usize = 256;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the inputs, the partial sums, the shape, the chunks
fn qkv_heads_dweight_kernel<I: Float, F: Float>(
    qkv: &[I],
    cos: &[F],
    sin_signed: &[F],
    dq: &[I],
    dk: &[I],
    rms: &[F],
    partial: &mut [F],
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    chunks: usize,
    #[comptime] rows_per_chunk: usize,
) {
    let unit = ABSOLUTE_POS;
    if unit < chunks * 2 * head_dim {
        let chunk = unit / (2 * head_dim);
        let (part, i) = ((unit / head_dim) % 2, unit % head_dim);
        let rows = batch * tokens * heads;
        let first = chunk * rows_per_chunk;
        let end = if first + rows_per_chunk < rows { first + rows_per_chunk } else { rows };
        let mut sum = F::new(0.0);
        for r in first..end {
            // r enumerates (b, t, head) of this part.
            let (b, t, head) = (r / (tokens * heads), (r / heads) % tokens, r % heads);
            let row = ((b * tokens + t) * 3 + part) * heads + head;
            let dst = ((b * heads + head) * tokens + t) * head_dim;
            let g_hat = if part == 0 {
                rope_transpose::<I, F>(dq, cos, sin_signed, dst, t * head_dim, i)
            } else {
                rope_transpose::<I, F>(dk, cos, sin_signed, dst, t * head_dim, i)
            };
            sum += g_hat * F::cast_from(qkv[row * head_dim + i]) / rms[row];
        }
        partial[unit] = sum;
    }
}

/// `dqkv` `[B, T, 3·heads·hd]` in `qkv`'s type from the forward's inputs, the parts' gradients
/// `[dq, dk, dv]`, each `[B, heads, T, hd]` (`qkv`'s type); and the `qkv` rows' RMS
/// `[B·T·3·heads]` (f32, `sqrt(mean(x²) + eps)` over each row of `hd` values, for
/// [`qkv_heads_dweight`]).
#[allow(clippy::too_many_arguments)] // the forward's inputs and the gradient
pub fn qkv_heads_dx(
    qkv: CubeTensor,
    q_weight: CubeTensor,
    k_weight: CubeTensor,
    cos: CubeTensor,
    sin_signed: CubeTensor,
    [dq, dk, dv]: [CubeTensor; 3],
    heads: usize,
    eps: f32,
) -> (CubeTensor, CubeTensor) {
    let [qkv, q_weight, k_weight, cos, sin_signed, dq, dk, dv] =
        [qkv, q_weight, k_weight, cos, sin_signed, dq, dk, dv].map(contiguous);
    let shape = qkv.meta.shape().to_vec();
    let [batch, tokens, head_dim] =
        qkv_layout("qkv_heads_dx", &qkv, heads, &[&cos, &sin_signed], &[&q_weight, &k_weight]);
    assert_parts("qkv_heads_dx", &qkv, &shape, heads, &[&dq, &dk, &dv]);
    assert_f32("qkv_heads_dx", &[&q_weight, &k_weight, &cos, &sin_signed]);
    let dqkv = empty_like(&qkv, shape);
    let rms = empty_f32(&qkv, vec![batch * tokens * 3 * heads]);
    let units = units_for(head_dim);
    // SAFETY: the operands are row-major in the layouts above; row `row < B·T·3·heads` reads and
    // writes `head_dim` values at `row·head_dim` in `qkv`/`dqkv` and at its per-head place in
    // its part's gradient, the tables at token `t`'s row, the gains below `head_dim`, and
    // writes `rms` at `row`.
    with_float!(qkv.dtype, "qkv_heads_dx", I => unsafe {
        qkv_heads_dx_kernel::launch_unchecked::<I, f32>(
            &qkv.client,
            cube_count(batch * tokens * 3 * heads),
            CubeDim::new_1d(units as u32),
            buffer(&qkv),
            buffer(&q_weight),
            buffer(&k_weight),
            buffer(&cos),
            buffer(&sin_signed),
            buffer(&dq),
            buffer(&dk),
            buffer(&dv),
            buffer(&rms),
            buffer(&dqkv),
            batch,
            tokens,
            heads,
            head_dim,
            eps,
            units,
        );
    });
    (dqkv, rms)
}

/// `[chunks, 2, hd]` (f32): partial sums of the gradients of the queries' and the keys' RMSNorm gains,
/// over chunks of [`ROWS_PER_CHUNK`] rows (their sum over the first dimension is the gradient).
pub fn qkv_heads_dweight(
    qkv: CubeTensor,
    cos: CubeTensor,
    sin_signed: CubeTensor,
    [dq, dk]: [CubeTensor; 2],
    rms: CubeTensor,
    heads: usize,
) -> CubeTensor {
    let [qkv, cos, sin_signed, dq, dk, rms] = [qkv, cos, sin_signed, dq, dk, rms].map(contiguous);
    let shape = qkv.meta.shape().to_vec();
    let [batch, tokens, _] = qkv_layout("qkv_heads_dweight", &qkv, heads, &[&cos, &sin_signed], &[]);
    let rows = rms.meta.shape().num_elements();
    assert_eq!(rows, batch * tokens * 3 * heads, "qkv_heads_dweight: one RMS a row of qkv_heads_dx");
    let out_shape = dweight_partials_shape(&shape, heads);
    let (chunks, head_dim) = (out_shape[0], out_shape[2]);
    assert_parts("qkv_heads_dweight", &qkv, &shape, heads, &[&dq, &dk]);
    assert_f32("qkv_heads_dweight", &[&cos, &sin_signed, &rms]);
    let partial = empty_f32(&qkv, out_shape);
    let (count, cube_dim) = elementwise_grid(&qkv, chunks * 2 * head_dim);
    // SAFETY: one unit per (chunk, part, i) < chunks·2·head_dim (checked in the kernel) reads
    // the query or key rows of its chunk in `qkv`, `dq` or `dk` and `rms` within their layouts and
    // writes `partial` at its index.
    with_float!(qkv.dtype, "qkv_heads_dweight", I => unsafe {
        qkv_heads_dweight_kernel::launch_unchecked::<I, f32>(
            &qkv.client,
            count,
            cube_dim,
            buffer(&qkv),
            buffer(&cos),
            buffer(&sin_signed),
            buffer(&dq),
            buffer(&dk),
            buffer(&rms),
            buffer(&partial),
            batch,
            tokens,
            heads,
            head_dim,
            chunks,
            ROWS_PER_CHUNK,
        );
    });
    partial
}

/// Panics unless each part's gradient is `[B, heads, T, hd]` in `qkv`'s type (`qkv` of `shape`
/// `[B, T, 3·heads·hd]`): the kernels index them so.
fn assert_parts(what: &str, qkv: &CubeTensor, shape: &[usize], heads: usize, grads: &[&CubeTensor]) {
    let part = [shape[0], heads, shape[1], shape[2] / 3 / heads];
    for g in grads {
        assert_eq!(g.dtype, qkv.dtype, "{what}: the gradients are in qkv's type");
        assert_eq!(g.meta.shape().to_vec(), part, "{what}: each part's gradient is [B, heads, T, hd]");
    }
}

/// The shape of [`qkv_heads_dweight`]'s partial sums for `qkv` of `shape` `[B, T, 3·heads·hd]`.
pub fn dweight_partials_shape(shape: &[usize], heads: usize) -> Vec<usize> {
    let rows = shape[0] * shape[1] * heads;
    vec![rows.div_ceil(ROWS_PER_CHUNK).max(1), 2, shape[2] / 3 / heads]
}
