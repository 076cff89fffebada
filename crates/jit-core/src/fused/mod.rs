//! Fused operations: the network's hot element-wise chains, its linear layers, attention, the
//! CFG mix and the EMA update, each one switch between two implementations of the same math.
//!
//! - The tensor-op path, written in the model files (`RmsNorm::forward`, `modulate`,
//!   `Rope::forward`, …): it runs on GPUs, under autodiff (training), and in every build.
//! - On burn's CPU backend (Flex), for f32 tensors: the kernels in [`cpu`] (one pass over memory
//!   each) and [`gemm`] (the linear layers as direct calls to the matrix-product library; in
//!   the browser's wasm module, the tiles of [`gemm_simd128`]),
//!   straight on the values outside autodiff (sampling, evaluation, the browser's CPU fallback),
//!   and in training as custom autodiff operations with gradient kernels: linear layers,
//!   softmax, the SwiGLU gate, RMSNorm + modulate, and `qkv` → qk-norm + RoPE → attention as
//!   one operation. On these shapes (≈70 tokens, width 64–384) the tensor ops spent more time
//!   moving memory, in scalar `expf` and in serial work on the calling thread than in the
//!   matrix products (docs/cpu.md).
//!
//! - On GPUs (burn's cubecl backend, f32): the project's CubeCL kernels in `shaders/` (crate
//!   `jit-shaders`) for RMSNorm + modulate, qk-norm + RoPE, SwiGLU's gate, the gated residual
//!   and the CFG mix; in training (the `train` feature) the block's chains are tracked
//!   operations with backward kernels (`jit_shaders`' autodiff module). Outside autodiff
//!   (sampling, the browser on WebGPU) attention is burn's attention op (flash attention where
//!   autotune picks it); in training, its tensor ops.
//!
//! Each function takes the path its input's device and autodiff state select; the results agree
//! to float rounding (tests/fused.rs and tests/shaders.rs compare them on every op).
//! [`set_enabled`]`(false)` sends everything to the tensor ops (for benchmarks).

#[cfg(all(feature = "flex", feature = "train"))]
mod autodiff;
pub mod cpu;
#[cfg(feature = "flex")]
pub mod gemm;
#[cfg(feature = "flex")]
pub mod gemm_simd128;

use core::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "wgpu")]
use burn::backend::Dispatch;
use burn::nn::{Dropout, Linear};
use burn::tensor::Tensor;
#[cfg(feature = "wgpu")]
use burn::tensor::ops::AttentionModuleOptions;
#[cfg(feature = "wgpu")]
use jit_shaders::ShaderOps;

use crate::model::MatmulDtype;
use crate::model::block::modulate;
#[cfg(any(feature = "flex", feature = "wgpu"))]
use crate::model::norm::RMS_EPS;
use crate::model::norm::RmsNorm;
use crate::model::rope::Rope;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused paths on (the default) or off process-wide; off, every operation here takes
/// the tensor ops (`bench --no-fused` measures what the kernels gain).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused paths are on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the operations here take a kernel for `x`: an f32 tensor on Flex (outside autodiff,
/// or in autodiff without gradient checkpointing), or, for the GPU kernels, an f32 tensor on a
/// GPU (under autodiff too, in builds with the `train` feature: the block's chains).
pub fn runs_fused<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "flex")]
    if flex::read(x).is_some() {
        return true;
    }
    #[cfg(all(feature = "flex", feature = "train"))]
    if autodiff::accepts(x) {
        return true;
    }
    #[cfg(feature = "wgpu")]
    if gpu::accepts_tracked(x) {
        return true;
    }
    let _ = x;
    false
}

/// The linear layer `layer(x) = x·weight + bias` over the last dimension of `x` `[…, d_in]`.
pub fn linear<const D: usize>(layer: &Linear, x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    {
        if let Some((out, _)) = product_on_flex(layer, &x, true) {
            return out;
        }
        #[cfg(feature = "train")]
        if let Some(out) = autodiff::linear(&x, &layer.weight.val(), layer.bias.as_ref().map(|b| b.val()).as_ref()) {
            return out;
        }
    }
    layer.forward(x)
}

