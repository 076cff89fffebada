//! Attention `o = softmax(scale·q·kᵀ)·v` as a flash-style pair: the `[B, heads, T, T]` scores
//! and probabilities never reach memory.
//!
//! - [`flash_attention`]: one kernel. One cube per image, head and block of [`ROWS`] queries,
//!   one unit per query. The keys and values pass through shared memory a tile at a time, and
//!   each unit keeps a running softmax (maximum, sum, weighted values). It writes `o` in token
//!   order `[B, T, heads·hd]` and each query's log-sum-exp `lse = max + ln Σ exp(s − max)`
//!   `[B, heads, T]` for the backward pass.
//! - [`flash_attention_backward`]: two kernels. Both recompute `p = exp(scale·q·k − lse)`.
//!   - The queries' kernel (one unit per query): `δ = Σ_d do·o`, then `dq = scale·Σ_j ds_j·k_j`
//!     with `ds = p·(do·v − δ)`. It writes `δ` for the keys' kernel.
//!   - The keys' kernel (one unit per key): `dv = Σ_i p_i·do_i` and `dk = scale·Σ_i ds_i·q_i`.
//!     Tiles of queries, their output gradients, `lse` and `δ` pass through shared memory.
//!
//! `q`, `k`, `v` `[B, heads, T, hd]`, `o` and its gradient are f32 or f16. The arithmetic, `lse`
//! and `δ` are f32. The head width is a compile-time constant (one compiled kernel per width),
//! a multiple of 4 (rows move four channels at a time) up to [`MAX_HEAD_DIM`]. The tiles take as many rows (up to [`ROWS`]) as the device's
//! workgroup memory holds: 32 keys of 64 channels in WebGPU's guaranteed 16 KiB.

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::reduce::{cube_count, cube_index};
use crate::{buffer, contiguous, empty_f32, empty_like, with_float};

/// Queries (or keys) per cube: one unit each.
pub const ROWS: usize = 64;

/// The widest head the kernels take (each unit keeps up to four rows of it in registers).
pub const MAX_HEAD_DIM: usize = 128;

/// Rows per tile for a kernel whose tiles take `per_row` f32 values a row, in the device's
/// workgroup memory (`shared` bytes; WebGPU guarantees 16 KiB): a power of two, at most
/// [`ROWS`].
fn tile_rows(shared: usize, per_row: usize) -> usize {
    let rows = shared / 4 / per_row.max(1);
    (1usize << rows.max(1).ilog2()).min(ROWS)
}

/// Rows per key tile of the forward and queries' kernels: a key and a value row each.
fn key_rows(q: &CubeTensor, head_dim: usize) -> usize {
    tile_rows(q.client.properties().hardware.max_shared_memory_size, 2 * head_dim)
}

/// Rows per query tile of the keys' kernel: a query row, its output gradient, `lse` and `δ`.
fn query_rows(q: &CubeTensor, head_dim: usize) -> usize {
    tile_rows(q.client.properties().hardware.max_shared_memory_size, 2 * head_dim + 2)
}

/// Four channels of a row: the unit in which rows move through workgroup memory and registers
/// (one 16-byte read in place of four).
type Quad = Vector<f32, Const<4>>;

/// `src[at .. at + 4]` in f32, times `factor`.
#[cube]
fn quad<F: Float>(src: &[F], at: usize, factor: f32) -> Quad {
    let mut v = Quad::new(0.0f32);
    v.insert(0usize, f32::cast_from(src[at]) * factor);
    v.insert(1usize, f32::cast_from(src[at + 1]) * factor);
    v.insert(2usize, f32::cast_from(src[at + 2]) * factor);
    v.insert(3usize, f32::cast_from(src[at + 3]) * factor);
    v
}

/// The sum of a quad's four values.
#[cube]
fn quad_sum(v: Quad) -> f32 {
    v.extract(0usize) + v.extract(1usize) + v.extract(2usize) + v.extract(3usize)
}

/// Rows `first ..` of `src` (`[B·heads, T, hd]`, the head's rows from `start`) into `tile`,
/// zeros past the last token: the cube's units share the `rows × head_dim` values.
#[cube]
fn load_tile<F: Float>(
    src: &[F],
    tile: &mut Shared<[Quad]>,
    start: usize,
    first: usize,
    tokens: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) {
    let quads = comptime!(head_dim / 4);
    let mut idx = UNIT_POS as usize;
    while idx < rows * quads {
        let mut v = Quad::new(0.0f32);
        if first + idx / quads < tokens {
            v = quad::<F>(src, start + first * head_dim + idx * 4, 1.0f32);
        }
        tile[idx] = v;
        idx += ROWS;
    }
}

