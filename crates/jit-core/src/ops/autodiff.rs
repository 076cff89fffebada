//! [`JitOps`] under burn's autodiff, for any inner backend `B` and any checkpoint strategy:
//! each operation is one tracked node. Its forward pass is `B`'s method (a kernel on Flex and
//! Cube); its backward pass is `B`'s backward method (`*_backward`: the CPU's gradient kernels,
//! the GPU's backward kernels, or the reference), or, for the element-wise ops, a few of `B`'s
//! tensor ops. In place of the dozens of tracked tensor ops, each with its own backward step
//! and saved activations, that the reference records op by op.
//!
//! The EMA update is never differentiated; the backward methods themselves are not
//! differentiable here (their reference bodies are, op by op).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};
use burn::tensor::Scalar;

use super::{JitOps, reference, split_parts};

type Ad<B, C> = Autodiff<B, C>;

/// Registers `op` over `parents` with `state` for its backward pass, output `out`.
fn record<B, C, Op, const N: usize>(
    op: Op,
    parents: [&FloatTensor<Ad<B, C>>; N],
    state: Op::State,
    out: FloatTensor<B>,
) -> FloatTensor<Ad<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    Op: Backward<B, N>,
{
    match op.prepare::<C>(parents.map(|p| p.node())).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Registers `grad` for the parent `id`, if it is tracked (`Some`).
fn register<B: Backend>(grads: &mut Gradients, id: Option<NodeId>, grad: impl FnOnce() -> FloatTensor<B>) {
    if let Some(id) = id {
        grads.register::<B>(id, grad());
    }
}

/// The tracked parents' node ids.
fn ids<S, const N: usize>(ops: &Ops<S, N>) -> [Option<NodeId>; N] {
    ops.parents.each_ref().map(|p| p.as_ref().map(|p| p.id))
}

/// The inner backend's tensor (the same type under every checkpoint strategy).
fn inner<B: Backend>(t: &FloatTensor<Autodiff<B>>) -> FloatTensor<B> {
    t.primitive().clone()
}

#[derive(Debug)]
struct Linear;

/// With parents `[x, weight]` or `[x, weight, bias]`.
impl<B: JitOps, const N: usize> Backward<B, N> for Linear {
    /// `(x, weight)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let id = ids(&ops);
        let pbias = id.get(2).copied().flatten();
        register::<B>(grads, pbias, || reference::bias_grad::<B>(g.clone()));
        let (x, weight) = ops.state;
        let (dx, dweight) = B::linear_layer_backward(x, weight, g);
        register::<B>(grads, id[0], || dx);
        register::<B>(grads, id[1], || dweight);
    }
}

#[derive(Debug)]
struct RmsNormModulate {
    index: usize,
    eps: f32,
}

/// With parents `[x, weight, modulation]`: the adaLN output gets one gradient for both its
/// chunks.
impl<B: JitOps> Backward<B, 3> for RmsNormModulate {
    /// `(x, weight, modulation)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [px, pw, pm] = ids(&ops);
        let (x, weight, modulation) = ops.state;
        let (dx, dweight, dmodulation) = B::rms_norm_modulate_backward(x, weight, modulation, self.index, g, self.eps);
        register::<B>(grads, px, || dx);
        register::<B>(grads, pw, || dweight);
        register::<B>(grads, pm, || dmodulation);
    }
}

#[derive(Debug)]
struct QkvHeads {
    heads: usize,
    eps: f32,
}

/// `qkv_heads`' inputs `(qkv, q_weight, k_weight, cos, sin_signed)`.
type QkvInputs<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

impl QkvHeads {
    /// Registers `qkv_heads`' gradients for its tracked `parents` `[qkv, q_weight, k_weight]`
    /// from its three parts' gradients.
    fn register<B: JitOps>(
        &self,
        grads: &mut Gradients,
        parents: [Option<NodeId>; 3],
        inputs: QkvInputs<B>,
        parts: [FloatTensor<B>; 3],
    ) {
        let [pqkv, pq, pk] = parents;
        let (qkv, q_weight, k_weight, cos, sin) = inputs;
        let [dq, dk, dv] = parts;
        let (dqkv, dq_weight, dk_weight) =
            B::qkv_heads_backward(qkv, q_weight, k_weight, cos, sin, dq, dk, dv, self.heads, self.eps);
        register::<B>(grads, pqkv, || dqkv);
        register::<B>(grads, pq, || dq_weight);
        register::<B>(grads, pk, || dk_weight);
    }
}

impl<B: JitOps> Backward<B, 3> for QkvHeads {
    type State = QkvInputs<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        self.register::<B>(grads, ids(&ops), ops.state, split_parts::<B>(g));
    }
}

#[derive(Debug)]
struct QkvAttention {
    qkv_heads: QkvHeads,
    scale: f32,
}

/// `qkv_heads` and attention as one node (parents `[qkv, q_weight, k_weight]`): attention's
/// three gradients go straight into `qkv_heads`' backward pass, with no gradient of the stacked
/// heads to pad and add up.
impl<B: JitOps> Backward<B, 3> for QkvAttention {
    /// `qkv_heads`' inputs, its output `[3, B, heads, T, hd]`, attention's output and what it
    /// kept for its backward pass.
    type State = (QkvInputs<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let parents = ids(&ops);
        let (inputs, heads_out, out, saved) = ops.state;
        let [q, k, v] = split_parts::<B>(heads_out);
        let (dq, dk, dv) = B::head_attention_backward(q, k, v, out, saved, g, self.scale);
        self.qkv_heads.register::<B>(grads, parents, inputs, [dq, dk, dv]);
    }
}

#[derive(Debug)]
struct Attention {
    scale: f32,
}