/// `softmax(scale·scores)` over the last dimension (the attention probabilities).
pub fn softmax(scores: Tensor<4>, scale: f64) -> Tensor<4> {
    #[cfg(feature = "flex")]
    let scores = match flex::take(scores) {
        Ok(mut s) => {
            let row = s.dims[3];
            cpu::softmax_rows(s.values_mut(), row, scale as f32);
            return s.into_tensor();
        }
        Err(scores) => scores,
    };
    #[cfg(all(feature = "flex", feature = "train"))]
    if let Some(p) = autodiff::softmax(&scores, scale as f32) {
        return p;
    }
    burn::tensor::activation::softmax(scores.mul_scalar(scale), 3)
}

/// Multi-head attention `softmax(scale·q·kᵀ)·v` for `q`, `k`, `v` `[B, heads, T, head_dim]`,
/// returned in token order `[B, T, heads·head_dim]`; `attn_drop` on the probabilities (training
/// only).
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, attn_drop: &Dropout) -> Tensor<3> {
    let [b, h, t, hd] = q.dims();
    #[cfg(feature = "flex")]
    if let (true, Some(vq), Some(vk), Some(vv)) =
        (cpu::attention_supports(hd), flex::read(&q), flex::read(&k), flex::read(&v))
    {
        let shape = cpu::AttentionShape { batch: b, heads: h, tokens: t, head_dim: hd };
        return flex::wrap(cpu::attention(vq.values(), vk.values(), vv.values(), &shape, scale as f32), [b, t, h * hd]);
    }
    // On a GPU outside autodiff: burn's attention op (cubecl's flash attention, or its separate
    // kernels, whichever autotune finds faster on the device; dropout is off outside autodiff).
    #[cfg(feature = "wgpu")]
    if [&q, &k, &v].into_iter().all(gpu::accepts) {
        let options = AttentionModuleOptions { scale: Some(scale), softcap: None, is_causal: false };
        let out = burn::tensor::module::attention(q, k, v, None, None, options);
        return out.swap_dims(1, 2).reshape([b, t, h * hd]);
    }
    let attn = attn_drop.forward(softmax(q.matmul(k.swap_dims(2, 3)), scale));
    attn.matmul(v).swap_dims(1, 2).reshape([b, t, h * hd])
}

/// The attention of a block from its `qkv` projection `[B, T, 3·D]`: [`qkv_heads`] then
/// [`attention`], `[B, T, D]`. In training on the CPU (without attention dropout) this is one
/// autodiff operation, whose backward pass writes the gradient of `qkv` in its own layout.
pub fn qkv_attention(
    qkv: Tensor<3>,
    heads: usize,
    (q_norm, k_norm): (&RmsNorm, &RmsNorm),
    rope: &Rope,
    scale: f64,
    attn_drop: &Dropout,
) -> Tensor<3> {
    #[cfg(all(feature = "flex", feature = "train"))]
    if attn_drop.prob == 0.0
        && let Some(out) = autodiff::qkv_attention(
            &qkv,
            heads,
            &q_norm.weight.val(),
            &k_norm.weight.val(),
            &rope.cos,
            &rope.sin_signed,
            scale as f32,
            RMS_EPS,
        )
    {
        return out;
    }
    #[cfg(feature = "flex")]
    if let Some(out) = qkv_attention_on_flex(&qkv, None, heads, (q_norm, k_norm), rope, scale) {
        return out;
    }
    let (q, k, v) = qkv_heads(qkv, heads, q_norm, k_norm, rope);
    attention(q, k, v, scale, attn_drop)
}

