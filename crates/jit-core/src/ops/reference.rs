//! The reference maths of every [`super::JitOps`] operation, in burn's primitive tensor ops and
//! generic over the backend: the trait's default bodies, what a backend falls back to for inputs
//! its kernels do not take (another dtype, an unsupported head width), and what
//! [`super::set_enabled`]`(false)` runs on the `Dispatch` backend (under autodiff, op by op).
//!
//! The backward passes are the analytic gradients of the forward ones; `tests/fused.rs`
//! compares them with burn's autodiff of the forward passes.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{DType, Scalar, Shape, Slice};

use super::AdamWEmaFactors;

type T<B> = FloatTensor<B>;

fn dims<B: Backend>(t: &T<B>) -> Vec<usize> {
    t.shape().to_vec()
}

fn reshape<B: Backend>(t: T<B>, dims: &[usize]) -> T<B> {
    B::float_reshape(t, Shape::from(dims.to_vec()))
}

/// `t`'s indices `range` of dimension `dim` (the dimension kept).
pub(crate) fn narrow<B: Backend>(t: T<B>, dim: usize, range: core::ops::Range<usize>) -> T<B> {
    let rank = t.shape().num_dims();
    let slices: Vec<Slice> =
        (0..rank).map(|d| if d == dim { Slice::from(range.clone()) } else { Slice::full() }).collect();
    B::float_slice(t, &slices)
}

/// `Σ` of `t` over its dimensions `dims`, keeping them (size 1).
pub(crate) fn sum_dims<B: Backend>(t: T<B>, dims: &[usize]) -> T<B> {
    dims.iter().fold(t, |t, &d| B::float_sum_dim(t, d))
}

/// `v` `[n]` as `[1, …, 1, n]` of rank `rank`, to broadcast over the last dimension.
fn last_axis<B: Backend>(v: T<B>, rank: usize) -> T<B> {
    let n = v.shape().num_elements();
    let mut d = vec![1; rank];
    d[rank - 1] = n;
    reshape::<B>(v, &d)
}

fn scalar(v: f32) -> Scalar {
    Scalar::from(v)
}

