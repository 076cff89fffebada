//! [`JitOps`] on burn's cubecl backend (GPUs through wgpu): the CubeCL kernels of `shaders/`
//! (crate `jit-shaders`) for f32 tensors (`qkv_heads`, the parts' gradients, flash attention,
//! attention's softmax and the SwiGLU gate both ways also for f16, and the adaLN output that
//! `rms_norm_modulate` and `gated_residual` read: the mixed-precision products' type). Under
//! burn's `fusion` each call is one custom operation in fusion's stream, the backward passes
//! included. The matrix products (linear layers, attention) are burn's own kernels (the
//! reference bodies); other dtypes run the reference bodies.

use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use jit_shaders::{CubeBackend, CubeTensor};

use super::lists::ListOps;
use super::reference::{chunk, narrow};
use super::{JitOps, reference};

type B = CubeBackend;

/// Whether every tensor is f32 (the kernels' type).
fn f32s(ts: &[&CubeTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

/// Whether `t` is f32 or f16 (the storage types of the kernels that follow the products' type).
fn f32_or_f16(t: &CubeTensor) -> bool {
    matches!(t.dtype(), DType::F32 | DType::F16)
}

/// Whether the flash kernels take `q`, `k`, `v`: one type, f32 or f16, heads of a multiple of 4
/// channels up to [`jit_shaders::MAX_HEAD_DIM`].
fn flash_fits(q: &CubeTensor, k: &CubeTensor, v: &CubeTensor) -> bool {
    let head_dim = q.shape().to_vec().last().copied().unwrap_or(0);
    let width = head_dim.is_multiple_of(4) && (4..=jit_shaders::MAX_HEAD_DIM).contains(&head_dim);
    f32_or_f16(q) && k.dtype() == q.dtype() && v.dtype() == q.dtype() && width
}

impl JitOps for CubeBackend {
    fn rms_norm_modulate(
        x: CubeTensor,
        weight: CubeTensor,
        modulation: CubeTensor,
        index: usize,
        eps: f32,
    ) -> CubeTensor {
        if !f32s(&[&x, &weight]) || !f32_or_f16(&modulation) {
            return reference::rms_norm_modulate::<B>(x, weight, modulation, index, eps);
        }
        super::count_kernel();
        let d = x.shape()[2];
        let (shift, scale) = (chunk::<B>(modulation.clone(), index, d), chunk::<B>(modulation, index + 1, d));
        jit_shaders::rms_norm_modulate(x, weight, shift, scale, eps)
    }

    /// `rms_norm_modulate_dx` for `dx` and the rows' RMS, then `rms_norm_modulate_sums` for
    /// `dmodulation` and the images' parts of `dweight` (summed: one reduction).
    fn rms_norm_modulate_backward(
        x: CubeTensor,
        weight: CubeTensor,
        modulation: CubeTensor,
        index: usize,
        grad: CubeTensor,
        eps: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        if !f32s(&[&x, &weight]) || !f32_or_f16(&modulation) || grad.dtype() != modulation.dtype() {
            return reference::rms_norm_modulate_backward::<B>(x, weight, modulation, index, grad, eps);
        }
        super::count_kernel();
        let d = x.shape()[2];
        let chunks = modulation.shape()[1] / d;
        let scale = chunk::<B>(modulation, index + 1, d);
        let (dx, rms) = jit_shaders::rms_norm_modulate_dx(x.clone(), weight.clone(), scale.clone(), grad.clone(), eps);
        let (dmodulation, partial) = jit_shaders::rms_norm_modulate_sums(x, weight, scale, grad, rms, index, chunks);
        let dweight = B::float_reshape(B::float_sum_dim(partial, 0), Shape::from(vec![d]));
        (dx, dweight, dmodulation)
    }

    fn qkv_heads(
        qkv: CubeTensor,
        q_weight: CubeTensor,
        k_weight: CubeTensor,
        cos: CubeTensor,
        sin_signed: CubeTensor,
        heads: usize,
        eps: f32,
    ) -> CubeTensor {
        if !f32_or_f16(&qkv) || !f32s(&[&q_weight, &k_weight, &cos, &sin_signed]) {
            return reference::qkv_heads::<B>(qkv, q_weight, k_weight, cos, sin_signed, heads, eps);
        }
        super::count_kernel();
        jit_shaders::qkv_heads(qkv, q_weight, k_weight, cos, sin_signed, heads, eps)
    }

    /// `qkv_heads_dx` (with the rows' RMS), then `qkv_heads_dweight`'s partial sums, summed.
    fn qkv_heads_backward(
        qkv: CubeTensor,
        q_weight: CubeTensor,
        k_weight: CubeTensor,
        cos: CubeTensor,
        sin_signed: CubeTensor,
        dq: CubeTensor,
        dk: CubeTensor,
        dv: CubeTensor,
        heads: usize,
        eps: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let same_type = [&dq, &dk, &dv].iter().all(|g| g.dtype() == qkv.dtype());
        if !f32_or_f16(&qkv) || !same_type || !f32s(&[&q_weight, &k_weight, &cos, &sin_signed]) {
            let grads = [dq, dk, dv];
            return reference::qkv_heads_backward::<B>(qkv, q_weight, k_weight, cos, sin_signed, grads, heads, eps);
        }
        super::count_kernel();
        let head_dim = qkv.shape()[2] / 3 / heads;
        let grads = [dq.clone(), dk.clone(), dv];
        let (dqkv, rms) = jit_shaders::qkv_heads_dx(
            qkv.clone(),
            q_weight,
            k_weight,
            cos.clone(),
            sin_signed.clone(),
            grads,
            heads,
            eps,
        );
        let partial = jit_shaders::qkv_heads_dweight(qkv, cos, sin_signed, [dq, dk], rms, heads);
        let dw = B::float_sum_dim(partial, 0);
        let part = |i| B::float_reshape(narrow::<B>(dw.clone(), 1, i..i + 1), Shape::from(vec![head_dim]));
        (dqkv, part(0), part(1))
    }

    fn scaled_softmax(scores: CubeTensor, scale: f32) -> (CubeTensor, CubeTensor) {
        if !f32_or_f16(&scores) {
            return reference::scaled_softmax::<B>(scores, scale);
        }
        super::count_kernel();
        jit_shaders::scaled_softmax(scores, scale)
    }

    fn scaled_softmax_backward(probs: CubeTensor, grad: CubeTensor, scale: f32) -> CubeTensor {
        if probs.dtype() != DType::F32 || !f32_or_f16(&grad) {
            return reference::scaled_softmax_backward::<B>(probs, grad, scale);
        }
        super::count_kernel();
        jit_shaders::scaled_softmax_backward(probs, grad, scale)
    }

    fn flash_attention(q: CubeTensor, k: CubeTensor, v: CubeTensor, scale: f32) -> (CubeTensor, CubeTensor) {
        if !flash_fits(&q, &k, &v) {
            return reference::flash_attention::<B>(q, k, v, scale);
        }
        super::count_kernel();
        jit_shaders::flash_attention(q, k, v, scale)
    }

    fn flash_attention_backward(
        q: CubeTensor,
        k: CubeTensor,
        v: CubeTensor,
        out: CubeTensor,
        lse: CubeTensor,
        grad: CubeTensor,
        scale: f32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let typed = [&out, &grad].iter().all(|t| t.dtype() == q.dtype()) && lse.dtype() == DType::F32;
        if !flash_fits(&q, &k, &v) || !typed {
            return reference::flash_attention_backward::<B>(q, k, v, out, lse, grad, scale);
        }
        super::count_kernel();
        jit_shaders::flash_attention_backward(q, k, v, out, lse, grad, scale)
    }

    fn part_backward(grad: CubeTensor, dim: usize, index: usize, parts: usize) -> CubeTensor {
        if !f32_or_f16(&grad) {
            return reference::part_backward::<B>(grad, dim, index, parts);
        }
        super::count_kernel();
        jit_shaders::pad_part(grad, dim, index, parts)
    }

    fn silu_gate(h: CubeTensor) -> CubeTensor {
        if !f32_or_f16(&h) {
            return reference::silu_gate::<B>(h);
        }
        super::count_kernel();
        jit_shaders::silu_gate(h)
    }

    fn silu_gate_backward(h: CubeTensor, grad: CubeTensor) -> CubeTensor {
        if !f32_or_f16(&h) || grad.dtype() != h.dtype() {
            return reference::silu_gate_backward::<B>(h, grad);
        }
        super::count_kernel();
        jit_shaders::silu_gate_backward(h, grad)
    }

    fn gated_residual(x: CubeTensor, modulation: CubeTensor, index: usize, y: CubeTensor) -> CubeTensor {
        if !f32s(&[&x, &y]) || !f32_or_f16(&modulation) {
            return reference::gated_residual::<B>(x, modulation, index, y);
        }
        super::count_kernel();
        let gate = chunk::<B>(modulation, index, x.shape()[2]);
        jit_shaders::gated_residual(x, gate, y)
    }

    fn gated_residual_backward(
        modulation: CubeTensor,
        index: usize,
        grad: CubeTensor,
        y: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        if !f32s(&[&grad, &y]) || !f32_or_f16(&modulation) {
            return reference::gated_residual_backward::<B>(modulation, index, grad, y);
        }
        super::count_kernel();
        let d = y.shape()[2];
        let chunks = modulation.shape()[1] / d;
        let gate = chunk::<B>(modulation, index, d);
        jit_shaders::gated_residual_backward(gate, index, chunks, grad, y)
    }

    fn cfg_mix(v: CubeTensor, scale: f32) -> CubeTensor {
        if !f32s(&[&v]) {
            return reference::cfg_mix::<B>(v, scale);
        }
        super::count_kernel();
        jit_shaders::cfg_mix(v, scale)
    }
}

impl ListOps for CubeBackend {
    fn adamw_ema(slots: Vec<[CubeTensor; 6]>, factors: CubeTensor) -> Vec<[CubeTensor; 5]> {
        super::count_kernel();
        let slots = slots
            .into_iter()
            .map(|[param, grad, m, v, ema1, ema2]| jit_shaders::AdamWEmaSlot { param, grad, m, v, ema1, ema2 })
            .collect();
        jit_shaders::adamw_ema(slots, factors)
    }

    fn non_finite(values: Vec<CubeTensor>) -> CubeTensor {
        let device = values[0].device.clone();
        let values: Vec<CubeTensor> = values.into_iter().filter(|t| t.meta.shape().num_elements() > 0).collect();
        if values.is_empty() {
            return Self::float_zeros(Shape::new([1]), &device, burn::tensor::FloatDType::F32);
        }
        super::count_kernel();
        Self::float_sum(jit_shaders::non_finite(values))
    }
}
