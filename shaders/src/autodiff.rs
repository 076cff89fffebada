//! [`ShaderOps`] under burn's autodiff, for any inner backend and checkpoint strategy: each
//! fused chain of a training step is one tracked operation. Its forward pass is the inner
//! backend's kernel; its backward pass runs the backward kernels (of RMSNorm with modulate, and
//! of qk-norm with RoPE) or, for the element-wise ops, a few of the inner backend's tensor ops. In place of
//! the dozens of tracked tensor ops (each with its own backward step and saved activations)
//! that the model's tensor-op path records.
//!
//! The backward-only operations (`rms_rows`, `*_dx`, `*_sums`, `*_dweight`) and the EMA update
//! are not differentiated: under autodiff they return untracked results.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{Scalar, Shape, Slice};

use crate::ShaderOps;

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

/// Registers `grad()` for the parent `id`, if it is tracked (`Some`).
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

/// An untracked result.
fn constant<B: Backend, C: CheckpointStrategy>(t: FloatTensor<B>) -> FloatTensor<Ad<B, C>> {
    <Ad<B, C> as AutodiffBackend>::from_inner(t)
}

/// `Σ` of `t` over its dimensions `dims`, keeping them (size 1).
fn sum_dims<B: Backend>(t: FloatTensor<B>, dims: &[usize]) -> FloatTensor<B> {
    dims.iter().fold(t, |t, &d| B::float_sum_dim(t, d))
}

/// `t`'s indices `range` of dimension `dim` (the dimension kept).
fn narrow<B: Backend>(t: FloatTensor<B>, dim: usize, range: core::ops::Range<usize>) -> FloatTensor<B> {
    let rank = t.shape().num_dims();
    let slices: Vec<Slice> =
        (0..rank).map(|d| if d == dim { Slice::from(range.clone()) } else { Slice::full() }).collect();
    B::float_slice(t, &slices)
}

#[derive(Debug)]
struct RmsNormModulate {
    eps: f32,
}

impl<B: ShaderOps> Backward<B, 4> for RmsNormModulate {
    /// `(x, weight, scale)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [px, pw, pshift, pscale] = ids(&ops);
        let (x, weight, scale) = ops.state;
        let d = x.shape()[2];
        let rms = B::rms_rows(x.clone(), d, self.eps);
        let sums = B::rms_norm_modulate_sums(x.clone(), g.clone(), rms.clone());
        let (dshift, gx) = (narrow::<B>(sums.clone(), 1, 0..1), narrow::<B>(sums, 1, 1..2));
        register::<B>(grads, px, || B::rms_norm_modulate_dx(x, weight.clone(), scale.clone(), g, rms));
        register::<B>(grads, pw, || {
            let one_plus = B::float_add_scalar(scale.clone(), Scalar::from(1.0f32));
            B::float_reshape(sum_dims::<B>(B::float_mul(gx.clone(), one_plus), &[0]), Shape::from(vec![d]))
        });
        register::<B>(grads, pshift, || dshift);
        register::<B>(grads, pscale, || B::float_mul(gx, B::float_reshape(weight, Shape::from(vec![1, 1, d]))));
    }
}

#[derive(Debug)]
struct QkvHeads {
    heads: usize,
    eps: f32,
}

impl<B: ShaderOps> Backward<B, 3> for QkvHeads {
    /// `(qkv, q_weight, k_weight, cos, sin_signed)`.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [pqkv, pq, pk] = ids(&ops);
        let (qkv, q_weight, k_weight, cos, sin) = ops.state;
        let head_dim = qkv.shape()[2] / 3 / self.heads;
        let rms = B::rms_rows(qkv.clone(), head_dim, self.eps);
        if pq.is_some() || pk.is_some() {
            let partial =
                B::qkv_heads_dweight(qkv.clone(), cos.clone(), sin.clone(), g.clone(), rms.clone(), self.heads);
            let dw = B::float_sum_dim(partial, 0);
            let part = |i| B::float_reshape(narrow::<B>(dw.clone(), 1, i..i + 1), Shape::from(vec![head_dim]));
            register::<B>(grads, pq, || part(0));
            register::<B>(grads, pk, || part(1));
        }
        register::<B>(grads, pqkv, || B::qkv_heads_dx(qkv, q_weight, k_weight, cos, sin, g, rms, self.heads));
    }
}