/// The RMS `sqrt(mean(x²) + eps)` over the last dimension, kept (size 1).
fn rms<B: Backend>(x: T<B>, eps: f32) -> T<B> {
    let last = x.shape().num_dims() - 1;
    B::float_sqrt(B::float_add_scalar(B::float_mean_dim(B::float_mul(x.clone(), x), last), scalar(eps)))
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm<B: Backend>(x: T<B>, weight: T<B>, eps: f32) -> T<B> {
    let rank = x.shape().num_dims();
    B::float_mul(B::float_div(x.clone(), rms::<B>(x, eps)), last_axis::<B>(weight, rank))
}

/// The backward pass of an RMSNorm without its gain, from `x̂ = x/rms`, `rms` and `ĝ`, the
/// gradient of `x̂`: `(ĝ − x̂·mean(ĝ·x̂)) / rms`.
fn rms_norm_dx<B: Backend>(x_hat: T<B>, rms: T<B>, g_hat: T<B>) -> T<B> {
    let last = x_hat.shape().num_dims() - 1;
    let mean = B::float_mean_dim(B::float_mul(g_hat.clone(), x_hat.clone()), last);
    B::float_div(B::float_sub(g_hat, B::float_mul(x_hat, mean)), rms)
}

/// Chunk `index` of the adaLN output `modulation` `[B, n·D]` as `[B, 1, D]` (a view), for `D`
/// = `dim`.
pub fn chunk<B: Backend>(modulation: T<B>, index: usize, dim: usize) -> T<B> {
    let b = dims::<B>(&modulation)[0];
    reshape::<B>(narrow::<B>(modulation, 1, index * dim..(index + 1) * dim), &[b, 1, dim])
}

/// `grad` `[B, 1, D]` of chunk `index` as the gradient of the whole adaLN output
/// `[B, chunks·D]` (zeros at the other chunks).
fn chunk_backward<B: Backend>(grad: T<B>, index: usize, chunks: usize) -> T<B> {
    let [b, _, d] = <[usize; 3]>::try_from(dims::<B>(&grad)).expect("[B, 1, D]");
    part_backward::<B>(reshape::<B>(grad, &[b, d]), 1, index, chunks)
}

/// adaLN's `modulate(rms_norm(x), shift, scale)` = `n·(1 + scale) + shift` for `x` `[B, T, D]`,
/// `weight` `[D]`, shift and scale chunks `index` and `index + 1` of `modulation` `[B, n·D]`;
/// computed in f32 whatever the inputs' types, returned in `modulation`'s type (an f16/bf16
/// `modulation` is the mixed-precision adaLN product's output, and the result feeds `qkv` or
/// `w12` in that type).
pub fn rms_norm_modulate<B: Backend>(x: T<B>, weight: T<B>, modulation: T<B>, index: usize, eps: f32) -> T<B> {
    let d = dims::<B>(&x)[2];
    let dtype = modulation.dtype();
    let [x, weight, modulation] = [x, weight, modulation].map(|t| cast::<B>(t, DType::F32));
    let (shift, scale) = (chunk::<B>(modulation.clone(), index, d), chunk::<B>(modulation, index + 1, d));
    let n = rms_norm::<B>(x, weight, eps);
    cast::<B>(B::float_add(B::float_mul(n, B::float_add_scalar(scale, scalar(1.0))), shift), dtype)
}

/// [`rms_norm_modulate`]'s gradients `(dx, dweight, dmodulation)` from the output's `grad` (in
/// `modulation`'s type), each in its input's type (computed in f32; `dmodulation` is the
/// shift's and the scale's gradient at their chunks, zeros elsewhere).
pub fn rms_norm_modulate_backward<B: Backend>(
    x: T<B>,
    weight: T<B>,
    modulation: T<B>,
    index: usize,
    grad: T<B>,
    eps: f32,
) -> (T<B>, T<B>, T<B>) {
    let d = dims::<B>(&x)[2];
    let chunks = dims::<B>(&modulation)[1] / d;
    let dtypes = [x.dtype(), weight.dtype(), modulation.dtype()];
    let [x, weight, modulation, grad] = [x, weight, modulation, grad].map(|t| cast::<B>(t, DType::F32));
    let scale = chunk::<B>(modulation, index + 1, d);
    let r = rms::<B>(x.clone(), eps);
    let x_hat = B::float_div(x, r.clone());
    let w = last_axis::<B>(weight, 3);
    let n = B::float_mul(x_hat.clone(), w.clone());
    let dshift = sum_dims::<B>(grad.clone(), &[1]);
    let dscale = sum_dims::<B>(B::float_mul(grad.clone(), n), &[1]);
    let g_n = B::float_mul(grad, B::float_add_scalar(scale, scalar(1.0)));
    let dweight = reshape::<B>(sum_dims::<B>(B::float_mul(g_n.clone(), x_hat.clone()), &[0, 1]), &[d]);
    let dx = rms_norm_dx::<B>(x_hat, r, B::float_mul(g_n, w));
    let dmodulation =
        B::float_add(chunk_backward::<B>(dshift, index, chunks), chunk_backward::<B>(dscale, index + 1, chunks));
    (cast::<B>(dx, dtypes[0]), cast::<B>(dweight, dtypes[1]), cast::<B>(dmodulation, dtypes[2]))
}

/// Swaps the channels of each pair `(x0, x1) → (x1, x0)` along the last dimension.
fn swap_pairs<B: Backend>(x: T<B>) -> T<B> {
    let d = dims::<B>(&x);
    let mut pairs = d.clone();
    let last = pairs.pop().expect("a shaped tensor");
    pairs.extend([last / 2, 2]);
    let rank = pairs.len();
    reshape::<B>(B::float_flip(reshape::<B>(x, &pairs), &[rank - 1]), &d)
}

/// The 2-D RoPE `x·cos + swap_pairs(x)·sin_signed` for `x` `[…, T, hd]`, tables `[T, hd]`.
pub fn rope<B: Backend>(x: T<B>, cos: T<B>, sin_signed: T<B>) -> T<B> {
    let rank = x.shape().num_dims();
    let table = |t: T<B>| {
        let mut d = vec![1; rank - 2];
        d.extend(dims::<B>(&t));
        reshape::<B>(t, &d)
    };
    let swapped = swap_pairs::<B>(x.clone());
    B::float_add(B::float_mul(x, table(cos)), B::float_mul(swapped, table(sin_signed)))
}

/// `qkv` `[B, T, 3·heads·hd]` → `[3, B, heads, T, hd]`: queries and keys through RMSNorm
/// (gains `[hd]`) and RoPE (tables `[T, hd]`), then the values; in `qkv`'s type, the arithmetic
/// in f32 (under mixed precision `qkv` is the product's f16/bf16 output, and the attention
/// takes the result in that type).
#[allow(clippy::too_many_arguments)] // the projection, both gains, both tables, the shape
pub fn qkv_heads<B: Backend>(
    qkv: T<B>,
    q_weight: T<B>,
    k_weight: T<B>,
    cos: T<B>,
    sin_signed: T<B>,
    heads: usize,
    eps: f32,
) -> T<B> {
    let [b, t, d3] = <[usize; 3]>::try_from(dims::<B>(&qkv)).expect("qkv is [B, T, 3·D]");
    let hd = d3 / 3 / heads;
    let dtype = qkv.dtype();
    let qkv = cast::<B>(qkv, DType::F32);
    let parts = B::float_permute(reshape::<B>(qkv, &[b, t, 3, heads, hd]), &[2, 0, 3, 1, 4]);
    let part = |i: usize| narrow::<B>(parts.clone(), 0, i..i + 1);
    let q = rope::<B>(rms_norm::<B>(part(0), q_weight, eps), cos.clone(), sin_signed.clone());
    let k = rope::<B>(rms_norm::<B>(part(1), k_weight, eps), cos, sin_signed);
    cast::<B>(B::float_cat(vec![q, k, part(2)], 0), dtype)
}

/// [`qkv_heads`]'s gradients `(dqkv, dq_weight, dk_weight)` from its three parts' gradients
/// `[dq, dk, dv]`, each `[B, heads, T, hd]`.
#[allow(clippy::too_many_arguments)] // the forward's inputs and the gradients
pub fn qkv_heads_backward<B: Backend>(
    qkv: T<B>,
    q_weight: T<B>,
    k_weight: T<B>,
    cos: T<B>,
    sin_signed: T<B>,
    grads: [T<B>; 3],
    heads: usize,
    eps: f32,
) -> (T<B>, T<B>, T<B>) {
    let [b, t, d3] = <[usize; 3]>::try_from(dims::<B>(&qkv)).expect("qkv is [B, T, 3·D]");
    let hd = d3 / 3 / heads;
    let dtype = qkv.dtype();
    let qkv = cast::<B>(qkv, DType::F32);
    let [dq, dk, dv] = grads.map(|g| reshape::<B>(cast::<B>(g, DType::F32), &[1, b, heads, t, hd]));
    let parts = B::float_permute(reshape::<B>(qkv, &[b, t, 3, heads, hd]), &[2, 0, 3, 1, 4]);
    let table = |tab: T<B>| reshape::<B>(tab, &[1, 1, 1, t, hd]);
    let (cos, sin) = (table(cos), table(sin_signed));
    // RoPE's transpose (`swap_pairs` is its own transpose), then RMSNorm's backward.
    let part_backward = |i: usize, g: T<B>, weight: T<B>| {
        let dn = B::float_add(B::float_mul(g.clone(), cos.clone()), swap_pairs::<B>(B::float_mul(g, sin.clone())));
        let x = narrow::<B>(parts.clone(), 0, i..i + 1);
        let r = rms::<B>(x.clone(), eps);
        let x_hat = B::float_div(x, r.clone());
        let dweight = reshape::<B>(sum_dims::<B>(B::float_mul(dn.clone(), x_hat.clone()), &[0, 1, 2, 3]), &[hd]);
        let dx = rms_norm_dx::<B>(x_hat, r, B::float_mul(dn, last_axis::<B>(weight, 5)));
        (dx, dweight)
    };
    let (dq, dq_weight) = part_backward(0, dq, q_weight);
    let (dk, dk_weight) = part_backward(1, dk, k_weight);
    let d = B::float_permute(B::float_cat(vec![dq, dk, dv], 0), &[1, 3, 0, 2, 4]);
    (cast::<B>(reshape::<B>(d, &[b, t, d3]), dtype), dq_weight, dk_weight)
}

/// `out` `[B, heads, T, hd]` in token order `[B, T, heads·hd]`.
fn tokens_first<B: Backend>(out: T<B>) -> T<B> {
    let [b, h, t, hd] = <[usize; 4]>::try_from(dims::<B>(&out)).expect("[B, heads, T, hd]");
    reshape::<B>(B::float_swap_dims(out, 1, 2), &[b, t, h * hd])
}

/// `softmax(scale·scores)` over the last dimension, in f32 (as the reference's autocast runs its
/// softmax), and the same probabilities in the scores' type (the next product's operand; the
/// same tensor for f32 scores).
pub fn scaled_softmax<B: Backend>(scores: T<B>, scale: f32) -> (T<B>, T<B>) {
    let dtype = scores.dtype();
    let last = scores.shape().num_dims() - 1;
    let probs = B::softmax(B::float_mul_scalar(cast::<B>(scores, DType::F32), scalar(scale)), last);
    (probs.clone(), cast::<B>(probs, dtype))
}

/// [`scaled_softmax`]'s gradient with respect to the scores, `scale · p ⊙ (grad − Σ grad ⊙ p)`
/// over the last dimension, from the f32 probabilities `probs` and their gradient `grad`, in
/// `grad`'s type (the arithmetic in f32).
pub fn scaled_softmax_backward<B: Backend>(probs: T<B>, grad: T<B>, scale: f32) -> T<B> {
    let dtype = grad.dtype();
    let last = grad.shape().num_dims() - 1;
    let (probs, grad) = (cast::<B>(probs, DType::F32), cast::<B>(grad, DType::F32));
    let row = sum_dims::<B>(B::float_mul(grad.clone(), probs.clone()), &[last]);
    cast::<B>(B::float_mul_scalar(B::float_mul(probs, B::float_sub(grad, row)), scalar(scale)), dtype)
}

/// Multi-head attention `softmax(scale·q·kᵀ)·v` for `q`, `k`, `v` `[B, heads, T, hd]`, in
/// token order `[B, T, heads·hd]` and `v`'s type, and the probabilities (f32, for the backward
/// pass): the products in the inputs' type (f16/bf16 under mixed precision, as the reference's
/// autocast), the softmax in f32.
pub fn head_attention<B: Backend>(q: T<B>, k: T<B>, v: T<B>, scale: f32) -> (T<B>, T<B>) {
    head_attention_with::<B>(q, k, v, scale, scaled_softmax::<B>)
}

/// [`head_attention`] with `softmax` in place of [`scaled_softmax`] (a backend's kernel).
pub fn head_attention_with<B: Backend>(
    q: T<B>,
    k: T<B>,
    v: T<B>,
    scale: f32,
    softmax: impl FnOnce(T<B>, f32) -> (T<B>, T<B>),
) -> (T<B>, T<B>) {
    let (probs, typed) = softmax(B::float_matmul(q, B::float_swap_dims(k, 2, 3)), scale);
    let dtype = v.dtype();
    (tokens_first::<B>(B::float_matmul(cast::<B>(typed, dtype), v)), probs)
}

/// [`head_attention`]'s gradients `(dq, dk, dv)` from the probabilities and the output's `grad`
/// `[B, T, heads·hd]`.
pub fn head_attention_backward<B: Backend>(
    q: T<B>,
    k: T<B>,
    v: T<B>,
    probs: T<B>,
    grad: T<B>,
    scale: f32,
) -> (T<B>, T<B>, T<B>) {
    head_attention_backward_with::<B>(q, k, v, probs, grad, scale, scaled_softmax_backward::<B>)
}

/// [`head_attention_backward`] with `softmax_backward` in place of [`scaled_softmax_backward`]
/// (a backend's kernel).
pub fn head_attention_backward_with<B: Backend>(
    q: T<B>,
    k: T<B>,
    v: T<B>,
    probs: T<B>,
    grad: T<B>,
    scale: f32,
    softmax_backward: impl FnOnce(T<B>, T<B>, f32) -> T<B>,
) -> (T<B>, T<B>, T<B>) {
    let [b, h, t, hd] = <[usize; 4]>::try_from(dims::<B>(&q)).expect("[B, heads, T, hd]");
    // Products in the inputs' type, the softmax's backward in f32 (as the forward pass).
    let dtype = q.dtype();
    let g = cast::<B>(B::float_swap_dims(reshape::<B>(grad, &[b, t, h, hd]), 1, 2), dtype);
    let dv = B::float_matmul(B::float_swap_dims(cast::<B>(probs.clone(), dtype), 2, 3), g.clone());
    let dp = B::float_matmul(g, B::float_swap_dims(v, 2, 3));
    let ds = softmax_backward(probs, dp, scale);
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    (dq, dk, dv)
}

/// [`head_attention`]'s output and, in place of the probabilities, each query's log-sum-exp
/// `lse = ln Σ_j exp(scale·q·k_j)` `[B, heads, T]` (f32): what a flash-style kernel keeps for
/// the backward pass.
pub fn flash_attention<B: Backend>(q: T<B>, k: T<B>, v: T<B>, scale: f32) -> (T<B>, T<B>) {
    let [b, h, t, _] = <[usize; 4]>::try_from(dims::<B>(&q)).expect("[B, heads, T, hd]");
    let dtype = v.dtype();
    let scores =
        B::float_mul_scalar(cast::<B>(B::float_matmul(q, B::float_swap_dims(k, 2, 3)), DType::F32), scalar(scale));
    let max = B::float_max_dim(scores.clone(), 3);
    let sum = B::float_sum_dim(B::float_exp(B::float_sub(scores.clone(), max.clone())), 3);
    let lse = B::float_add(max, B::float_log(sum));
    let probs = B::float_exp(B::float_sub(scores, lse.clone()));
    (tokens_first::<B>(B::float_matmul(cast::<B>(probs, dtype), v)), reshape::<B>(lse, &[b, h, t]))
}

/// [`flash_attention`]'s gradients `(dq, dk, dv)`: the probabilities `exp(scale·q·kᵀ − lse)`
/// worked out again from the log-sum-exp `lse` `[B, heads, T]`, then
/// [`head_attention_backward`]. (`out`, the forward output, is what a kernel reads for
/// `Σ_d grad·out`; this body does not need it.)
pub fn flash_attention_backward<B: Backend>(
    q: T<B>,
    k: T<B>,
    v: T<B>,
    _out: T<B>,
    lse: T<B>,
    grad: T<B>,
    scale: f32,
) -> (T<B>, T<B>, T<B>) {
    let [b, h, t, _] = <[usize; 4]>::try_from(dims::<B>(&q)).expect("[B, heads, T, hd]");
    let scores = B::float_matmul(q.clone(), B::float_swap_dims(k.clone(), 2, 3));
    let scores = B::float_mul_scalar(cast::<B>(scores, DType::F32), scalar(scale));
    let probs = B::float_exp(B::float_sub(scores, reshape::<B>(lse, &[b, h, t, 1])));
    head_attention_backward::<B>(q, k, v, probs, grad, scale)
}

/// `x` plus `bias` `[n]` over its last dimension.
fn add_bias<B: Backend>(x: T<B>, bias: T<B>) -> T<B> {
    let rank = x.shape().num_dims();
    B::float_add(x, last_axis::<B>(bias, rank))
}

/// The attention of a block from its `qkv` projection `[B, T, 3·D]`: [`qkv_heads`], then
/// attention, `[B, T, D]`.
#[allow(clippy::too_many_arguments)] // qkv_heads' inputs and attention's scale
pub fn qkv_attention<B: Backend>(
    qkv: T<B>,
    q_weight: T<B>,
    k_weight: T<B>,
    cos: T<B>,
    sin_signed: T<B>,
    heads: usize,
    scale: f32,
    eps: f32,
) -> T<B> {
    let heads_out = qkv_heads::<B>(qkv, q_weight, k_weight, cos, sin_signed, heads, eps);
    let [q, k, v] = split_parts::<B>(heads_out);
    head_attention::<B>(q, k, v, scale).0
}

/// The attention of a block from its input `x` `[B, T, D]`: the `qkv` layer (`weight`
/// `[D, 3·D]`, `bias` `[3·D]`), then [`qkv_attention`].
#[allow(clippy::too_many_arguments)] // the layer's, qkv_heads' and attention's inputs
pub fn attention_from_input<B: Backend>(
    x: T<B>,
    weight: T<B>,
    bias: T<B>,
    q_weight: T<B>,
    k_weight: T<B>,
    cos: T<B>,
    sin_signed: T<B>,
    heads: usize,
    scale: f32,
    eps: f32,
) -> T<B> {
    let qkv = linear_layer::<B>(x, weight, bias);
    qkv_attention::<B>(qkv, q_weight, k_weight, cos, sin_signed, heads, scale, eps)
}

/// Part `index` of `parts` equal parts of `t` along dimension `dim`.
pub fn part<B: Backend>(t: T<B>, dim: usize, index: usize, parts: usize) -> T<B> {
    let len = dims::<B>(&t)[dim] / parts;
    narrow::<B>(t, dim, index * len..(index + 1) * len)
}

/// [`part`]'s gradient: `grad` at part `index` of `parts` along `dim`, zeros elsewhere.
pub fn part_backward<B: Backend>(grad: T<B>, dim: usize, index: usize, parts: usize) -> T<B> {
    let mut shape = dims::<B>(&grad);
    let len = shape[dim];
    shape[dim] *= parts;
    let rank = shape.len();
    let zeros = B::float_zeros(Shape::from(shape), &grad.device(), grad.dtype().into());
    let slices: Vec<Slice> =
        (0..rank).map(|d| if d == dim { Slice::from(index * len..(index + 1) * len) } else { Slice::full() }).collect();
    B::float_slice_assign(zeros, &slices, grad)
}

/// `[3, B, heads, T, hd]` → `q`, `k`, `v` `[B, heads, T, hd]`.
pub fn split_parts<B: Backend>(x: T<B>) -> [T<B>; 3] {
    let d = dims::<B>(&x);
    [0, 1, 2].map(|i| reshape::<B>(part::<B>(x.clone(), 0, i, 3), &d[1..]))
}

/// SwiGLU's gate: `h` `[…, 2·hidden]` = `(x1, x2)` → `SiLU(x1)·x2`, computed in f32 and
/// returned in `h`'s type (an f16/bf16 `h` is the mixed-precision `w12` product's output).
pub fn silu_gate<B: Backend>(h: T<B>) -> T<B> {
    let dtype = h.dtype();
    let h = cast::<B>(h, DType::F32);
    let last = h.shape().num_dims() - 1;
    let hidden = dims::<B>(&h)[last] / 2;
    let x1 = narrow::<B>(h.clone(), last, 0..hidden);
    let x2 = narrow::<B>(h, last, hidden..2 * hidden);
    cast::<B>(B::float_mul(silu::<B>(x1), x2), dtype)
}

/// [`silu_gate`]'s gradient `dh` from the output's `grad` (both in `h`'s type; computed in
/// f32): `(g·x2·SiLU'(x1), g·SiLU(x1))`, `SiLU'(x) = σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_gate_backward<B: Backend>(h: T<B>, grad: T<B>) -> T<B> {
    let dtype = h.dtype();
    let (h, grad) = (cast::<B>(h, DType::F32), cast::<B>(grad, DType::F32));
    let last = h.shape().num_dims() - 1;
    let hidden = dims::<B>(&h)[last] / 2;
    let x1 = narrow::<B>(h.clone(), last, 0..hidden);
    let x2 = narrow::<B>(h, last, hidden..2 * hidden);
    let dx1 = B::float_mul(B::float_mul(grad.clone(), x2), silu_slope::<B>(x1.clone()));
    let dx2 = B::float_mul(grad, silu::<B>(x1));
    cast::<B>(B::float_cat(vec![dx1, dx2], last), dtype)
}

