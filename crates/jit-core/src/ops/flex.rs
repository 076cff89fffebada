//! [`JitOps`] on burn's CPU backend (Flex): the kernels of [`crate::fused`] on contiguous f32
//! values, one pass over memory each, and `gemm` for the linear layers' products. Other dtypes,
//! and head widths the attention kernels do not take, run the reference bodies.

use burn::backend::TensorMetadata;
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::{DType, TensorData};

use super::lists::ListOps;
use super::{JitOps, reference};
use crate::fused::{cpu, gemm};

/// `t` in row-major order (copied only where it is a strided view).
fn contiguous(t: FlexTensor) -> FlexTensor {
    match t.as_slice::<f32>() {
        Some(_) => t,
        None => t.to_contiguous(),
    }
}

/// The values of a contiguous f32 tensor.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("made contiguous first")
}

/// A Flex tensor of `shape` holding `values`.
fn new(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.shape().to_vec()
}

/// The tensors made contiguous when all are f32 (the kernels' type), else `None`.
fn f32s<const N: usize>(ts: [&FlexTensor; N]) -> Option<[FlexTensor; N]> {
    ts.iter().all(|t| t.dtype() == DType::F32).then(|| ts.map(|t| contiguous(t.clone())))
}

/// A bias made contiguous when it is f32: `Some(None)` without one, `None` for another dtype.
fn f32_bias(bias: Option<&FlexTensor>) -> Option<Option<[FlexTensor; 1]>> {
    match bias {
        Some(b) => f32s([b]).map(Some),
        None => Some(None),
    }
}

/// Chunk `index` of the adaLN output `m` `[B, n·D]` (contiguous f32) as `[B·D]` values.
fn chunk(m: &FlexTensor, index: usize, d: usize) -> Vec<f32> {
    slice(m).chunks_exact(dims(m)[1]).flat_map(|row| &row[index * d..(index + 1) * d]).copied().collect()
}

/// The gradient of an adaLN output of `shape` `[B, n·D]` from its chunks' `[B·D]` gradients
/// `(index, values)`: zeros at the other chunks.
fn chunks_gradient(shape: Vec<usize>, chunks: &[(usize, &[f32])]) -> FlexTensor {
    let row = shape[1];
    let mut out = vec![0.0; shape[0] * row];
    for &(index, values) in chunks {
        let d = values.len() / shape[0].max(1);
        for (b, src) in values.chunks_exact(d.max(1)).enumerate() {
            out[b * row + index * d..][..d].copy_from_slice(src);
        }
    }
    new(out, shape)
}

/// The layout of `qkv` `[B, T, 3·heads·hd]`, where the attention kernels take its head width.
fn qkv_layout(qkv: &FlexTensor, heads: usize) -> Option<cpu::QkvLayout> {
    let [b, t, d3] = <[usize; 3]>::try_from(dims(qkv)).ok()?;
    let hd = d3 / 3 / heads.max(1);
    (d3 == 3 * heads * hd && cpu::attention_supports(hd)).then_some(cpu::QkvLayout {
        batch: b,
        tokens: t,
        heads,
        head_dim: hd,
    })
}

fn norm_rope<'a>([qw, kw, cos, sin]: &'a [FlexTensor; 4], eps: f32) -> cpu::QkNormRope<'a> {
    cpu::QkNormRope { q_weight: slice(qw), k_weight: slice(kw), cos: slice(cos), sin_signed: slice(sin), eps }
}

fn attention_shape(q: &FlexTensor) -> Option<cpu::AttentionShape> {
    let [b, h, t, hd] = <[usize; 4]>::try_from(dims(q)).ok()?;
    cpu::attention_supports(hd).then_some(cpu::AttentionShape { batch: b, heads: h, tokens: t, head_dim: hd })
}

