//! The network's op layer: one burn backend extension, [`JitOps`], with a method per fused
//! operation (the linear layers, RMSNorm + adaLN modulate, `qkv` → qk-norm + RoPE → attention
//! and its softmax or a flash-style pair, SwiGLU's gate, the gated residual, the CFG mix) and
//! the backward passes the training step needs, and [`adamw_ema`] over lists of tensors (AdamW
//! with both EMAs, many parameters per launch), which burn's backend extensions cannot take and
//! `lists` routes by hand. The model calls only the tensor-level functions below; they take
//! tensors and scalars, never model structs.
//!
//! | backend | implementation |
//! |---|---|
//! | default bodies | [`reference`]: the maths in burn's primitive tensor ops, for any backend |
//! | Flex (CPU), f32 | [`flex`]: the kernels of [`crate::fused`] (one pass over memory each, `gemm` for the products) |
//! | Cube (GPUs through wgpu), f32 (also f16 where mixed precision passes it: `qkv_heads`, the parts' gradients, attention's softmax, flash attention, the SwiGLU gate, the adaLN output) | [`cube`]: the CubeCL kernels of `shaders/` (crate `jit-shaders`); under burn's `fusion`, custom operations in its stream |
//! | `Autodiff<B, C>`, any checkpoint strategy | [`autodiff`]: each operation one tracked node whose backward pass calls `B`'s backward method |
//!
//! A backend's method falls back to the reference body for inputs its kernels do not take
//! (another dtype, a head width without a kernel). [`set_enabled`]`(false)` runs the reference
//! bodies op by op on the `Dispatch` backend (under autodiff, each primitive op tracked), to
//! measure what the kernels gain (`bench --no-fused`). Every method and its gradient is tested
//! against the reference (`tests/fused.rs` on Flex, `tests/shaders.rs` on wgpu).

#[cfg(feature = "train")]
mod autodiff;
#[cfg(feature = "wgpu")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(all(feature = "fusion", feature = "wgpu"))]
mod fusion;
mod lists;
pub mod reference;

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch};
use burn::tensor::Tensor;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernels on (the default) or off process-wide; off, every operation runs its
/// reference body on burn's tensor ops (`bench --no-fused` measures what the kernels gain).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the kernels are on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How attention runs where the backend takes [`JitOps::head_attention`]'s default body (GPUs;
/// the CPU has its own kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernels {
    /// [`JitOps::flash_attention`]: one kernel forward and two backward, the `[B, heads, T, T]`
    /// scores kept on chip (FMA arithmetic in f32, no tensor cores).
    Flash,
    /// Two of the backend's matrix products (tensor cores where it has them) around
    /// [`JitOps::scaled_softmax`], the scores and probabilities in memory.
    Products,
}

static FLASH: AtomicBool = AtomicBool::new(false);

/// Chooses how GPUs run attention, process-wide ([`AttentionKernels::Products`] by default).
pub fn set_attention_kernels(kernels: AttentionKernels) {
    FLASH.store(kernels == AttentionKernels::Flash, Ordering::Relaxed);
}

/// How GPUs run attention ([`set_attention_kernels`]).
pub fn attention_kernels() -> AttentionKernels {
    if FLASH.load(Ordering::Relaxed) { AttentionKernels::Flash } else { AttentionKernels::Products }
}

static KERNELS: AtomicUsize = AtomicUsize::new(0);

/// How many operations ran a backend's kernels, not its reference body, in this process (the
/// tests check that the kernels are taken where they should be).
pub fn kernels_run() -> usize {
    KERNELS.load(Ordering::Relaxed)
}

#[cfg_attr(not(any(feature = "flex", feature = "wgpu")), allow(dead_code))] // no kernels in such a build
fn count_kernel() {
    KERNELS.fetch_add(1, Ordering::Relaxed);
}

/// The fused operations. Tensors are f32 in the kernels' paths (f16 too where [`cube`] says);
/// shapes as in [`reference`].
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "fusion"),
    Autodiff: cfg(feature = "train")
)]
pub trait JitOps: Backend {
    /// `x·weight + bias` for `x` `[…, d_in]`, `weight` `[d_in, d_out]`, `bias` `[d_out]`.
    #[fusion(default)]
    fn linear_layer(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::linear_layer::<Self>(x, weight, bias)
    }