/// SwiGLU's hidden activations from its input `x` `[…, D]`: the `w12` layer (`weight`
/// `[D, 2·hidden]`, `bias`), then [`silu_gate`].
pub fn swiglu_hidden<B: Backend>(x: T<B>, weight: T<B>, bias: T<B>) -> T<B> {
    silu_gate::<B>(linear_layer::<B>(x, weight, bias))
}

/// `SiLU(x) = x·σ(x)`.
pub fn silu<B: Backend>(x: T<B>) -> T<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

/// `SiLU'(x) = σ(x)·(1 + x·(1 − σ(x)))`.
pub fn silu_slope<B: Backend>(x: T<B>) -> T<B> {
    let sig = B::sigmoid(x.clone());
    let one_minus = B::float_add_scalar(B::float_neg(sig.clone()), scalar(1.0));
    B::float_mul(sig, B::float_add_scalar(B::float_mul(x, one_minus), scalar(1.0)))
}

/// adaLN-Zero's gated residual `x + gate·y` for `x`, `y` `[B, T, D]`, the gate chunk `index` of
/// `modulation` `[B, n·D]` (of any float type; computed in `x`'s).
pub fn gated_residual<B: Backend>(x: T<B>, modulation: T<B>, index: usize, y: T<B>) -> T<B> {
    let gate = cast::<B>(chunk::<B>(modulation, index, dims::<B>(&x)[2]), x.dtype());
    B::float_add(x, B::float_mul(gate, y))
}