/// `x·weight (+ bias)` by `gemm` when all are f32.
fn linear(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> Option<FlexTensor> {
    let [vx, vw] = f32s([x, weight])?;
    let vb = f32_bias(bias)?;
    super::count_kernel();
    let [d_in, d_out] = <[usize; 2]>::try_from(dims(weight)).expect("weight is [d_in, d_out]");
    let mut shape = dims(x);
    *shape.last_mut().expect("a shaped tensor") = d_out;
    Some(new(gemm::linear(slice(&vx), slice(&vw), vb.as_ref().map(|[b]| slice(b)), d_in, d_out), shape))
}

/// [`cpu::qkv_attention`] (adding `bias` to the rows of `qkv`) when all are f32 and the
/// kernels take the head width.
fn qkv_attention(
    qkv: &FlexTensor,
    bias: Option<&FlexTensor>,
    norm_rope_inputs: [&FlexTensor; 4],
    heads: usize,
    scale: f32,
    eps: f32,
) -> Option<FlexTensor> {
    let layout = qkv_layout(qkv, heads)?;
    let [vqkv] = f32s([qkv])?;
    let tables = f32s(norm_rope_inputs)?;
    let vb = f32_bias(bias)?;
    super::count_kernel();
    let out =
        cpu::qkv_attention(slice(&vqkv), vb.as_ref().map(|[b]| slice(b)), &layout, &norm_rope(&tables, eps), scale);
    Some(new(out, vec![layout.batch, layout.tokens, layout.heads * layout.head_dim]))
}

/// [`cpu::silu_gate`] (adding `bias` to the rows of `h`) when all are f32.
fn silu_gate(h: &FlexTensor, bias: Option<&FlexTensor>) -> Option<FlexTensor> {
    let [vh] = f32s([h])?;
    let vb = f32_bias(bias)?;
    super::count_kernel();
    let mut shape = dims(h);
    let last = shape.last_mut().expect("a shaped tensor");
    *last /= 2;
    let hidden = *last;
    Some(new(cpu::silu_gate(slice(&vh), hidden, vb.as_ref().map(|[b]| slice(b))), shape))
}

impl JitOps for Flex {
    fn linear_layer(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        match linear(&x, &weight, Some(&bias)) {
            Some(out) => out,
            None => reference::linear_layer::<Self>(x, weight, bias),
        }
    }

    fn linear_product(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        match linear(&x, &weight, None) {
            Some(out) => out,
            None => reference::linear_product::<Self>(x, weight),
        }
    }

    fn linear_layer_backward(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
        let Some([vx, vw, g]) = f32s([&x, &weight, &grad]) else {
            return reference::linear_layer_backward::<Self>(x, weight, grad);
        };
        super::count_kernel();
        let [d_in, d_out] = <[usize; 2]>::try_from(dims(&weight)).expect("weight is [d_in, d_out]");
        let [dx, dw, _] = gemm::linear_backward(slice(&vx), slice(&vw), slice(&g), d_in, d_out, [true, true, false]);
        let both = "both asked for";
        (new(dx.expect(both), dims(&x)), new(dw.expect(both), vec![d_in, d_out]))
    }

    fn rms_norm_modulate(
        x: FlexTensor,
        weight: FlexTensor,
        modulation: FlexTensor,
        index: usize,
        eps: f32,
    ) -> FlexTensor {
        let Some([vx, w, m]) = f32s([&x, &weight, &modulation]) else {
            return reference::rms_norm_modulate::<Self>(x, weight, modulation, index, eps);
        };
        super::count_kernel();
        let shape = dims(&x);
        let (shift, scale) = (chunk(&m, index, shape[2]), chunk(&m, index + 1, shape[2]));
        new(cpu::rms_norm_modulate(slice(&vx), shape[1], slice(&w), &shift, &scale, eps), shape)
    }

    fn rms_norm_modulate_backward(
        x: FlexTensor,
        weight: FlexTensor,
        modulation: FlexTensor,
        index: usize,
        grad: FlexTensor,
        eps: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let Some([vx, w, m, g]) = f32s([&x, &weight, &modulation, &grad]) else {
            return reference::rms_norm_modulate_backward::<Self>(x, weight, modulation, index, grad, eps);
        };
        super::count_kernel();
        let shape = dims(&x);
        let d = shape[2];
        let scale = chunk(&m, index + 1, d);
        let (dx, dw, dshift, dscale) =
            cpu::rms_norm_modulate_backward(slice(&vx), shape[1], slice(&w), &scale, slice(&g), eps);
        let dm = chunks_gradient(dims(&m), &[(index, &dshift), (index + 1, &dscale)]);
        (new(dx, shape), new(dw, vec![d]), dm)
    }

    fn qkv_heads(
        qkv: FlexTensor,
        q_weight: FlexTensor,
        k_weight: FlexTensor,
        cos: FlexTensor,
        sin_signed: FlexTensor,
        heads: usize,
        eps: f32,
    ) -> FlexTensor {
        let (Some(layout), Some([vqkv, qw, kw, c, s])) =
            (qkv_layout(&qkv, heads), f32s([&qkv, &q_weight, &k_weight, &cos, &sin_signed]))
        else {
            return reference::qkv_heads::<Self>(qkv, q_weight, k_weight, cos, sin_signed, heads, eps);
        };
        super::count_kernel();
        let parts = cpu::qkv_heads(slice(&vqkv), &layout, &norm_rope(&[qw, kw, c, s], eps));
        let l = layout;
        new(parts.concat(), vec![3, l.batch, l.heads, l.tokens, l.head_dim])
    }

    fn qkv_heads_backward(
        qkv: FlexTensor,
        q_weight: FlexTensor,
        k_weight: FlexTensor,
        cos: FlexTensor,
        sin_signed: FlexTensor,
        dq: FlexTensor,
        dk: FlexTensor,
        dv: FlexTensor,
        heads: usize,
        eps: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (Some(layout), Some([vqkv, qw, kw, c, s, gq, gk, gv])) =
            (qkv_layout(&qkv, heads), f32s([&qkv, &q_weight, &k_weight, &cos, &sin_signed, &dq, &dk, &dv]))
        else {
            let grads = [dq, dk, dv];
            return reference::qkv_heads_backward::<Self>(qkv, q_weight, k_weight, cos, sin_signed, grads, heads, eps);
        };
        super::count_kernel();
        let grads = [slice(&gq), slice(&gk), slice(&gv)];
        let (dqkv, dqw, dkw) = cpu::qkv_heads_backward(slice(&vqkv), &layout, &norm_rope(&[qw, kw, c, s], eps), grads);
        let hd = layout.head_dim;
        (new(dqkv, dims(&qkv)), new(dqw, vec![hd]), new(dkw, vec![hd]))
    }

    fn head_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, scale: f32) -> FlexTensor {
        let (Some(shape), Some([vq, vk, vv])) = (attention_shape(&q), f32s([&q, &k, &v])) else {
            return reference::head_attention::<Self>(q, k, v, scale).0;
        };
        super::count_kernel();
        let out = cpu::attention(slice(&vq), slice(&vk), slice(&vv), &shape, scale);
        new(out, vec![shape.batch, shape.tokens, shape.heads * shape.head_dim])
    }

    fn head_attention_train(q: FlexTensor, k: FlexTensor, v: FlexTensor, scale: f32) -> (FlexTensor, FlexTensor) {
        let (Some(shape), Some([vq, vk, vv])) = (attention_shape(&q), f32s([&q, &k, &v])) else {
            return reference::head_attention::<Self>(q, k, v, scale);
        };
        super::count_kernel();
        let (out, probs) = cpu::attention_with_probs(slice(&vq), slice(&vk), slice(&vv), &shape, scale);
        let s = shape;
        (
            new(out, vec![s.batch, s.tokens, s.heads * s.head_dim]),
            new(probs, vec![s.batch, s.heads, s.tokens, s.tokens]),
        )
    }

    /// From the probabilities `saved` that `head_attention_train` keeps here (the log-sum-exp of
    /// another path takes the reference body).
    fn head_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        saved: FlexTensor,
        grad: FlexTensor,
        scale: f32,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if saved.shape().num_dims() == 3 {
            return reference::flash_attention_backward::<Self>(q, k, v, out, saved, grad, scale);
        }
        let (Some(shape), Some([vq, vk, vv, p, g])) = (attention_shape(&q), f32s([&q, &k, &v, &saved, &grad])) else {
            return reference::head_attention_backward::<Self>(q, k, v, saved, grad, scale);
        };
        super::count_kernel();
        let [dq, dk, dv] =
            cpu::attention_backward(slice(&vq), slice(&vk), slice(&vv), slice(&p), slice(&g), &shape, scale);
        let d = dims(&q);
        (new(dq, d.clone()), new(dk, d.clone()), new(dv, d))
    }

    fn qkv_attention(
        qkv: FlexTensor,
        q_weight: FlexTensor,
        k_weight: FlexTensor,
        cos: FlexTensor,
        sin_signed: FlexTensor,
        heads: usize,
        scale: f32,
        eps: f32,
    ) -> FlexTensor {
        match qkv_attention(&qkv, None, [&q_weight, &k_weight, &cos, &sin_signed], heads, scale, eps) {
            Some(out) => out,
            None => reference::qkv_attention::<Self>(qkv, q_weight, k_weight, cos, sin_signed, heads, scale, eps),
        }
    }

    /// The product without the layer's bias, which the attention adds as it reads each row (no
    /// pass that writes the bias into the product's rows first: ≈ 5 % of sampling, with the
    /// gate's).
    fn attention_from_input(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        q_weight: FlexTensor,
        k_weight: FlexTensor,
        cos: FlexTensor,
        sin_signed: FlexTensor,
        heads: usize,
        scale: f32,
        eps: f32,
    ) -> FlexTensor {
        let d3 = dims(&weight)[1];
        if cpu::attention_supports(d3 / 3 / heads.max(1))
            && let Some(qkv) = linear(&x, &weight, None)
            && let Some(out) =
                qkv_attention(&qkv, Some(&bias), [&q_weight, &k_weight, &cos, &sin_signed], heads, scale, eps)
        {
            return out;
        }
        let qkv = Self::linear_layer(x, weight, bias);
        Self::qkv_attention(qkv, q_weight, k_weight, cos, sin_signed, heads, scale, eps)
    }

    fn part_backward(grad: FlexTensor, dim: usize, index: usize, parts: usize) -> FlexTensor {
        let Some([g]) = f32s([&grad]) else {
            return reference::part_backward::<Self>(grad, dim, index, parts);
        };
        super::count_kernel();
        let mut shape = dims(&grad);
        let part_len: usize = shape[dim..].iter().product();
        shape[dim] *= parts;
        let g = slice(&g);
        let mut out = vec![0.0; g.len() * parts];
        for (o, row) in g.chunks_exact(part_len.max(1)).enumerate() {
            out[(o * parts + index) * part_len..][..part_len].copy_from_slice(row);
        }
        new(out, shape)
    }

    fn silu_gate(h: FlexTensor) -> FlexTensor {
        silu_gate(&h, None).unwrap_or_else(|| reference::silu_gate::<Self>(h))
    }

    /// The product without the layer's bias, which the gate adds as it reads each row.
    fn swiglu_hidden(x: FlexTensor, weight: FlexTensor, bias: FlexTensor) -> FlexTensor {
        if let Some(h) = linear(&x, &weight, None)
            && let Some(out) = silu_gate(&h, Some(&bias))
        {
            return out;
        }
        Self::silu_gate(Self::linear_layer(x, weight, bias))
    }

    fn silu_gate_backward(h: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let Some([vh, g]) = f32s([&h, &grad]) else {
            return reference::silu_gate_backward::<Self>(h, grad);
        };
        super::count_kernel();
        let shape = dims(&h);
        let hidden = shape.last().expect("a shaped tensor") / 2;
        new(cpu::silu_gate_backward(slice(&vh), slice(&g), hidden), shape)
    }

    fn silu(x: FlexTensor) -> FlexTensor {
        let Some([vx]) = f32s([&x]) else {
            return reference::silu::<Self>(x);
        };
        super::count_kernel();
        let mut values = slice(&vx).to_vec();
        cpu::silu_inplace(&mut values);
        new(values, dims(&x))
    }

    fn gated_residual(x: FlexTensor, modulation: FlexTensor, index: usize, y: FlexTensor) -> FlexTensor {
        let Some([vx, m, vy]) = f32s([&x, &modulation, &y]) else {
            return reference::gated_residual::<Self>(x, modulation, index, y);
        };
        super::count_kernel();
        let shape = dims(&x);
        let (t, d) = (shape[1], shape[2]);
        let gate = chunk(&m, index, d);
        let mut out = slice(&vx).to_vec();
        for (row, (o, y)) in out.chunks_exact_mut(d.max(1)).zip(slice(&vy).chunks_exact(d.max(1))).enumerate() {
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(&gate[(row / t) * d..][..d]) {
                *o += g * y;
            }
        }
        new(out, shape)
    }

    fn gated_residual_backward(
        modulation: FlexTensor,
        index: usize,
        grad: FlexTensor,
        y: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let Some([m, g, vy]) = f32s([&modulation, &grad, &y]) else {
            return reference::gated_residual_backward::<Self>(modulation, index, grad, y);
        };
        super::count_kernel();
        let shape = dims(&grad);
        let (t, d) = (shape[1], shape[2]);
        let gate = chunk(&m, index, d);
        let mut sums = vec![0.0f32; shape[0] * d];
        let mut dy = vec![0.0f32; slice(&g).len()];
        let rows =
            slice(&g).chunks_exact(d.max(1)).zip(slice(&vy).chunks_exact(d.max(1))).zip(dy.chunks_exact_mut(d.max(1)));
        for (row, ((g, y), dy)) in rows.enumerate() {
            let image = (row / t) * d..(row / t + 1) * d;
            for (((s, dy), &gate), (&g, &y)) in
                sums[image.clone()].iter_mut().zip(dy).zip(&gate[image]).zip(g.iter().zip(y))
            {
                *s += g * y;
                *dy = g * gate;
            }
        }
        (chunks_gradient(dims(&m), &[(index, &sums)]), new(dy, shape))
    }

    fn cfg_mix(v: FlexTensor, scale: f32) -> FlexTensor {
        let Some([vv]) = f32s([&v]) else {
            return reference::cfg_mix::<Self>(v, scale);
        };
        super::count_kernel();
        let mut shape = dims(&v);
        shape[0] /= 2;
        new(cpu::cfg_mix(slice(&vv), scale), shape)
    }
}