    /// `x·weight` (a linear layer without its bias).
    #[fusion(default)]
    fn linear_product(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::linear_product::<Self>(x, weight)
    }

    /// The gradients `(dx, dweight)` of `x·weight` (the bias's is the sum of `grad`'s rows).
    #[fusion(default)]
    fn linear_layer_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::linear_layer_backward::<Self>(x, weight, grad)
    }

    /// RMSNorm + adaLN modulate: `x` `[B, T, D]`, gain `[D]`; shift and scale are chunks
    /// `index` and `index + 1` of the adaLN output `modulation` `[B, n·D]` (n chunks of D). The
    /// result is in `modulation`'s type (under mixed precision the products' type, which the
    /// next layer takes), computed in f32.
    #[fusion(dtype = modulation, shape = x)]
    fn rms_norm_modulate(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        index: usize,
        eps: f32,
    ) -> FloatTensor<Self> {
        reference::rms_norm_modulate::<Self>(x, weight, modulation, index, eps)
    }

    /// [`JitOps::rms_norm_modulate`]'s gradients `(dx, dweight, dmodulation)`: `dmodulation`
    /// `[B, n·D]` holds the shift's and the scale's gradients at their chunks and zeros at the
    /// others (so the adaLN output's gradient is the sum of its consumers', without a copy per
    /// chunk).
    #[fusion(meta = |x, weight, modulation, _index, _grad, _eps| (x.clone(), weight.clone(), modulation.clone()))]
    fn rms_norm_modulate_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        index: usize,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::rms_norm_modulate_backward::<Self>(x, weight, modulation, index, grad, eps)
    }

    /// `qkv` `[B, T, 3·heads·hd]` → `[3, B, heads, T, hd]`: qk-norm (gains `[hd]`) and RoPE
    /// (tables `[T, hd]`) on queries and keys, then the values; in `qkv`'s type, the arithmetic
    /// in f32.
    #[fusion(dtype = qkv, shape = qkv_heads_shape(qkv, heads))]
    #[allow(clippy::too_many_arguments)] // the projection, both gains, both tables, the shape
    fn qkv_heads(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        heads: usize,
        eps: f32,
    ) -> FloatTensor<Self> {
        reference::qkv_heads::<Self>(qkv, q_weight, k_weight, cos, sin_signed, heads, eps)
    }

    /// [`JitOps::qkv_heads`]'s gradients `(dqkv, dq_weight, dk_weight)` from the gradients of
    /// its three parts, `dq`, `dk`, `dv` `[B, heads, T, hd]` (as attention's backward pass
    /// gives them: no stacked copy).
    #[fusion(meta = |qkv, q_weight, k_weight, _cos, _sin, _dq, _dk, _dv, _heads, _eps| (qkv.clone(), q_weight.clone(), k_weight.clone()))]
    #[allow(clippy::too_many_arguments)] // the forward's inputs and the three gradients
    fn qkv_heads_backward(
        qkv: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        dq: FloatTensor<Self>,
        dk: FloatTensor<Self>,
        dv: FloatTensor<Self>,
        heads: usize,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::qkv_heads_backward::<Self>(qkv, q_weight, k_weight, cos, sin_signed, [dq, dk, dv], heads, eps)
    }

    /// Attention `softmax(scale·q·kᵀ)·v` for `q`, `k`, `v` `[B, heads, T, hd]`, in token order
    /// `[B, T, heads·hd]`: [`JitOps::flash_attention`] where [`attention_kernels`] says
    /// [`AttentionKernels::Flash`], else the two products and [`JitOps::scaled_softmax`]. (Under
    /// burn's fusion the body stays in its stream, the kernels custom operations in it.)
    #[fusion(default)]
    fn head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        Self::head_attention_train(q, k, v, scale).0
    }

    /// [`JitOps::head_attention`] and what its backward pass needs besides the inputs and the
    /// output: the probabilities `[B, heads, T, T]` (f32) after the products, each query's
    /// log-sum-exp `[B, heads, T]` (f32) after [`JitOps::flash_attention`].
    #[fusion(default)]
    fn head_attention_train(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match attention_kernels() {
            AttentionKernels::Flash => Self::flash_attention(q, k, v, scale),
            AttentionKernels::Products => reference::head_attention_with::<Self>(q, k, v, scale, Self::scaled_softmax),
        }
    }

    /// [`JitOps::head_attention`]'s gradients `(dq, dk, dv)` from its inputs, its output `out`,
    /// what [`JitOps::head_attention_train`] kept (`saved`: the probabilities, or the
    /// log-sum-exp, which [`JitOps::flash_attention_backward`] takes) and the output's `grad`
    /// `[B, T, heads·hd]`.
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)] // the forward's inputs and outputs, the gradient, the scale
    fn head_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        saved: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use burn::backend::TensorMetadata;
        if saved.shape().num_dims() == 3 {
            return Self::flash_attention_backward(q, k, v, out, saved, grad, scale);
        }
        reference::head_attention_backward_with::<Self>(q, k, v, saved, grad, scale, Self::scaled_softmax_backward)
    }

    /// Attention as a flash-style pair: the output in token order `[B, T, heads·hd]` (`v`'s
    /// type) and each query's log-sum-exp `[B, heads, T]` (f32), the `[B, heads, T, T]` scores
    /// never in memory (on GPUs; the reference body writes them).
    #[fusion(meta = |q, _k, _v, _scale| {
        let [b, h, t, hd] = <[usize; 4]>::try_from(q.shape.to_vec()).expect("[B, heads, T, hd]");
        (
            burn::backend::fusion::custom::TensorSpec::new(burn::tensor::Shape::from(vec![b, t, h * hd]), q.dtype),
            burn::backend::fusion::custom::TensorSpec::new(burn::tensor::Shape::from(vec![b, h, t]), burn::tensor::DType::F32),
        )
    })]
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::flash_attention::<Self>(q, k, v, scale)
    }

    /// [`JitOps::flash_attention`]'s gradients `(dq, dk, dv)` `[B, heads, T, hd]` from its
    /// inputs, its output `out`, the log-sum-exp `lse` and the output's `grad`.
    #[fusion(meta = |q, k, v, _out, _lse, _grad, _scale| (q.clone(), k.clone(), v.clone()))]
    #[allow(clippy::too_many_arguments)] // the forward's inputs and outputs, the gradient, the scale
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        reference::flash_attention_backward::<Self>(q, k, v, out, lse, grad, scale)
    }

    /// Attention's softmax `softmax(scale·scores)` over the last dimension of `scores`
    /// `[B, heads, T, T]`: the probabilities in f32 (for the backward pass) and in the scores'
    /// type (for the product with `v`).
    #[fusion(meta = |scores, _scale| (
        burn::backend::fusion::custom::TensorSpec::new(scores.shape.clone(), burn::tensor::DType::F32),
        scores.clone(),
    ))]
    fn scaled_softmax(scores: FloatTensor<Self>, scale: f32) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::scaled_softmax::<Self>(scores, scale)
    }

    /// [`JitOps::scaled_softmax`]'s gradient with respect to the scores, from the f32
    /// probabilities and their gradient `grad`, in `grad`'s type.
    #[fusion(dtype = grad, shape = grad)]
    fn scaled_softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        reference::scaled_softmax_backward::<Self>(probs, grad, scale)
    }

    /// A block's attention from its `qkv` projection `[B, T, 3·D]`: [`JitOps::qkv_heads`],
    /// then [`JitOps::head_attention`] → `[B, T, D]`.
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)] // qkv_heads' inputs and attention's scale
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
        let parts = Self::qkv_heads(qkv, q_weight, k_weight, cos, sin_signed, heads, eps);
        let [q, k, v] = split_parts::<Self>(parts);
        Self::head_attention(q, k, v, scale)
    }

    /// A block's attention from its input `x` `[B, T, D]`: the `qkv` layer (`weight`, `bias`),
    /// then [`JitOps::qkv_attention`]. (On the CPU the product is taken without the bias, which
    /// the attention adds as it reads each row.)
    #[fusion(default)]
    #[allow(clippy::too_many_arguments)] // the layer's, qkv_heads' and attention's inputs
    fn attention_from_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        q_weight: FloatTensor<Self>,
        k_weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin_signed: FloatTensor<Self>,
        heads: usize,
        scale: f32,
        eps: f32,
    ) -> FloatTensor<Self> {
        let qkv = Self::linear_layer(x, weight, bias);
        Self::qkv_attention(qkv, q_weight, k_weight, cos, sin_signed, heads, scale, eps)
    }

    /// SwiGLU's gate `SiLU(x1)·x2` of `h` `[…, 2·hidden]` → `[…, hidden]` in `h`'s type
    /// (computed in f32).
    #[fusion(dtype = h, shape = half_last_shape(h))]
    fn silu_gate(h: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::silu_gate::<Self>(h)
    }

    /// SwiGLU's hidden activations from its input `x` `[…, D]`: the `w12` layer (`weight`,
    /// `bias`), then [`JitOps::silu_gate`]. (On the CPU the product is taken without the bias,
    /// which the gate adds as it reads each row.)
    #[fusion(default)]
    fn swiglu_hidden(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::silu_gate(Self::linear_layer(x, weight, bias))
    }

    /// [`JitOps::silu_gate`]'s gradient `dh` `[…, 2·hidden]` from `h` and the output's
    /// gradient `grad` `[…, hidden]`.
    #[fusion(dtype = h, shape = h)]
    fn silu_gate_backward(h: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::silu_gate_backward::<Self>(h, grad)
    }

    /// `SiLU(x)`.
    #[fusion(default)]
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::silu::<Self>(x)
    }

    /// adaLN-Zero's gated residual `x + gate·y`, `x`, `y` `[B, T, D]`, the gate chunk `index`
    /// of the adaLN output `modulation` `[B, n·D]`.
    #[fusion(dtype = x, shape = x)]
    fn gated_residual(
        x: FloatTensor<Self>,
        modulation: FloatTensor<Self>,
        index: usize,
        y: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::gated_residual::<Self>(x, modulation, index, y)
    }

    /// [`JitOps::gated_residual`]'s gradients `(dmodulation, dy)` from the output's `grad`
    /// `[B, T, D]`: `dmodulation` `[B, n·D]` is `Σ_t grad·y` at the gate's chunk `index` and
    /// zeros at the others, `dy = grad·gate` (`x`'s gradient is `grad` itself).
    #[fusion(meta = |modulation, _index, grad, _y| (modulation.clone(), grad.clone()))]
    fn gated_residual_backward(
        modulation: FloatTensor<Self>,
        index: usize,
        grad: FloatTensor<Self>,
        y: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        reference::gated_residual_backward::<Self>(modulation, index, grad, y)
    }

    /// Classifier-free guidance of `v` `[2B, …]` (conditional half first) → `[B, …]`.
    #[fusion(dtype = v, shape = half_batch_shape(v))]
    fn cfg_mix(v: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        reference::cfg_mix::<Self>(v, scale)
    }

    /// Part `index` of `parts` equal parts of `t` along dimension `dim` (a view where burn's
    /// slice makes one): `qkv_heads`' three, where attention is not one operation with it.
    #[fusion(default)]
    fn part(t: FloatTensor<Self>, dim: usize, index: usize, parts: usize) -> FloatTensor<Self> {
        reference::part::<Self>(t, dim, index, parts)
    }

    /// [`JitOps::part`]'s gradient: `grad` at part `index` of `parts` along `dim`, zeros elsewhere.
    #[fusion(dtype = grad, shape = parts_shape(grad, dim, parts))]
    fn part_backward(grad: FloatTensor<Self>, dim: usize, index: usize, parts: usize) -> FloatTensor<Self> {
        reference::part_backward::<Self>(grad, dim, index, parts)
    }
}