/// [`gated_residual`]'s gradients `(dmodulation, dy)`: `Σ_t grad·y` at the gate's chunk `index`
/// of `modulation` `[B, n·D]` (zeros elsewhere), in its type, and `grad·gate`.
pub fn gated_residual_backward<B: Backend>(modulation: T<B>, index: usize, grad: T<B>, y: T<B>) -> (T<B>, T<B>) {
    let d = dims::<B>(&y)[2];
    let chunks = dims::<B>(&modulation)[1] / d;
    let dtype = modulation.dtype();
    let gate = cast::<B>(chunk::<B>(modulation, index, d), y.dtype());
    let dmodulation = chunk_backward::<B>(sum_dims::<B>(B::float_mul(grad.clone(), y), &[1]), index, chunks);
    (cast::<B>(dmodulation, dtype), B::float_mul(grad, gate))
}

/// Classifier-free guidance `v_u + scale·(v_c − v_u)` from `v` `[2B, …]`, the conditional
/// velocities first.
pub fn cfg_mix<B: Backend>(v: T<B>, scale: f32) -> T<B> {
    let half = dims::<B>(&v)[0] / 2;
    let v_cond = narrow::<B>(v.clone(), 0, 0..half);
    let v_uncond = narrow::<B>(v, 0, half..2 * half);
    B::float_add(v_uncond.clone(), B::float_mul_scalar(B::float_sub(v_cond, v_uncond), scalar(scale)))
}

