//! The fused CPU operations under autodiff (training on Flex): each is one burn-autodiff
//! operation whose forward pass runs a kernel of [`super::cpu`] and whose backward pass runs
//! its gradient kernel, in place of the dozen tracked tensor ops (each with its own backward
//! step and saved activations) that the tensor-op path records.
//!
//! Only for f32 tensors on Flex without gradient checkpointing; anything else returns `None`
//! and takes the tensor ops.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Tensor};

use super::flex::{contiguous, new, slice};
use super::{cpu, gemm};

type AdTensor = FloatTensor<Autodiff<Flex>>;

/// `t` as a tracked Flex f32 tensor, or `None`.
fn take<const D: usize>(t: &Tensor<D>) -> Option<AdTensor> {
    if !super::enabled() {
        return None;
    }
    let ad = t.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    (ad.primitive().dtype() == DType::F32).then_some(ad)
}

/// Whether `t` is a tensor these operations take.
pub fn accepts<const D: usize>(t: &Tensor<D>) -> bool {
    take(t).is_some()
}

/// The values of `t` in row-major order.
fn values(t: &AdTensor) -> FlexTensor {
    contiguous(t.primitive().clone())
}

fn wrap<const D: usize>(t: AdTensor) -> Tensor<D> {
    Tensor::from_primitive::<Autodiff<Flex>>(t)
}

/// Registers `op` over `parents` with `state` for its backward pass, output `out`.
fn record<Op, const N: usize>(op: Op, parents: [&AdTensor; N], state: Op::State, out: FlexTensor) -> AdTensor
where
    Op: Backward<Flex, N>,
{
    match op.prepare::<NoCheckpointing>(parents.map(|p| p.node())).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The output gradient of `ops` (contiguous), consumed from `grads`.
fn output_grad<S, const N: usize>(ops: &Ops<S, N>, grads: &mut Gradients) -> FlexTensor {
    contiguous(grads.consume::<Flex>(&ops.node))
}

/// The backward pass of a one-input operation whose state has the input's shape: registers the
/// input's gradient `grad(state values, state's last dimension, output gradient)`.
fn unary_backward(
    ops: Ops<FlexTensor, 1>,
    grads: &mut Gradients,
    grad: impl FnOnce(&[f32], usize, &[f32]) -> Vec<f32>,
) {
    let g = output_grad(&ops, grads);
    if let [Some(parent)] = &ops.parents {
        let shape = ops.state.layout().shape().to_vec();
        let last = *shape.last().expect("a shaped tensor");
        let d = grad(slice(&ops.state), last, slice(&g));
        grads.register::<Flex>(parent.id, new(d, shape));
    }
}

#[derive(Debug)]
struct Softmax {
    scale: f32,
}

impl Backward<Flex, 1> for Softmax {
    /// The probabilities.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary_backward(ops, grads, |p, row, g| cpu::softmax_rows_backward(p, g, row, self.scale));
    }
}

/// [`super::softmax`].
pub fn softmax(scores: &Tensor<4>, scale: f32) -> Option<Tensor<4>> {
    let s = take(scores)?;
    let x = values(&s);
    let dims = x.layout().shape().to_vec();
    let mut p = slice(&x).to_vec();
    cpu::softmax_rows(&mut p, dims[3], scale);
    let p = new(p, dims);
    Some(wrap(record(Softmax { scale }, [&s], p.clone(), p)))
}

#[derive(Debug)]
struct SiluGate;

impl Backward<Flex, 1> for SiluGate {
    /// The input `(x1, x2)`.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary_backward(ops, grads, |h, last, g| cpu::silu_gate_backward(h, g, last / 2));
    }
}

/// [`super::silu_gate`].
pub fn silu_gate(h: &Tensor<3>) -> Option<Tensor<3>> {
    let t = take(h)?;
    let x = values(&t);
    let [b, n, two_hidden] = h.dims();
    let out = new(cpu::silu_gate(slice(&x), two_hidden / 2, None), vec![b, n, two_hidden / 2]);
    Some(wrap(record(SiluGate, [&t], x, out)))
}

#[derive(Debug)]
struct RmsNormModulate {
    eps: f32,
}

impl Backward<Flex, 4> for RmsNormModulate {
    /// `(x, weight, scale)`.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, weight, scale) = &ops.state;
        let dims = x.layout().shape().to_vec();
        let (dx, dw, dshift, dscale) =
            cpu::rms_norm_modulate_backward(slice(x), dims[1], slice(weight), slice(scale), slice(&g), self.eps);
        let modulation = vec![dims[0], 1, dims[2]];
        let [px, pw, pshift, pscale] = &ops.parents;
        for (parent, d, shape) in [
            (px, dx, dims.clone()),
            (pw, dw, vec![dims[2]]),
            (pshift, dshift, modulation.clone()),
            (pscale, dscale, modulation),
        ] {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, new(d, shape));
            }
        }
    }
}