/// The attention of a block from its input `x` `[B, T, D]`: `qkv_layer` (products in `mm`'s type)
/// then [`qkv_attention`], `[B, T, D]`. On the CPU outside autodiff, with f32 products, the
/// product is taken without the layer's bias, which the attention adds as it reads each row: no
/// pass that writes the bias into the product's rows first (≈ 5 % of sampling, with the gate's).
#[allow(clippy::too_many_arguments)] // the inputs of the qkv layer and of qkv_attention
pub fn attention_from_input(
    qkv_layer: &Linear,
    x: Tensor<3>,
    mm: MatmulDtype,
    heads: usize,
    (q_norm, k_norm): (&RmsNorm, &RmsNorm),
    rope: &Rope,
    scale: f64,
    attn_drop: &Dropout,
) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if mm == MatmulDtype::default()
        && cpu::attention_supports(qkv_layer.weight.dims()[1] / 3 / heads.max(1))
        && let Some((qkv, bias)) = product_on_flex(qkv_layer, &x, false)
        && let Some(out) =
            qkv_attention_on_flex(&qkv, bias.as_ref().map(|b| b.values()), heads, (q_norm, k_norm), rope, scale)
    {
        return out;
    }
    qkv_attention(mm.linear(qkv_layer, x), heads, (q_norm, k_norm), rope, scale, attn_drop)
}

/// [`cpu::qkv_attention`] (adding `bias` to the rows of `qkv`) when `qkv` and the norms' and
/// RoPE's tensors are f32 Flex tensors outside autodiff and the kernels take the head width.
#[cfg(feature = "flex")]
fn qkv_attention_on_flex(
    qkv: &Tensor<3>,
    bias: Option<&[f32]>,
    heads: usize,
    (q_norm, k_norm): (&RmsNorm, &RmsNorm),
    rope: &Rope,
    scale: f64,
) -> Option<Tensor<3>> {
    on_flex(qkv, heads, q_norm, k_norm, rope, |values, layout, norm_rope| {
        let [b, t, hd] = [layout.batch, layout.tokens, layout.head_dim];
        cpu::attention_supports(hd)
            .then(|| flex::wrap(cpu::qkv_attention(values, bias, layout, norm_rope, scale as f32), [b, t, heads * hd]))
    })
    .flatten()
}

/// SwiGLU's hidden activations from its input `x` `[B, N, D]`: `w12` (products in `mm`'s type)
/// then [`silu_gate`], `[B, N, hidden]`; on the CPU the gate adds `w12`'s bias, as in
/// [`attention_from_input`].
pub fn swiglu_hidden(w12: &Linear, x: Tensor<3>, mm: MatmulDtype) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if mm == MatmulDtype::default()
        && let Some((h, bias)) = product_on_flex(w12, &x, false)
        && let Some(values) = flex::read(&h)
    {
        let [b, n, two_hidden] = h.dims();
        let gated = cpu::silu_gate(values.values(), two_hidden / 2, bias.as_ref().map(|b| b.values()));
        return flex::wrap(gated, [b, n, two_hidden / 2]);
    }
    silu_gate(mm.linear(w12, x))
}

/// `x·weight` of `layer` when `x` and the layer's parameters are f32 Flex tensors outside
/// autodiff: `with_bias`, the layer's output; otherwise the product without the bias, and the
/// bias's values beside it for its consumer to add.
#[cfg(feature = "flex")]
fn product_on_flex<const D: usize>(
    layer: &Linear,
    x: &Tensor<D>,
    with_bias: bool,
) -> Option<(Tensor<D>, Option<flex::Values>)> {
    let weight = layer.weight.val();
    let (xs, w) = (flex::read(x)?, flex::read(&weight)?);
    let bias = match &layer.bias {
        Some(b) => Some(flex::read(&b.val())?),
        None => None,
    };
    let [d_in, d_out] = weight.dims();
    let mut dims = x.dims();
    dims[D - 1] = d_out;
    let added = if with_bias { bias.as_ref().map(|b| b.values()) } else { None };
    let out = flex::wrap(gemm::linear(xs.values(), w.values(), added, d_in, d_out), dims);
    Some((out, if with_bias { None } else { bias }))
}

/// `f(qkv values, layout, qk-norm and RoPE values)` when `qkv` `[B, T, 3·D]` and the norms' and
/// RoPE's tensors are f32 Flex tensors outside autodiff.
#[cfg(feature = "flex")]
fn on_flex<R>(
    qkv: &Tensor<3>,
    heads: usize,
    q_norm: &RmsNorm,
    k_norm: &RmsNorm,
    rope: &Rope,
    f: impl FnOnce(&[f32], &cpu::QkvLayout, &cpu::QkNormRope) -> R,
) -> Option<R> {
    let [b, t, d3] = qkv.dims();
    let (x, qw, kw) = (flex::read(qkv)?, flex::read(&q_norm.weight.val())?, flex::read(&k_norm.weight.val())?);
    let (cos, sin) = (flex::read(&rope.cos)?, flex::read(&rope.sin_signed)?);
    let layout = cpu::QkvLayout { batch: b, tokens: t, heads, head_dim: d3 / 3 / heads };
    let norm_rope = cpu::QkNormRope {
        q_weight: qw.values(),
        k_weight: kw.values(),
        cos: cos.values(),
        sin_signed: sin.values(),
        eps: RMS_EPS,
    };
    Some(f(x.values(), &layout, &norm_rope))
}