/// One AdamW step and both EMA updates of one parameter, in burn's AdamW's order of
/// operations (its tensor ops, rounded as they round), on the gradient times
/// [`AdamWEmaFactors::grad_scale`] `g`: `m ← β₁·m + (1 − β₁)·g`,
/// `v ← β₂·v + (1 − β₂)·g²`, `θ ← θ·(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + ε)`, then
/// `e ← e·d + θ·(1 − d)` for each EMA. Returns `[θ, m, v, ema1, ema2]`.
pub fn adamw_ema_one<B: Backend>(param: T<B>, grad: T<B>, state: [T<B>; 4], f: &AdamWEmaFactors) -> [T<B>; 5] {
    let [m, v, ema1, ema2] = state;
    let mul = |t: T<B>, x: f32| B::float_mul_scalar(t, scalar(x));
    let grad = if f.grad_scale == 1.0 { grad } else { mul(grad, f.grad_scale) };
    let m = B::float_add(mul(m, f.beta1[0]), mul(grad.clone(), f.beta1[1]));
    let v = B::float_add(mul(v, f.beta2[0]), mul(B::float_mul(grad.clone(), grad), f.beta2[1]));
    let m_hat = B::float_div_scalar(m.clone(), scalar(f.corrections[0]));
    let v_hat = B::float_div_scalar(v.clone(), scalar(f.corrections[1]));
    let delta = B::float_div(m_hat, B::float_add_scalar(B::float_sqrt(v_hat), scalar(f.epsilon)));
    let theta = B::float_sub(mul(param, f.decay), mul(delta, f.lr));
    let blend = |e: T<B>, [decay, rest]: [f32; 2]| B::float_add(mul(e, decay), mul(theta.clone(), rest));
    let (ema1, ema2) = (blend(ema1, f.ema1), blend(ema2, f.ema2));
    [theta, m, v, ema1, ema2]
}