impl ListOps for Flex {
    fn adamw_ema(slots: Vec<[FlexTensor; 6]>, factors: FlexTensor) -> Vec<[FlexTensor; 5]> {
        super::count_kernel();
        let factors = contiguous(factors);
        let factors: &[f32; super::AdamWEmaFactors::COUNT] = slice(&factors).try_into().expect("adamw_ema: 14 factors");
        let step = |[p, g, m, v, e1, e2]: [FlexTensor; 6]| {
            let shape = dims(&p);
            let g = contiguous(g);
            let [mut p, mut m, mut v, mut e1, mut e2] = [p, m, v, e1, e2].map(|t| slice(&contiguous(t)).to_vec());
            let values = cpu::AdamWEmaValues { param: &mut p, m: &mut m, v: &mut v, ema1: &mut e1, ema2: &mut e2 };
            cpu::adamw_ema(values, slice(&g), factors);
            [p, m, v, e1, e2].map(|values| new(values, shape.clone()))
        };
        slots.into_iter().map(step).collect()
    }

    fn non_finite(values: Vec<FlexTensor>) -> FlexTensor {
        super::count_kernel();
        let count = values.into_iter().map(|t| cpu::non_finite(slice(&contiguous(t)))).sum::<usize>();
        new(vec![count as f32], vec![1])
    }
}