#[derive(Debug)]
struct SiluGate;

impl<B: ShaderOps> Backward<B, 1> for SiluGate {
    /// The input `(x1, x2)`.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let [parent] = ids(&ops);
        let h = ops.state;
        register::<B>(grads, parent, || {
            // d/dx1 SiLU(x1)·x2 = x2·σ(x1)·(1 + x1·(1 − σ(x1))); d/dx2 = SiLU(x1).
            let rank = h.shape().num_dims();
            let hidden = h.shape()[rank - 1] / 2;
            let half = |i: usize| narrow::<B>(h.clone(), rank - 1, i * hidden..(i + 1) * hidden);
            let (x1, x2) = (half(0), half(1));
            let sig = B::sigmoid(x1.clone());
            let one_minus = B::float_add_scalar(B::float_neg(sig.clone()), Scalar::from(1.0f32));
            let slope = B::float_mul(
                sig.clone(),
                B::float_add_scalar(B::float_mul(x1.clone(), one_minus), Scalar::from(1.0f32)),
            );
            let dx1 = B::float_mul(B::float_mul(g.clone(), x2), slope);
            let dx2 = B::float_mul(g, B::float_mul(x1, sig));
            B::float_cat(vec![dx1, dx2], rank - 1)
        });
    }
}

#[derive(Debug)]
struct GatedResidual;

impl<B: ShaderOps> Backward<B, 3> for GatedResidual {
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

impl<B: ShaderOps> Backward<B, 1> for CfgMix {
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

impl<B: ShaderOps, C: CheckpointStrategy> ShaderOps for Autodiff<B, C> {
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

    fn cfg_mix(v: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let out = B::cfg_mix(inner(&v), scale);
        record::<B, C, _, 1>(CfgMix { scale }, [&v], (), out)
    }

    fn silu_gate(h: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::silu_gate(inner(&h));
        record::<B, C, _, 1>(SiluGate, [&h], inner(&h), out)
    }

    fn gated_residual(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = B::gated_residual(inner(&x), inner(&gate), inner(&y));
        record::<B, C, _, 3>(GatedResidual, [&x, &gate, &y], (inner(&gate), inner(&y)), out)
    }

    fn ema_blend(ema: FloatTensor<Self>, theta: FloatTensor<Self>, decay: f32, rest: f32) -> FloatTensor<Self> {
        constant::<B, C>(B::ema_blend(inner(&ema), inner(&theta), decay, rest))
    }

    fn rms_rows(x: FloatTensor<Self>, dim: usize, eps: f32) -> FloatTensor<Self> {
        constant::<B, C>(B::rms_rows(inner(&x), dim, eps))
    }

    fn rms_norm_modulate_dx(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::rms_norm_modulate_dx(inner(&x), inner(&weight), inner(&scale), inner(&grad), inner(&rms)))
    }

    fn rms_norm_modulate_sums(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        constant::<B, C>(B::rms_norm_modulate_sums(inner(&x), inner(&grad), inner(&rms)))
    }

    #[allow(clippy::too_many_arguments)] // the forward's inputs and the gradient
    fn qkv_heads_dx(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let [qkv, q_weight, k_weight, cos, sin_signed, grad, rms] =
            [&qkv, &q_weight, &k_weight, &cos, &sin_signed, &grad, &rms].map(inner);
        constant::<B, C>(B::qkv_heads_dx(qkv, q_weight, k_weight, cos, sin_signed, grad, rms, heads))
    }

    fn qkv_heads_dweight(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        rms: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let [qkv, cos, sin_signed, grad, rms] = [&qkv, &cos, &sin_signed, &grad, &rms].map(inner);
        constant::<B, C>(B::qkv_heads_dweight(qkv, cos, sin_signed, grad, rms, heads))
    }
}