/// How many values of `values` are NaN or ±∞, as a `[1]` f32 tensor on the first one's device.
/// Exact on IEEE backends (the CPU); WGSL compilers may fold burn's `x ≠ x` NaN test away, so
/// GPUs take the kernel, which tests the bits.
pub fn non_finite(values: &[burn::tensor::Tensor<1>]) -> burn::tensor::Tensor<1> {
    let count = |t: &burn::tensor::Tensor<1>| t.clone().is_nan().float().sum().add(t.clone().is_inf().float().sum());
    let device = values.first().map(|t| t.device()).unwrap_or_default();
    values.iter().map(count).reduce(|a, b| a.add(b)).unwrap_or_else(|| burn::tensor::Tensor::zeros([1], &device))
}

/// [`adamw_ema_one`] for each parameter: `[θ, grad, m, v, ema1, ema2]` → `[θ, m, v, ema1, ema2]`.
pub fn adamw_ema<B: Backend>(slots: Vec<[T<B>; 6]>, factors: &AdamWEmaFactors) -> Vec<[T<B>; 5]> {
    slots.into_iter().map(|[p, g, m, v, e1, e2]| adamw_ema_one::<B>(p, g, [m, v, e1, e2], factors)).collect()
}

/// The linear layer `x·weight + bias` over the last dimension of `x` `[…, d_in]`, `weight`
/// `[d_in, d_out]`, `bias` `[d_out]`.
pub fn linear_layer<B: Backend>(x: T<B>, weight: T<B>, bias: T<B>) -> T<B> {
    add_bias::<B>(linear_product::<B>(x, weight), bias)
}

