//! Multi-head self-attention with RMS qk-norm and 2-D RoPE (softmax in f32).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::ops;

use super::norm::{RMS_EPS, RmsNorm};
use super::rope::Rope;
use super::{Init, MatmulDtype, linear};

/// The reference's `Attention`: `qkv` → per-head `q_norm`/`k_norm` → RoPE → softmax(q·kᵀ/√hd)·v
/// → `proj`.
#[derive(Module, Debug)]
pub struct Attention {
    /// `Linear(D, 3D)` with bias.
    pub qkv: Linear,
    /// RMSNorm over head_dim on queries.
    pub q_norm: RmsNorm,
    /// RMSNorm over head_dim on keys.
    pub k_norm: RmsNorm,
    /// `Linear(D, D)`.
    pub proj: Linear,
    /// Dropout on the attention probabilities (training only).
    pub attn_drop: Dropout,
    /// Dropout after `proj` (training only).
    pub proj_drop: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

impl Attention {
    /// Xavier-initialised attention of width `dim`.
    pub fn new(dim: usize, num_heads: usize, attn_drop: f64, proj_drop: f64, device: &Device) -> Self {
        let head_dim = dim / num_heads;
        Self {
            qkv: linear(dim, 3 * dim, true, Init::Xavier, device),
            q_norm: RmsNorm::new(head_dim, device),
            k_norm: RmsNorm::new(head_dim, device),
            proj: linear(dim, dim, true, Init::Xavier, device),
            attn_drop: DropoutConfig::new(attn_drop).init(),
            proj_drop: DropoutConfig::new(proj_drop).init(),
            num_heads,
        }
    }

    /// `x` `[B, T, D]` with RoPE tables for T tokens → `[B, T, D]` (every product in `mm`'s
    /// type, as the reference's autocast; qk-norm, RoPE and the softmax in f32).
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, mm: MatmulDtype) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let gains = (self.q_norm.weight.val(), self.k_norm.weight.val());
        let out = if self.attn_drop.prob == 0.0 {
            match (&self.qkv.bias, mm.0) {
                (Some(bias), None) => {
                    let layer = (self.qkv.weight.val(), bias.val());
                    ops::attention_from_input(x, layer, gains, rope.tables(), h, scale, RMS_EPS)
                }
                (_, None) => ops::qkv_attention(mm.linear(&self.qkv, x), gains, rope.tables(), h, scale, RMS_EPS),
                // Mixed precision: `qkv` and q, k, v in `dtype` (qk-norm and RoPE computed in
                // f32), the two products in `dtype`, the softmax in f32; the output stays in
                // `dtype`, the type `proj` takes (casts to f32 and back would change nothing).
                (_, Some(_)) => {
                    let qkv = mm.linear_in_type(&self.qkv, x);
                    ops::qkv_attention(qkv, gains, rope.tables(), h, scale, RMS_EPS)
                }
            }
        } else {
            // Dropout on the probabilities (training with `attn_dropout` > 0): burn's tensor ops.
            let (q, k, v) = ops::qkv_heads(mm.linear(&self.qkv, x), gains, rope.tables(), h, RMS_EPS);
            let probs = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
            self.attn_drop.forward(probs).matmul(v).swap_dims(1, 2).reshape([b, t, d])
        };
        self.proj_drop.forward(mm.linear(&self.proj, out))
    }
}