/// Classifier-free guidance `v_u + scale·(v_c − v_u)` from `v` `[2B, C, H, W]`, the
/// conditional velocities first, then the unconditional ones.
pub fn cfg_mix(v: Tensor<4>, scale: f64) -> Tensor<4> {
    #[cfg(feature = "flex")]
    if let Some(t) = flex::read(&v) {
        let [b2, c, h, w] = v.dims();
        return flex::wrap(cpu::cfg_mix(t.values(), scale as f32), [b2 / 2, c, h, w]);
    }
    #[cfg(feature = "wgpu")]
    if gpu::accepts(&v) {
        return Tensor::from_dispatch(Dispatch::cfg_mix(v.into_dispatch(), scale as f32));
    }
    let mut halves = v.chunk(2, 0);
    let v_uncond = halves.pop().expect("two halves");
    let v_cond = halves.pop().expect("two halves");
    v_uncond.clone().add(v_cond.sub(v_uncond).mul_scalar(scale))
}

/// The EMA update `ema·decay + θ·(1 − decay)` of one parameter.
pub fn ema_blend<const D: usize>(ema: Tensor<D>, theta: Tensor<D>, decay: f64) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let (Some(e), Some(t)) = (flex::read(&ema), flex::read(&theta)) {
        let out = cpu::ema_blend(e.values(), t.values(), decay as f32, (1.0 - decay) as f32);
        return flex::wrap(out, ema.dims());
    }
    #[cfg(feature = "wgpu")]
    if gpu::accepts(&ema) && gpu::accepts(&theta) {
        let (decay, rest) = (decay as f32, (1.0 - decay) as f32);
        return Tensor::from_dispatch(Dispatch::ema_blend(ema.into_dispatch(), theta.into_dispatch(), decay, rest));
    }
    ema.mul_scalar(decay).add(theta.mul_scalar(1.0 - decay))
}

/// `SiLU(x)`.
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    let x = match flex::take(x) {
        Ok(mut t) => {
            cpu::silu_inplace(t.values_mut());
            return t.into_tensor();
        }
        Err(x) => x,
    };
    burn::tensor::activation::silu(x)
}

/// SwiGLU's gate: `h` `[B, N, 2·hidden]` = `(x1, x2)` → `SiLU(x1)·x2` `[B, N, hidden]`.
pub fn silu_gate(h: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let Some(t) = flex::read(&h) {
        let [b, n, two_hidden] = h.dims();
        return flex::wrap(cpu::silu_gate(t.values(), two_hidden / 2, None), [b, n, two_hidden / 2]);
    }
    #[cfg(all(feature = "flex", feature = "train"))]
    if let Some(out) = autodiff::silu_gate(&h) {
        return out;
    }
    #[cfg(feature = "wgpu")]
    if gpu::accepts_tracked(&h) {
        return Tensor::from_dispatch(Dispatch::silu_gate(h.into_dispatch()));
    }
    let mut halves = h.chunk(2, 2);
    let x2 = halves.pop().expect("two halves");
    let x1 = halves.pop().expect("two halves");
    burn::tensor::activation::silu(x1).mul(x2)
}

/// adaLN-Zero's gated residual `x + gate·y` for `x`, `y` `[B, T, D]` and `gate` `[B, 1, D]`.
/// On a GPU one kernel (`shaders/`; in training a tracked operation), not a product and a sum.
pub fn gated_residual(x: Tensor<3>, gate: Tensor<3>, y: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "wgpu")]
    if [&x, &gate, &y].into_iter().all(gpu::accepts_tracked) {
        return Tensor::from_dispatch(Dispatch::gated_residual(
            x.into_dispatch(),
            gate.into_dispatch(),
            y.into_dispatch(),
        ));
    }
    x.add(gate.mul(y))
}