/// The scalars of one AdamW + EMA step ([`adamw_ema`]), each as burn's AdamW rounds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWEmaFactors {
    /// Learning rate.
    pub lr: f32,
    /// `1 − lr·weight_decay` (1 for parameters without decay).
    pub decay: f32,
    /// β₁ and `1 − β₁`.
    pub beta1: [f32; 2],
    /// β₂ and `1 − β₂`.
    pub beta2: [f32; 2],
    /// The bias corrections `1 − β₁ᵗ` and `1 − β₂ᵗ` at the parameter's step `t` (from 1).
    pub corrections: [f32; 2],
    /// AdamW's ε.
    pub epsilon: f32,
    /// The first EMA's decay and `1 − decay` (worked out in f64: in f32, `1 − 0.9999` is off
    /// by 1.7e-4 of itself).
    pub ema1: [f32; 2],
    /// The second EMA's decay and `1 − decay`.
    pub ema2: [f32; 2],
    /// The gradients' factor before the step: `1 / loss scale` under f16 loss scaling
    /// ([`crate::LossScale`]), else 1.
    pub grad_scale: f32,
}

impl AdamWEmaFactors {
    /// Index of the learning rate in [`Self::values`].
    pub const LR: usize = 0;
    /// Index of `1 − lr·wd`.
    pub const DECAY: usize = 1;
    /// Index of β₁ (`1 − β₁` follows).
    pub const BETA1: usize = 2;
    /// Index of β₂ (`1 − β₂` follows).
    pub const BETA2: usize = 4;
    /// Index of `1 − β₁ᵗ` (`1 − β₂ᵗ` follows).
    pub const CORRECTIONS: usize = 6;
    /// Index of ε.
    pub const EPSILON: usize = 8;
    /// Index of the first EMA's decay (`1 − decay` follows).
    pub const EMA1: usize = 9;
    /// Index of the second EMA's decay (`1 − decay` follows).
    pub const EMA2: usize = 11;
    /// Index of the gradients' factor.
    pub const GRAD_SCALE: usize = 13;
    /// How many factors [`Self::values`] gives.
    pub const COUNT: usize = 14;