/// Keys and values `first ..` into their tiles, between barriers (the previous tile's reads
/// done before, the whole tile written after).
#[cube]
#[allow(clippy::too_many_arguments)] // the sources, the tiles, the rows and the shape
fn load_keys<F: Float>(
    k: &[F],
    v: &[F],
    k_tile: &mut Shared<[Quad]>,
    v_tile: &mut Shared<[Quad]>,
    start: usize,
    first: usize,
    tokens: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) {
    sync_cube();
    load_tile::<F>(k, k_tile, start, first, tokens, rows, head_dim);
    load_tile::<F>(v, v_tile, start, first, tokens, rows, head_dim);
    sync_cube();
}

/// Like [`load_tile`], from a tensor in token order `[B, T, heads·hd]` (`o`'s gradient).
#[cube]
#[allow(clippy::too_many_arguments)] // the source and its shape, the tile and its place
fn load_token_tile<F: Float>(
    src: &[F],
    tile: &mut Shared<[Quad]>,
    image: usize,
    head: usize,
    heads: usize,
    first: usize,
    tokens: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) {
    let quads = comptime!(head_dim / 4);
    let mut idx = UNIT_POS as usize;
    while idx < rows * quads {
        let row = first + idx / quads;
        let mut v = Quad::new(0.0f32);
        if row < tokens {
            v = quad::<F>(src, ((image * tokens + row) * heads + head) * head_dim + (idx % quads) * 4, 1.0f32);
        }
        tile[idx] = v;
        idx += ROWS;
    }
}

/// `Σ_d a[d]·tile[row·hd + d]`.
#[cube]
fn dot_tile(a: &Array<Quad>, tile: &Shared<[Quad]>, row: usize, #[comptime] head_dim: usize) -> f32 {
    let quads = comptime!(head_dim / 4);
    let at = row * quads;
    let mut sum = Quad::new(0.0f32);
    #[unroll]
    for c in 0..quads {
        sum += a[c] * tile[at + c];
    }
    quad_sum(sum)
}

/// `Σ_d a[d]·b[d]` of two rows.
#[cube]
fn dot_rows(a: &Array<Quad>, b: &Array<Quad>, #[comptime] head_dim: usize) -> f32 {
    let mut sum = Quad::new(0.0f32);
    #[unroll]
    for c in 0..comptime!(head_dim / 4) {
        sum += a[c] * b[c];
    }
    quad_sum(sum)
}

/// `acc[d] += w·tile[row·hd + d]`.
#[cube]
fn add_tile(acc: &mut Array<Quad>, w: f32, tile: &Shared<[Quad]>, row: usize, #[comptime] head_dim: usize) {
    let quads = comptime!(head_dim / 4);
    let at = row * quads;
    let w = Quad::new(w);
    #[unroll]
    for c in 0..quads {
        acc[c] += w * tile[at + c];
    }
}

/// `row = src[at .. at + hd]` in f32, times `factor`.
#[cube]
fn load_row<F: Float>(row: &mut Array<Quad>, src: &[F], at: usize, factor: f32, #[comptime] head_dim: usize) {
    #[unroll]
    for c in 0..comptime!(head_dim / 4) {
        row[c] = quad::<F>(src, at + c * 4, factor);
    }
}

/// `dst[at .. at + hd] = row·factor` in `F`.
#[cube]
fn store_row<F: Float>(dst: &mut [F], at: usize, row: &Array<Quad>, factor: f32, #[comptime] head_dim: usize) {
    #[unroll]
    for c in 0..comptime!(head_dim / 4) {
        let v = row[c];
        let to = at + c * 4;
        dst[to] = F::cast_from(v.extract(0usize) * factor);
        dst[to + 1] = F::cast_from(v.extract(1usize) * factor);
        dst[to + 2] = F::cast_from(v.extract(2usize) * factor);
        dst[to + 3] = F::cast_from(v.extract(3usize) * factor);
    }
}