/// `modulate(norm(x), shift, scale)` for `x` `[B, T, D]` and `shift`, `scale` `[B, 1, D]`.
pub fn rms_norm_modulate(norm: &RmsNorm, x: Tensor<3>, shift: Tensor<3>, scale: Tensor<3>) -> Tensor<3> {
    #[cfg(feature = "flex")]
    if let (Some(xs), Some(w), Some(sh), Some(sc)) =
        (flex::read(&x), flex::read(&norm.weight.val()), flex::read(&shift), flex::read(&scale))
    {
        let out = cpu::rms_norm_modulate(xs.values(), xs.dims[1], w.values(), sh.values(), sc.values(), RMS_EPS);
        return flex::wrap(out, x.dims());
    }
    #[cfg(all(feature = "flex", feature = "train"))]
    if let Some(out) = autodiff::rms_norm_modulate(&x, &norm.weight.val(), &shift, &scale, RMS_EPS) {
        return out;
    }
    #[cfg(feature = "wgpu")]
    if [&x, &shift, &scale].into_iter().all(gpu::accepts_tracked) && gpu::accepts_tracked(&norm.weight.val()) {
        let (x, w, shift, scale) =
            (x.into_dispatch(), norm.weight.val().into_dispatch(), shift.into_dispatch(), scale.into_dispatch());
        return Tensor::from_dispatch(Dispatch::rms_norm_modulate(x, w, shift, scale, RMS_EPS));
    }
    modulate(norm.forward(x), shift, scale)
}