    /// The step's factors: learning rate `lr`, weight decay `weight_decay`, `betas`, `epsilon`,
    /// the parameter's step `step` (from 1) and the two EMAs' `decays`.
    pub fn new(lr: f64, weight_decay: f64, betas: (f64, f64), epsilon: f64, step: u64, decays: (f64, f64)) -> Self {
        // As burn's AdamW: β and ε in f32, `1 − β` and the corrections in f32; lr·wd in f64.
        let (b1, b2) = (betas.0 as f32, betas.1 as f32);
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let pair = |d: f64| [d as f32, (1.0 - d) as f32];
        Self {
            lr: lr as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            beta1: [b1, 1.0 - b1],
            beta2: [b2, 1.0 - b2],
            corrections: [1.0 - b1.powi(t), 1.0 - b2.powi(t)],
            epsilon: epsilon as f32,
            ema1: pair(decays.0),
            ema2: pair(decays.1),
            grad_scale: 1.0,
        }
    }

    /// The same step on gradients multiplied by `1 / grad_scale` first (the loss scale's
    /// inverse: a power of two, so the product is exact).
    pub fn with_grad_scale(self, grad_scale: f32) -> Self {
        Self { grad_scale, ..self }
    }

    /// The factors as the kernels take them (a `[14]` tensor on the device, as PyTorch's
    /// capturable AdamW keeps its learning rate there): `[lr, 1 − lr·wd, β₁, 1 − β₁, β₂, 1 − β₂,
    /// 1 − β₁ᵗ, 1 − β₂ᵗ, ε, d₁, 1 − d₁, d₂, 1 − d₂, grad_scale]` (indices
    /// [`AdamWEmaFactors::LR`] …).
    pub fn values(&self) -> [f32; Self::COUNT] {
        let [b1, rb1] = self.beta1;
        let [b2, rb2] = self.beta2;
        let [c1, c2] = self.corrections;
        let [d1, r1] = self.ema1;
        let [d2, r2] = self.ema2;
        [self.lr, self.decay, b1, rb1, b2, rb2, c1, c2, self.epsilon, d1, r1, d2, r2, self.grad_scale]
    }
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn qkv_heads_shape(qkv: &burn::tensor::Shape, heads: &usize) -> burn::tensor::Shape {
    let d = qkv.to_vec();
    let hd = d[2] / 3 / (*heads).max(1);
    burn::tensor::Shape::from(vec![3, d[0], *heads, d[1], hd])
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn parts_shape(grad: &burn::tensor::Shape, dim: &usize, parts: &usize) -> burn::tensor::Shape {
    let mut d = grad.to_vec();
    d[*dim] *= *parts;
    burn::tensor::Shape::from(d)
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn half_batch_shape(v: &burn::tensor::Shape) -> burn::tensor::Shape {
    let mut d = v.to_vec();
    d[0] /= 2;
    burn::tensor::Shape::from(d)
}

#[cfg_attr(not(feature = "fusion"), allow(dead_code))] // fusion's output metadata
fn half_last_shape(h: &burn::tensor::Shape) -> burn::tensor::Shape {
    let mut d = h.to_vec();
    if let Some(last) = d.last_mut() {
        *last /= 2;
    }
    burn::tensor::Shape::from(d)
}

/// `$op($args…)` on the `Dispatch` backend: the backend's [`JitOps`] method with the kernels on,
/// its [`reference`] body otherwise.
macro_rules! route {
    ($op:ident($($arg:expr),* $(,)?)) => {
        if enabled() {
            <Dispatch as JitOps>::$op($($arg),*)
        } else {
            reference::$op::<Dispatch>($($arg),*)
        }
    };
}

fn d<const D: usize>(t: Tensor<D>) -> FloatTensor<Dispatch> {
    t.into_dispatch()
}

fn t<const D: usize>(t: FloatTensor<Dispatch>) -> Tensor<D> {
    Tensor::from_dispatch(t)
}

/// The linear layer `x·weight + bias` over the last dimension of `x` `[…, d_in]`.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    match bias {
        Some(bias) => t(route!(linear_layer(d(x), d(weight), d(bias)))),
        None => t(route!(linear_product(d(x), d(weight)))),
    }
}

/// `modulate(rms_norm(x), shift, scale)` for `x` `[B, T, D]` and gain `weight` `[D]`, with
/// shift and scale chunks `index` and `index + 1` of the adaLN output `modulation` `[B, n·D]`.
pub fn rms_norm_modulate(x: Tensor<3>, weight: Tensor<1>, modulation: Tensor<2>, index: usize, eps: f32) -> Tensor<3> {
    t(route!(rms_norm_modulate(d(x), d(weight), d(modulation), index, eps)))
}

/// The attention's inputs `(q, k, v)`, each `[B, heads, T, hd]`, from `qkv` `[B, T, 3·D]`:
/// qk-norm (gains `[hd]`) and RoPE (tables `cos`, `sin_signed` `[T, hd]`) on q and k.
pub fn qkv_heads(
    qkv: Tensor<3>,
    (q_weight, k_weight): (Tensor<1>, Tensor<1>),
    (cos, sin_signed): (Tensor<2>, Tensor<2>),
    heads: usize,
    eps: f32,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let parts = route!(qkv_heads(d(qkv), d(q_weight), d(k_weight), d(cos), d(sin_signed), heads, eps));
    let [q, k, v] = if enabled() { split_parts::<Dispatch>(parts) } else { reference::split_parts::<Dispatch>(parts) };
    (t(q), t(k), t(v))
}

/// `[3, B, heads, T, hd]` → `q`, `k`, `v` `[B, heads, T, hd]`, each a [`JitOps::part`].
fn split_parts<B: JitOps>(x: FloatTensor<B>) -> [FloatTensor<B>; 3] {
    use burn::backend::TensorMetadata;
    let shape = burn::tensor::Shape::from(x.shape().to_vec()[1..].to_vec());
    [0, 1, 2].map(|i| B::float_reshape(B::part(x.clone(), 0, i, 3), shape.clone()))
}

/// Part `index` of `parts` equal parts of `x` along dimension `dim`.
pub fn part<const D: usize>(x: Tensor<D>, dim: usize, index: usize, parts: usize) -> Tensor<D> {
    t(route!(part(d(x), dim, index, parts)))
}

/// Multi-head attention `softmax(scale·q·kᵀ)·v` for `q`, `k`, `v` `[B, heads, T, hd]`, in
/// token order `[B, T, heads·hd]`.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f32) -> Tensor<3> {
    let out = if enabled() {
        <Dispatch as JitOps>::head_attention(d(q), d(k), d(v), scale)
    } else {
        reference::head_attention::<Dispatch>(d(q), d(k), d(v), scale).0
    };
    t(out)
}