impl<B: JitOps> Backward<B, 3> for Attention {
    /// `(q, k, v, output, what attention kept for its backward pass)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [pq, pk, pv] = ids(&ops);
        let (q, k, v, out, saved) = ops.state;
        let (dq, dk, dv) = B::head_attention_backward(q, k, v, out, saved, g, self.scale);
        register::<B>(grads, pq, || dq);
        register::<B>(grads, pk, || dk);
        register::<B>(grads, pv, || dv);
    }
}

#[derive(Debug)]
struct Part {
    dim: usize,
    index: usize,
    parts: usize,
}

impl<B: JitOps> Backward<B, 1> for Part {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ids(&ops);
        register::<B>(grads, parent, || B::part_backward(g, self.dim, self.index, self.parts));
    }
}

#[derive(Debug)]
struct SiluGate;

impl<B: JitOps> Backward<B, 1> for SiluGate {
    /// The input `(x1, x2)`.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ids(&ops);
        register::<B>(grads, parent, || B::silu_gate_backward(ops.state, g));
    }
}

#[derive(Debug)]
struct Silu;

impl<B: JitOps> Backward<B, 1> for Silu {
    /// The input.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ids(&ops);
        register::<B>(grads, parent, || B::float_mul(g, reference::silu_slope::<B>(ops.state)));
    }
}

#[derive(Debug)]
struct GatedResidual {
    index: usize,
}

/// With parents `[x, modulation, y]`.
impl<B: JitOps> Backward<B, 3> for GatedResidual {
    /// `(modulation, y)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [px, pm, py] = ids(&ops);
        let (modulation, y) = ops.state;
        let (dmodulation, dy) = B::gated_residual_backward(modulation, self.index, g.clone(), y);
        register::<B>(grads, py, || dy);
        register::<B>(grads, pm, || dmodulation);
        register::<B>(grads, px, || g);
    }
}

#[derive(Debug)]
struct CfgMix {
    scale: f32,
}

impl<B: JitOps> Backward<B, 1> for CfgMix {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ids(&ops);
        register::<B>(grads, parent, || {
            let cond = B::float_mul_scalar(g.clone(), Scalar::from(self.scale));
            let uncond = B::float_mul_scalar(g, Scalar::from(1.0 - self.scale));
            B::float_cat(vec![cond, uncond], 0)
        });
    }
}

impl<B: JitOps, C: CheckpointStrategy> JitOps for Autodiff<B, C> {
    fn linear_layer(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::linear_layer(inner(&x), inner(&weight), inner(&bias));
        record::<B, C, _, 3>(Linear, [&x, &weight, &bias], (inner(&x), inner(&weight)), out)
    }

    fn linear_product(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::linear_product(inner(&x), inner(&weight));
        record::<B, C, _, 2>(Linear, [&x, &weight], (inner(&x), inner(&weight)), out)
    }

    fn rms_norm_modulate(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        index: usize,
        eps: f32,
    ) -> FloatTensor<Self> {
        let out = B::rms_norm_modulate(inner(&x), inner(&weight), inner(&modulation), index, eps);
        let state = (inner(&x), inner(&weight), inner(&modulation));
        record::<B, C, _, 3>(RmsNormModulate { index, eps }, [&x, &weight, &modulation], state, out)
    }

    fn qkv_heads(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        heads: usize,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (inner(&cos), inner(&sin_signed));
        let out = B::qkv_heads(inner(&qkv), inner(&q_weight), inner(&k_weight), cos.clone(), sin.clone(), heads, eps);
        let state = (inner(&qkv), inner(&q_weight), inner(&k_weight), cos, sin);
        record::<B, C, _, 3>(QkvHeads { heads, eps }, [&qkv, &q_weight, &k_weight], state, out)
    }

    fn qkv_attention(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        heads: usize,
        scale: f32,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (inner(&cos), inner(&sin_signed));
        let (x, qw, kw) = (inner(&qkv), inner(&q_weight), inner(&k_weight));
        let heads_out = B::qkv_heads(x.clone(), qw.clone(), kw.clone(), cos.clone(), sin.clone(), heads, eps);
        let [q, k, v] = split_parts::<B>(heads_out.clone());
        let (out, saved) = B::head_attention_train(q, k, v, scale);
        let state = ((x, qw, kw, cos, sin), heads_out, out.clone(), saved);
        let op = QkvAttention { qkv_heads: QkvHeads { heads, eps }, scale };
        record::<B, C, _, 3>(op, [&qkv, &q_weight, &k_weight], state, out)
    }

    fn head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let (out, saved) = B::head_attention_train(inner(&q), inner(&k), inner(&v), scale);
        let state = (inner(&q), inner(&k), inner(&v), out.clone(), saved);
        record::<B, C, _, 3>(Attention { scale }, [&q, &k, &v], state, out)
    }

    fn part(t: FloatTensor<Self>, dim: usize, index: usize, parts: usize) -> FloatTensor<Self> {
        let out = B::part(inner(&t), dim, index, parts);
        record::<B, C, _, 1>(Part { dim, index, parts }, [&t], (), out)
    }

    fn silu_gate(h: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::silu_gate(inner(&h));
        record::<B, C, _, 1>(SiluGate, [&h], inner(&h), out)
    }

    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::silu(inner(&x));
        record::<B, C, _, 1>(Silu, [&x], inner(&x), out)
    }

    fn gated_residual(
        x: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        index: usize,
        y: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let out = B::gated_residual(inner(&x), inner(&modulation), index, inner(&y));
        let state = (inner(&modulation), inner(&y));
        record::<B, C, _, 3>(GatedResidual { index }, [&x, &modulation, &y], state, out)
    }

    fn cfg_mix(v: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let out = B::cfg_mix(inner(&v), scale);
        record::<B, C, _, 1>(CfgMix { scale }, [&v], (), out)
    }
}