/// The attention's inputs from the `qkv` projection `[B, T, 3·D]`: split into `heads`, queries
/// and keys through their RMSNorms and RoPE. Returns `(q, k, v)`, each `[B, heads, T, D/heads]`.
pub fn qkv_heads(
    qkv: Tensor<3>,
    heads: usize,
    q_norm: &RmsNorm,
    k_norm: &RmsNorm,
    rope: &Rope,
) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, t, d3] = qkv.dims();
    let hd = d3 / 3 / heads;
    #[cfg(feature = "flex")]
    if let Some([q, k, v]) = on_flex(&qkv, heads, q_norm, k_norm, rope, cpu::qkv_heads) {
        let shape = [b, heads, t, hd];
        return (flex::wrap(q, shape), flex::wrap(k, shape), flex::wrap(v, shape));
    }
    #[cfg(feature = "wgpu")]
    if gpu::accepts_tracked(&qkv)
        && [&q_norm.weight.val(), &k_norm.weight.val()].into_iter().all(gpu::accepts_tracked)
        && [&rope.cos, &rope.sin_signed].into_iter().all(gpu::accepts_tracked)
    {
        let out = Dispatch::qkv_heads(
            qkv.into_dispatch(),
            q_norm.weight.val().into_dispatch(),
            k_norm.weight.val().into_dispatch(),
            rope.cos.clone().into_dispatch(),
            rope.sin_signed.clone().into_dispatch(),
            heads,
            RMS_EPS,
        );
        let mut parts = Tensor::<5>::from_dispatch(out).chunk(3, 0).into_iter().map(|p| p.squeeze_dim::<4>(0));
        return (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    }
    let qkv = qkv.reshape([b, t, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let mut parts = qkv.chunk(3, 0).into_iter().map(|p| p.squeeze_dim::<4>(0));
    let (q, k, v) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    (rms_norm_rope(q_norm, rope, q), rms_norm_rope(k_norm, rope, k), v)
}

/// `rope(norm(x))` for queries or keys `x` `[B, heads, T, head_dim]`.
pub fn rms_norm_rope(norm: &RmsNorm, rope: &Rope, x: Tensor<4>) -> Tensor<4> {
    #[cfg(all(feature = "flex", feature = "train"))]
    if let Some(out) = autodiff::rms_norm_rope(&x, &norm.weight.val(), &rope.cos, &rope.sin_signed, RMS_EPS) {
        return out;
    }
    rope.forward(norm.forward(x))
}

/// Which tensors the GPU kernels take.
#[cfg(feature = "wgpu")]
mod gpu {
    use burn::backend::{DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
    use burn::tensor::{DType, Tensor};

    /// Whether `t` is an f32 tensor on burn's cubecl backend (a GPU through wgpu) outside
    /// autodiff, and the fused paths are on.
    pub fn accepts<const D: usize>(t: &Tensor<D>) -> bool {
        on_gpu(t, false)
    }

    /// [`accepts`], or the same under autodiff where the kernels have a backward pass (the
    /// `train` feature): the ops of a training step.
    pub fn accepts_tracked<const D: usize>(t: &Tensor<D>) -> bool {
        on_gpu(t, cfg!(feature = "train"))
    }

    fn on_gpu<const D: usize>(t: &Tensor<D>, tracked_too: bool) -> bool {
        super::enabled()
            && t.dtype() == DType::F32
            && match t.clone().into_dispatch() {
                DispatchTensor { kind: DispatchTensorKind::Cube(_), autodiff } => {
                    tracked_too || autodiff == DispatchAutodiffContext::Disabled
                }
                #[cfg(feature = "train")]
                DispatchTensor { kind: DispatchTensorKind::Autodiff(inner), .. } => {
                    tracked_too && matches!(*inner, DispatchTensorKind::Cube(_))
                }
                #[allow(unreachable_patterns)] // builds with the cubecl backend only
                _ => false,
            }
    }
}

/// Access to Flex tensors behind burn's run-time dispatch.
#[cfg(feature = "flex")]
mod flex {
    use burn::backend::flex::{Flex, FlexTensor};
    use burn::backend::{BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind};
    use burn::tensor::{DType, Tensor, TensorData};

    /// `t` in row-major order (copied only where it is a strided view).
    pub fn contiguous(t: FlexTensor) -> FlexTensor {
        match t.as_slice::<f32>() {
            Some(_) => t,
            None => t.to_contiguous(),
        }
    }

    /// The values of a tensor made [`contiguous`].
    pub fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("made contiguous first")
    }

    /// A Flex tensor of `shape` holding `values`.
    pub fn new(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    /// A Flex f32 tensor's values, read without tracking.
    pub struct Values {
        tensor: FlexTensor,
        /// The shape.
        pub dims: Vec<usize>,
    }

    impl Values {
        /// The values in row-major order.
        pub fn values(&self) -> &[f32] {
            slice(&self.tensor)
        }

        /// The values, to change in place (copied first if another tensor shares them).
        pub fn values_mut(&mut self) -> &mut [f32] {
            let (start, end) = self.tensor.layout().contiguous_offsets().expect("made contiguous by `take`");
            &mut self.tensor.storage_mut::<f32>()[start..end]
        }

        /// Back to a tensor of the same shape.
        pub fn into_tensor<const D: usize>(self) -> Tensor<D> {
            Tensor::from_primitive::<Flex>(self.tensor)
        }
    }

    /// `t`'s values when it is an f32 tensor on Flex outside autodiff, else `None`.
    pub fn read<const D: usize>(t: &Tensor<D>) -> Option<Values> {
        take(t.clone()).ok()
    }

    /// [`read`], taking the tensor (so that its values can change in place), or giving it back.
    #[allow(clippy::result_large_err)] // the error is the caller's own tensor, handed back
    pub fn take<const D: usize>(t: Tensor<D>) -> Result<Values, Tensor<D>> {
        if !super::enabled() {
            return Err(t);
        }
        #[allow(unreachable_patterns)] // single-backend builds have only the Flex variant
        match t.into_dispatch() {
            DispatchTensor {
                kind: DispatchTensorKind::Flex(BackendTensor::Float(tensor)),
                autodiff: DispatchAutodiffContext::Disabled,
            } if tensor.dtype() == DType::F32 => {
                let tensor = contiguous(tensor);
                Ok(Values { dims: tensor.layout().shape().to_vec(), tensor })
            }
            other => Err(Tensor::from_dispatch(other)),
        }
    }

    /// A Flex tensor of `shape` holding `values`.
    pub fn wrap<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_primitive::<Flex>(new(values, shape.to_vec()))
    }
}
