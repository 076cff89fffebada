//! Multi-head self-attention with RMS qk-norm and 2-D RoPE (softmax in f32).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::fused;

use super::norm::RmsNorm;
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

    /// `x` `[B, T, D]` with RoPE tables for T tokens → `[B, T, D]` (`qkv` and `proj` in `mm`'s
    /// type; scores, softmax and the weighted sum in f32, as the reference).
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, mm: MatmulDtype) -> Tensor<3> {
        let [_, _, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        let scale = 1.0 / (hd as f64).sqrt();
        let norms = (&self.q_norm, &self.k_norm);
        let out = fused::attention_from_input(&self.qkv, x, mm, h, norms, rope, scale, &self.attn_drop);
        self.proj_drop.forward(mm.linear(&self.proj, out))
    }
}