/// [`super::rms_norm_modulate`], `weight` the norm's gain.
pub fn rms_norm_modulate(
    x: &Tensor<3>,
    weight: &Tensor<1>,
    shift: &Tensor<3>,
    scale: &Tensor<3>,
    eps: f32,
) -> Option<Tensor<3>> {
    let (tx, tw, tsh, tsc) = (take(x)?, take(weight)?, take(shift)?, take(scale)?);
    let (vx, vw, vsh, vsc) = (values(&tx), values(&tw), values(&tsh), values(&tsc));
    let out = cpu::rms_norm_modulate(slice(&vx), x.dims()[1], slice(&vw), slice(&vsh), slice(&vsc), eps);
    let out = new(out, x.dims().to_vec());
    Some(wrap(record(RmsNormModulate { eps }, [&tx, &tw, &tsh, &tsc], (vx, vw, vsc), out)))
}

#[derive(Debug)]
struct RmsNormRope {
    eps: f32,
}

impl Backward<Flex, 2> for RmsNormRope {
    /// `(x, weight, cos, sin_signed)`.
    type State = (FlexTensor, FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, weight, cos, sin) = &ops.state;
        let dims = x.layout().shape().to_vec();
        let (dx, dw) =
            cpu::rms_norm_rope_backward(slice(x), dims[2], slice(weight), slice(cos), slice(sin), slice(&g), self.eps);
        let [px, pw] = &ops.parents;
        if let Some(parent) = px {
            grads.register::<Flex>(parent.id, new(dx, dims.clone()));
        }
        if let Some(parent) = pw {
            grads.register::<Flex>(parent.id, new(dw, vec![dims[3]]));
        }
    }
}

/// [`super::rms_norm_rope`] for `x` `[B, heads, T, head_dim]`.
pub fn rms_norm_rope(
    x: &Tensor<4>,
    weight: &Tensor<1>,
    cos: &Tensor<2>,
    sin_signed: &Tensor<2>,
    eps: f32,
) -> Option<Tensor<4>> {
    let (tx, tw) = (take(x)?, take(weight)?);
    let (tcos, tsin) = (take(cos)?, take(sin_signed)?);
    let (vx, vw, vcos, vsin) = (values(&tx), values(&tw), values(&tcos), values(&tsin));
    let out = cpu::rms_norm_rope(slice(&vx), x.dims()[2], slice(&vw), slice(&vcos), slice(&vsin), eps);
    let out = new(out, x.dims().to_vec());
    Some(wrap(record(RmsNormRope { eps }, [&tx, &tw], (vx, vw, vcos, vsin), out)))
}

#[derive(Debug)]
struct Linear {
    d_in: usize,
    d_out: usize,
}

/// With parents `[x, weight]` or `[x, weight, bias]`.
impl<const N: usize> Backward<Flex, N> for Linear {
    /// `(x, weight)`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let (x, weight) = &ops.state;
        let parent = |i: usize| ops.parents.get(i).and_then(|p| p.as_ref());
        let needed = [0, 1, 2].map(|i| parent(i).is_some());
        let ds = gemm::linear_backward(slice(x), slice(weight), slice(&g), self.d_in, self.d_out, needed);
        let shapes = [x.layout().shape().to_vec(), vec![self.d_in, self.d_out], vec![self.d_out]];
        for (i, (d, shape)) in ds.into_iter().zip(shapes).enumerate() {
            if let (Some(d), Some(parent)) = (d, parent(i)) {
                grads.register::<Flex>(parent.id, new(d, shape));
            }
        }
    }
}

/// [`super::linear`] with the layer's `weight` `[d_in, d_out]` and `bias` `[d_out]`.
pub fn linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Option<Tensor<D>> {
    let (tx, tw) = (take(x)?, take(weight)?);
    let tb = match bias {
        Some(b) => Some(take(b)?),
        None => None,
    };
    let (vx, vw, vb) = (values(&tx), values(&tw), tb.as_ref().map(values));
    let [d_in, d_out] = weight.dims();
    let mut dims = x.dims();
    dims[D - 1] = d_out;
    let out = new(gemm::linear(slice(&vx), slice(&vw), vb.as_ref().map(slice), d_in, d_out), dims.to_vec());
    let op = Linear { d_in, d_out };
    let out = match &tb {
        Some(tb) => record(op, [&tx, &tw, tb], (vx, vw), out),
        None => record(op, [&tx, &tw], (vx, vw), out),
    };
    Some(wrap(out))
}