/// `x·weight` over the last dimension of `x` `[…, d_in]`, `weight` `[d_in, d_out]`.
pub fn linear_product<B: Backend>(x: T<B>, weight: T<B>) -> T<B> {
    let mut d = dims::<B>(&x);
    let [d_in, d_out] = <[usize; 2]>::try_from(dims::<B>(&weight)).expect("weight is [d_in, d_out]");
    let rows = d.iter().product::<usize>() / d_in.max(1);
    let out = B::float_matmul(reshape::<B>(x, &[rows, d_in]), weight);
    *d.last_mut().expect("a shaped tensor") = d_out;
    reshape::<B>(out, &d)
}

/// The gradients `(dx, dweight)` of [`linear_product`] from the output's `grad` (the bias's
/// is [`bias_grad`]).
pub fn linear_layer_backward<B: Backend>(x: T<B>, weight: T<B>, grad: T<B>) -> (T<B>, T<B>) {
    let d = dims::<B>(&x);
    let [d_in, d_out] = <[usize; 2]>::try_from(dims::<B>(&weight)).expect("weight is [d_in, d_out]");
    let rows = d.iter().product::<usize>() / d_in.max(1);
    let g = reshape::<B>(grad, &[rows, d_out]);
    let dx = reshape::<B>(B::float_matmul(g.clone(), B::float_swap_dims(weight, 0, 1)), &d);
    let x = reshape::<B>(x, &[rows, d_in]);
    let chunks = row_chunks(rows);
    if chunks == 1 {
        return (dx, B::float_matmul(B::float_swap_dims(x, 0, 1), g));
    }
    // Split-k: one batched product over chunks of rows, then their sum (in f32).
    let kc = rows / chunks;
    let xc = B::float_swap_dims(reshape::<B>(x, &[chunks, kc, d_in]), 1, 2);
    let gc = reshape::<B>(g, &[chunks, kc, d_out]);
    let dtype = xc.dtype();
    let partial = cast::<B>(B::float_matmul(xc, gc), DType::F32);
    let dweight = reshape::<B>(B::float_sum_dim(partial, 0), &[d_in, d_out]);
    (dx, cast::<B>(dweight, dtype))
}

