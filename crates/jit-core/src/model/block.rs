//! The transformer block with adaLN-Zero conditioning.

#![allow(non_snake_case)] // `adaLN_modulation` is the reference's name

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Device;
use burn::tensor::Tensor;

use crate::ops;

use super::attention::Attention;
use super::mlp::SwiGlu;
use super::norm::{RMS_EPS, RmsNorm};
use super::rope::Rope;
use super::{Init, MatmulDtype, linear};

/// The first of attention's chunks (shift, scale, gate) in a block's adaLN output.
const MSA: usize = 0;
/// The first of the MLP's chunks (shift, scale, gate) in a block's adaLN output.
const MLP: usize = 3;

/// `JiTBlock`: `x += gate_msa·Attn(modulate(norm1(x)))`, `x += gate_mlp·SwiGLU(modulate(norm2(x)))`.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct JitBlock {
    /// RMSNorm before attention.
    pub norm1: RmsNorm,
    /// Self-attention.
    pub attn: Attention,
    /// RMSNorm before the MLP.
    pub norm2: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: SwiGlu,
    /// `Linear(D, 6D)` on SiLU(c), zero-initialised: shift/scale/gate for attention then MLP.
    pub adaLN_modulation: Linear,
}

impl JitBlock {
    /// A block of width `dim`; `drop = (attn_drop, proj_drop)`.
    pub fn new(dim: usize, heads: usize, mlp_hidden: usize, drop: (f64, f64), device: &Device) -> Self {
        Self {
            norm1: RmsNorm::new(dim, device),
            attn: Attention::new(dim, heads, drop.0, drop.1, device),
            norm2: RmsNorm::new(dim, device),
            mlp: SwiGlu::new(dim, mlp_hidden, drop.1, device),
            adaLN_modulation: linear(dim, 6 * dim, true, Init::Zeros, device),
        }
    }

    /// `x` `[B, T, D]`, `c_silu` = SiLU(c) `[B, D]` → `[B, T, D]`.
    pub fn forward(&self, x: Tensor<3>, c_silu: Tensor<2>, rope: &Rope, mm: MatmulDtype) -> Tensor<3> {
        // The adaLN output [B, 6·D]: shift, scale, gate for attention, then for the MLP; each
        // op reads its chunks of it (and writes its chunks of the gradient). Under mixed
        // precision it stays in the products' type, as the reference's autocast leaves it, and
        // so do the normalised tokens `rms_norm_modulate` writes for `qkv` and `w12`.
        let m = mm.linear_in_type(&self.adaLN_modulation, c_silu);
        // modulate(x) = x·(1 + scale) + shift after each RMSNorm (adaLN).
        let h = ops::rms_norm_modulate(x.clone(), self.norm1.weight.val(), m.clone(), MSA, RMS_EPS);
        let x = ops::gated_residual(x, m.clone(), MSA + 2, self.attn.forward(h, rope, mm));
        let h = ops::rms_norm_modulate(x.clone(), self.norm2.weight.val(), m.clone(), MLP, RMS_EPS);
        ops::gated_residual(x, m, MLP + 2, self.mlp.forward(h, mm))
    }
}