#[derive(Debug)]
struct QkvAttention {
    layout: cpu::QkvLayout,
    scale: f32,
    eps: f32,
}

/// What the backward pass of [`QkvAttention`] reads: its inputs, and `q`, `k`, `v` and the
/// probabilities from the forward pass.
#[derive(Debug, Clone)]
struct QkvAttentionState {
    qkv: FlexTensor,
    norm_rope: NormRopeTensors,
    heads: [FlexTensor; 3],
    probs: FlexTensor,
}

/// The values behind a [`cpu::QkNormRope`].
#[derive(Debug, Clone)]
struct NormRopeTensors {
    q_weight: FlexTensor,
    k_weight: FlexTensor,
    cos: FlexTensor,
    sin_signed: FlexTensor,
}

impl NormRopeTensors {
    fn view(&self, eps: f32) -> cpu::QkNormRope<'_> {
        cpu::QkNormRope {
            q_weight: slice(&self.q_weight),
            k_weight: slice(&self.k_weight),
            cos: slice(&self.cos),
            sin_signed: slice(&self.sin_signed),
            eps,
        }
    }
}

impl Backward<Flex, 3> for QkvAttention {
    /// Parents `[qkv, q_weight, k_weight]`.
    type State = QkvAttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = output_grad(&ops, grads);
        let st = &ops.state;
        let l = self.layout;
        let shape = cpu::AttentionShape { batch: l.batch, heads: l.heads, tokens: l.tokens, head_dim: l.head_dim };
        let [q, k, v] = st.heads.each_ref().map(slice);
        let [dq, dk, dv] = cpu::attention_backward(q, k, v, slice(&st.probs), slice(&g), &shape, self.scale);
        let (dqkv, dqw, dkw) =
            cpu::qkv_heads_backward(slice(&st.qkv), &l, &st.norm_rope.view(self.eps), [&dq, &dk, &dv]);
        let shapes = [st.qkv.layout().shape().to_vec(), vec![l.head_dim], vec![l.head_dim]];
        for ((parent, d), shape) in ops.parents.iter().zip([dqkv, dqw, dkw]).zip(shapes) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, new(d, shape));
            }
        }
    }
}

/// [`super::qkv_attention`] without dropout, for `qkv` `[B, T, 3·D]` with a head width the
/// kernels take: `[B, T, D]`.
#[allow(clippy::too_many_arguments)] // the inputs of qkv_heads and attention
pub fn qkv_attention(
    qkv: &Tensor<3>,
    heads: usize,
    q_weight: &Tensor<1>,
    k_weight: &Tensor<1>,
    cos: &Tensor<2>,
    sin_signed: &Tensor<2>,
    scale: f32,
    eps: f32,
) -> Option<Tensor<3>> {
    let [b, t, d3] = qkv.dims();
    let hd = d3 / 3 / heads;
    if !cpu::attention_supports(hd) || d3 != 3 * heads * hd {
        return None;
    }
    let (tqkv, tqw, tkw) = (take(qkv)?, take(q_weight)?, take(k_weight)?);
    let (tcos, tsin) = (take(cos)?, take(sin_signed)?);
    let layout = cpu::QkvLayout { batch: b, tokens: t, heads, head_dim: hd };
    let norm_rope = NormRopeTensors {
        q_weight: values(&tqw),
        k_weight: values(&tkw),
        cos: values(&tcos),
        sin_signed: values(&tsin),
    };
    let qkv_values = values(&tqkv);
    let [q, k, v] = cpu::qkv_heads(slice(&qkv_values), &layout, &norm_rope.view(eps));
    let shape = cpu::AttentionShape { batch: b, heads, tokens: t, head_dim: hd };
    let (out, probs) = cpu::attention_with_probs(&q, &k, &v, &shape, scale);
    let dims = vec![b, heads, t, hd];
    let state = QkvAttentionState {
        qkv: qkv_values,
        norm_rope,
        heads: [q, k, v].map(|x| new(x, dims.clone())),
        probs: new(probs, vec![b, heads, t, t]),
    };
    let out = new(out, vec![b, t, heads * hd]);
    Some(wrap(record(QkvAttention { layout, scale, eps }, [&tqkv, &tqw, &tkw], state, out)))
}