/// Rows per chunk of a split weight gradient (at least; see [`row_chunks`]).
const ROWS_PER_CHUNK: usize = 2048;

/// Into how many chunks of rows the weight gradient `xᵀ·g` of a linear layer is split: a
/// power of two (at most 16) that divides `rows` and leaves each chunk [`ROWS_PER_CHUNK`] rows
/// or more, else 1. A GPU product tiles its output, `d_in × d_out`, and runs each tile's
/// `rows` terms in one cube: with a B/16 batch (16 384 rows into 768 × 768 outputs) most of
/// the device idles (7.5 TFLOP/s in f16 on an H200, against 110 for the forward products);
/// chunks make the product a batched one with `chunks` times as many tiles.
pub fn row_chunks(rows: usize) -> usize {
    let mut chunks = 1;
    while chunks < 16 && rows.is_multiple_of(2 * chunks) && rows / (2 * chunks) >= ROWS_PER_CHUNK {
        chunks *= 2;
    }
    chunks
}

/// `t` in `dtype` (itself when it already is: no launch).
fn cast<B: Backend>(t: T<B>, dtype: DType) -> T<B> {
    if t.dtype() == dtype { t } else { B::float_cast(t, dtype.into()) }
}

/// The gradient of a bias `[n]` added over the last dimension from the sum's `grad`: the sum
/// of `grad`'s rows.
pub fn bias_grad<B: Backend>(grad: T<B>) -> T<B> {
    let d = dims::<B>(&grad);
    let n = d[d.len() - 1];
    let rows = d.iter().product::<usize>() / n.max(1);
    reshape::<B>(B::float_sum_dim(reshape::<B>(grad, &[rows, n]), 0), &[n])
}