/// A block's attention from its `qkv` projection `[B, T, 3·D]`: `[B, T, D]`.
pub fn qkv_attention(
    qkv: Tensor<3>,
    (q_weight, k_weight): (Tensor<1>, Tensor<1>),
    (cos, sin_signed): (Tensor<2>, Tensor<2>),
    heads: usize,
    scale: f32,
    eps: f32,
) -> Tensor<3> {
    let (qkv, qw, kw, cos, sin) = (d(qkv), d(q_weight), d(k_weight), d(cos), d(sin_signed));
    t(route!(qkv_attention(qkv, qw, kw, cos, sin, heads, scale, eps)))
}

/// A block's attention from its input `x` `[B, T, D]` through the `qkv` layer (`weight`
/// `[D, 3·D]`, `bias` `[3·D]`): `[B, T, D]`.
#[allow(clippy::too_many_arguments)] // the layer's, qkv_heads' and attention's inputs
pub fn attention_from_input(
    x: Tensor<3>,
    (weight, bias): (Tensor<2>, Tensor<1>),
    (q_weight, k_weight): (Tensor<1>, Tensor<1>),
    (cos, sin_signed): (Tensor<2>, Tensor<2>),
    heads: usize,
    scale: f32,
    eps: f32,
) -> Tensor<3> {
    let (x, w, b, qw, kw, cos, sin) = (d(x), d(weight), d(bias), d(q_weight), d(k_weight), d(cos), d(sin_signed));
    t(route!(attention_from_input(x, w, b, qw, kw, cos, sin, heads, scale, eps)))
}