/// The cube's head (`image·heads + head`, of `all_heads`) and its unit's row (of `tokens`), from
/// cubes numbered head-major, blocks of [`ROWS`] rows a head; then the rows the cube's tile loop
/// spans (none for a spare cube past the last head: the trip count is the cube's, so every unit
/// reaches the same barriers) and whether the unit's row exists.
#[cube]
fn head_and_row(all_heads: usize, tokens: usize) -> (usize, usize, usize, bool) {
    let cube = cube_index();
    let blocks = tokens.div_ceil(ROWS);
    let (head, row) = (cube / blocks, (cube % blocks) * ROWS + UNIT_POS as usize);
    let span = if head < all_heads { tokens } else { 0usize };
    (head, row, span, head < all_heads && row < tokens)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // three inputs, two outputs, the shape, the scale, the tiling
fn flash_attention_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    out: &mut [F],
    lse: &mut [f32],
    all_heads: usize,
    heads: usize,
    tokens: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] keys: usize,
) {
    let (bh, i, span, live) = head_and_row(all_heads, tokens);
    let start = bh * tokens * head_dim;
    let mut qi = Array::<Quad>::new(comptime!(head_dim / 4));
    if live {
        load_row::<F>(&mut qi, q, start + i * head_dim, scale, head_dim);
    }
    let mut acc = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut k_tile = Shared::<[Quad]>::new_slice(keys * comptime!(head_dim / 4));
    let mut v_tile = Shared::<[Quad]>::new_slice(keys * comptime!(head_dim / 4));
    let mut max = f32::min_value();
    let mut sum = 0.0f32;
    let mut first = 0usize;
    while first < span {
        load_keys::<F>(k, v, &mut k_tile, &mut v_tile, start, first, tokens, keys, head_dim);
        let count = min(keys, tokens - first);
        for j in 0..count {
            let s = dot_tile(&qi, &k_tile, j, head_dim);
            if s > max {
                // A new maximum: the running sum and values rescale to it.
                let alpha = f32::exp(max - s);
                sum *= alpha;
                let scale_by = Quad::new(alpha);
                #[unroll]
                for c in 0..comptime!(head_dim / 4) {
                    acc[c] *= scale_by;
                }
                max = s;
            }
            let p = f32::exp(s - max);
            sum += p;
            add_tile(&mut acc, p, &v_tile, j, head_dim);
        }
        first += keys;
    }
    if live {
        let (image, head) = (bh / heads, bh % heads);
        store_row::<F>(out, ((image * tokens + i) * heads + head) * head_dim, &acc, 1.0f32 / sum, head_dim);
        lse[bh * tokens + i] = max + f32::ln(sum);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the forward's inputs and outputs, the gradient, dq, δ, shape
fn flash_attention_dq_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    out: &[F],
    lse: &[f32],
    grad: &[F],
    dq: &mut [F],
    delta: &mut [f32],
    all_heads: usize,
    heads: usize,
    tokens: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] keys: usize,
) {
    let (bh, i, span, live) = head_and_row(all_heads, tokens);
    let start = bh * tokens * head_dim;
    let (image, head) = (bh / heads, bh % heads);
    let token_row = ((image * tokens + i) * heads + head) * head_dim;
    let mut qi = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut gi = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut lse_i = 0.0f32;
    let mut delta_i = 0.0f32;
    if live {
        load_row::<F>(&mut qi, q, start + i * head_dim, scale, head_dim);
        load_row::<F>(&mut gi, grad, token_row, 1.0f32, head_dim);
        let mut out_row = Array::<Quad>::new(comptime!(head_dim / 4));
        load_row::<F>(&mut out_row, out, token_row, 1.0f32, head_dim);
        delta_i = dot_rows(&gi, &out_row, head_dim);
        delta[bh * tokens + i] = delta_i;
        lse_i = lse[bh * tokens + i];
    }
    let mut acc = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut k_tile = Shared::<[Quad]>::new_slice(keys * comptime!(head_dim / 4));
    let mut v_tile = Shared::<[Quad]>::new_slice(keys * comptime!(head_dim / 4));
    let mut first = 0usize;
    while first < span {
        load_keys::<F>(k, v, &mut k_tile, &mut v_tile, start, first, tokens, keys, head_dim);
        let count = min(keys, tokens - first);
        for j in 0..count {
            let p = f32::exp(dot_tile(&qi, &k_tile, j, head_dim) - lse_i);
            let ds = p * (dot_tile(&gi, &v_tile, j, head_dim) - delta_i);
            add_tile(&mut acc, ds, &k_tile, j, head_dim);
        }
        first += keys;
    }
    if live {
        store_row::<F>(dq, start + i * head_dim, &acc, scale, head_dim);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // the forward's inputs, lse, δ, the gradient, dk, dv, shape
fn flash_attention_dkdv_kernel<F: Float>(
    q: &[F],
    k: &[F],
    v: &[F],
    lse: &[f32],
    delta: &[f32],
    grad: &[F],
    dk: &mut [F],
    dv: &mut [F],
    all_heads: usize,
    heads: usize,
    tokens: usize,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] queries: usize,
) {
    let (bh, j, span, live) = head_and_row(all_heads, tokens);
    let start = bh * tokens * head_dim;
    let (image, head) = (bh / heads, bh % heads);
    let mut kj = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut vj = Array::<Quad>::new(comptime!(head_dim / 4));
    if live {
        load_row::<F>(&mut kj, k, start + j * head_dim, scale, head_dim);
        load_row::<F>(&mut vj, v, start + j * head_dim, 1.0f32, head_dim);
    }
    let mut dk_acc = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut dv_acc = Array::<Quad>::new(comptime!(head_dim / 4));
    let mut q_tile = Shared::<[Quad]>::new_slice(queries * comptime!(head_dim / 4));
    let mut g_tile = Shared::<[Quad]>::new_slice(queries * comptime!(head_dim / 4));
    let mut lse_tile = Shared::<[f32]>::new_slice(queries);
    let mut delta_tile = Shared::<[f32]>::new_slice(queries);
    let mut first = 0usize;
    while first < span {
        sync_cube();
        load_tile::<F>(q, &mut q_tile, start, first, tokens, queries, head_dim);
        load_token_tile::<F>(grad, &mut g_tile, image, head, heads, first, tokens, queries, head_dim);
        let unit = UNIT_POS as usize;
        if unit < queries {
            let row = first + unit;
            // Past the last query: p = exp(s − f32::MAX) = 0, so the row adds nothing.
            lse_tile[unit] = if row < tokens { lse[bh * tokens + row] } else { f32::max_value() };
            delta_tile[unit] = if row < tokens { delta[bh * tokens + row] } else { 0.0f32 };
        }
        sync_cube();
        let count = min(queries, tokens - first);
        for r in 0..count {
            let p = f32::exp(dot_tile(&kj, &q_tile, r, head_dim) - lse_tile[r]);
            add_tile(&mut dv_acc, p, &g_tile, r, head_dim);
            let ds = p * (dot_tile(&vj, &g_tile, r, head_dim) - delta_tile[r]);
            add_tile(&mut dk_acc, ds, &q_tile, r, head_dim);
        }
        first += queries;
    }
    if live {
        store_row::<F>(dk, start + j * head_dim, &dk_acc, scale, head_dim);
        store_row::<F>(dv, start + j * head_dim, &dv_acc, 1.0f32, head_dim);
    }
}

/// `q`, `k`, `v` row-major, and their shape `[B, heads, T, hd]` (checked alike).
fn operands(what: &str, q: CubeTensor, k: CubeTensor, v: CubeTensor) -> ([CubeTensor; 3], [usize; 4]) {
    let [q, k, v] = [q, k, v].map(contiguous);
    let dims = q.meta.shape().to_vec();
    assert!(dims.len() == 4, "{what}: q, k and v are [B, heads, T, hd]");
    for t in [&k, &v] {
        assert_eq!(t.meta.shape().to_vec(), dims, "{what}: q, k and v differ in shape");
        assert_eq!(t.dtype, q.dtype, "{what}: q, k and v differ in type");
    }
    let shape = [dims[0], dims[1], dims[2], dims[3]];
    assert!((1..=MAX_HEAD_DIM).contains(&shape[3]), "{what}: heads of 1 to {MAX_HEAD_DIM} channels, not {}", shape[3]);
    ([q, k, v], shape)
}

/// The grid of the three kernels: one cube per head and block of [`ROWS`] rows.
fn grid([b, h, t, _]: [usize; 4]) -> (CubeCount, CubeDim) {
    (cube_count(b * h * t.div_ceil(ROWS)), CubeDim::new_1d(ROWS as u32))
}

/// Attention `softmax(scale·q·kᵀ)·v` for `q`, `k`, `v` `[B, heads, T, hd]` (f32 or f16, one
/// type) → the output in token order `[B, T, heads·hd]` (their type) and each query's
/// log-sum-exp `[B, heads, T]` (f32, for [`flash_attention_backward`]).
pub fn flash_attention(q: CubeTensor, k: CubeTensor, v: CubeTensor, scale: f32) -> (CubeTensor, CubeTensor) {
    let ([q, k, v], shape) = operands("flash_attention", q, k, v);
    let [b, h, t, hd] = shape;
    let out = empty_like(&q, vec![b, t, h * hd]);
    let lse = empty_f32(&q, vec![b, h, t]);
    let (count, dim) = grid(shape);
    // SAFETY: `q`, `k`, `v` hold B·heads·T·hd values (shapes checked), `out` as many and `lse`
    // B·heads·T. A unit reads rows `< T` of its head only and writes its own query's row of
    // `out` and its value of `lse`, and only for a head `< B·heads` and a query `< T`.
    with_float!(q.dtype, "flash_attention", F => unsafe {
        flash_attention_kernel::launch_unchecked::<F>(
            &q.client,
            count,
            dim,
            buffer(&q),
            buffer(&k),
            buffer(&v),
            buffer(&out),
            buffer(&lse),
            b * h,
            h,
            t,
            scale,
            hd,
            key_rows(&q, hd),
        );
    });
    (out, lse)
}

/// [`flash_attention`]'s gradients `(dq, dk, dv)` `[B, heads, T, hd]` (in `q`'s type) from its
/// inputs, its output `out` and log-sum-exp `lse`, and the output's gradient `grad`
/// `[B, T, heads·hd]`.
pub fn flash_attention_backward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    out: CubeTensor,
    lse: CubeTensor,
    grad: CubeTensor,
    scale: f32,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let what = "flash_attention_backward";
    let ([q, k, v], shape) = operands(what, q, k, v);
    let [b, h, t, hd] = shape;
    let [out, lse, grad] = [out, lse, grad].map(contiguous);
    for (name, x, dims) in [("the output", &out, vec![b, t, h * hd]), ("its gradient", &grad, vec![b, t, h * hd])] {
        assert_eq!(x.meta.shape().to_vec(), dims, "{what}: {name} is [B, T, heads·hd]");
        assert_eq!(x.dtype, q.dtype, "{what}: {name} in q's type");
    }
    assert_eq!(lse.meta.shape().to_vec(), vec![b, h, t], "{what}: the log-sum-exp is [B, heads, T]");
    assert_eq!(lse.dtype, burn::tensor::DType::F32, "{what}: the log-sum-exp is f32");
    let [dq, dk, dv] = [0, 1, 2].map(|_| empty_like(&q, vec![b, h, t, hd]));
    let delta = empty_f32(&q, vec![b, h, t]);
    let (count, dim) = grid(shape);
    // SAFETY: as `flash_attention`: every buffer holds its shape's values (checked above); a
    // unit reads rows `< T` of its head, writes its own row of `dq` (or `dk` and `dv`) and its
    // value of `delta`, and only for a head `< B·heads` and a row `< T`. The keys' kernel reads
    // `delta` after the queries' kernel, launched before it on the same stream, wrote it.
    with_float!(q.dtype, "flash_attention_backward", F => unsafe {
        flash_attention_dq_kernel::launch_unchecked::<F>(
            &q.client,
            count.clone(),
            dim,
            buffer(&q),
            buffer(&k),
            buffer(&v),
            buffer(&out),
            buffer(&lse),
            buffer(&grad),
            buffer(&dq),
            buffer(&delta),
            b * h,
            h,
            t,
            scale,
            hd,
            key_rows(&q, hd),
        );
        flash_attention_dkdv_kernel::launch_unchecked::<F>(
            &q.client,
            count,
            dim,
            buffer(&q),
            buffer(&k),
            buffer(&v),
            buffer(&lse),
            buffer(&delta),
            buffer(&grad),
            buffer(&dk),
            buffer(&dv),
            b * h,
            h,
            t,
            scale,
            hd,
            query_rows(&q, hd),
        );
    });
    (dq, dk, dv)
}
