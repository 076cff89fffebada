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

use super::reference::sum_dims;
use super::{JitOps, reference};

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
    eps: f32,
}

impl<B: JitOps> Backward<B, 4> for RmsNormModulate {
    /// `(x, weight, scale)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [px, pw, pshift, pscale] = ids(&ops);
        let (x, weight, scale) = ops.state;
        let (dx, dweight, dshift, dscale) = B::rms_norm_modulate_backward(x, weight, scale, g, self.eps);
        register::<B>(grads, px, || dx);
        register::<B>(grads, pw, || dweight);
        register::<B>(grads, pshift, || dshift);
        register::<B>(grads, pscale, || dscale);
    }
}

#[derive(Debug)]
struct QkvHeads {
    heads: usize,
    eps: f32,
}

impl<B: JitOps> Backward<B, 3> for QkvHeads {
    /// `(qkv, q_weight, k_weight, cos, sin_signed)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [pqkv, pq, pk] = ids(&ops);
        let (qkv, q_weight, k_weight, cos, sin) = ops.state;
        let (dqkv, dq_weight, dk_weight) =
            B::qkv_heads_backward(qkv, q_weight, k_weight, cos, sin, g, self.heads, self.eps);
        register::<B>(grads, pqkv, || dqkv);
        register::<B>(grads, pq, || dq_weight);
        register::<B>(grads, pk, || dk_weight);
    }
}

#[derive(Debug)]
struct Attention {
    scale: f32,
}

impl<B: JitOps> Backward<B, 3> for Attention {
    /// `(q, k, v, probabilities)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [pq, pk, pv] = ids(&ops);
        let (q, k, v, probs) = ops.state;
        let (dq, dk, dv) = B::head_attention_backward(q, k, v, probs, g, self.scale);
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
struct GatedResidual;

impl<B: JitOps> Backward<B, 3> for GatedResidual {
    /// `(gate, y)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [px, pgate, py] = ids(&ops);
        let (gate, y) = ops.state;
        register::<B>(grads, pgate, || sum_dims::<B>(B::float_mul(g.clone(), y), &[1]));
        register::<B>(grads, py, || B::float_mul(g.clone(), gate));
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
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let out = B::rms_norm_modulate(inner(&x), inner(&weight), inner(&shift), inner(&scale), eps);
        let state = (inner(&x), inner(&weight), inner(&scale));
        record::<B, C, _, 4>(RmsNormModulate { eps }, [&x, &weight, &shift, &scale], state, out)
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

    fn head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let (out, probs) = B::head_attention_train(inner(&q), inner(&k), inner(&v), scale);
        let state = (inner(&q), inner(&k), inner(&v), probs);
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

    fn gated_residual(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::gated_residual(inner(&x), inner(&gate), inner(&y));
        record::<B, C, _, 3>(GatedResidual, [&x, &gate, &y], (inner(&gate), inner(&y)), out)
    }

    fn cfg_mix(v: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let out = B::cfg_mix(inner(&v), scale);
        record::<B, C, _, 1>(CfgMix { scale }, [&v], (), out)
    }
}