/// SwiGLU's gate: `h` `[B, N, 2·hidden]` = `(x1, x2)` → `SiLU(x1)·x2` `[B, N, hidden]`.
pub fn silu_gate(h: Tensor<3>) -> Tensor<3> {
    t(route!(silu_gate(d(h))))
}

/// SwiGLU's hidden activations from its input `x` `[B, N, D]` through the `w12` layer
/// (`weight` `[D, 2·hidden]`, `bias`): `[B, N, hidden]`.
pub fn swiglu_hidden(x: Tensor<3>, weight: Tensor<2>, bias: Tensor<1>) -> Tensor<3> {
    t(route!(swiglu_hidden(d(x), d(weight), d(bias))))
}

/// `SiLU(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    t(route!(silu(d(x))))
}

/// adaLN-Zero's gated residual `x + gate·y` for `x`, `y` `[B, T, D]`, with the gate chunk
/// `index` of the adaLN output `modulation` `[B, n·D]`.
pub fn gated_residual(x: Tensor<3>, modulation: Tensor<2>, index: usize, y: Tensor<3>) -> Tensor<3> {
    t(route!(gated_residual(d(x), d(modulation), index, d(y))))
}

/// Classifier-free guidance `v_u + scale·(v_c − v_u)` from `v` `[2B, C, H, W]`, the
/// conditional velocities first.
pub fn cfg_mix(v: Tensor<4>, scale: f64) -> Tensor<4> {
    t(route!(cfg_mix(d(v), scale as f32)))
}

/// How many values of `values` (flat, off the autodiff graph; at least one tensor) are NaN or
/// ±∞, as a `[1]` f32 tensor not yet read back: on a GPU many tensors per launch (the check of
/// f16 loss scaling; [`reference::non_finite`] gives the maths).
pub fn non_finite(values: Vec<Tensor<1>>) -> Tensor<1> {
    assert!(!values.is_empty(), "non_finite: at least one tensor");
    lists::non_finite(values)
}

/// One AdamW step and both EMA updates of every parameter of a list (on a GPU, many parameters
/// per launch; [`reference::adamw_ema_one`] gives the maths). `state[i]` = `[m, v, ema1, ema2]`
/// of `params[i]` (all flat and off the autodiff graph, one length per `i`); returns
/// `[θ, m, v, ema1, ema2]` per parameter.
pub fn adamw_ema(
    params: Vec<Tensor<1>>,
    grads: Vec<Tensor<1>>,
    state: Vec<[Tensor<1>; 4]>,
    factors: AdamWEmaFactors,
) -> Vec<[Tensor<1>; 5]> {
    assert!(
        params.len() == grads.len() && params.len() == state.len(),
        "adamw_ema: one gradient and state per parameter"
    );
    if params.is_empty() {
        return Vec::new();
    }
    let slots = params.into_iter().zip(grads).zip(state).map(|((p, g), [m, v, e1, e2])| [p, g, m, v, e1, e2]);
    lists::adamw_ema(slots.collect(), &factors)
}
