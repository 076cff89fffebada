//! The output head: adaLN-modulated RMSNorm then a linear map to p·p·C values per token.

#![allow(non_snake_case)] // `adaLN_modulation` is the reference's name

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::ops;

use super::norm::{RMS_EPS, RmsNorm};
use super::{Init, MatmulDtype, linear};

/// `FinalLayer`: `linear(modulate(norm_final(x), shift, scale))`.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct FinalLayer {
    /// RMSNorm.
    pub norm_final: RmsNorm,
    /// `Linear(D, p·p·C)`, zero-initialised.
    pub linear: Linear,
    /// `Linear(D, 2D)` on SiLU(c), zero-initialised: (shift, scale).
    pub adaLN_modulation: Linear,
}

impl FinalLayer {
    /// Head for width `dim` and `patch_dim = p·p·C` outputs per token.
    pub fn new(dim: usize, patch_dim: usize, device: &Device) -> Self {
        Self {
            norm_final: RmsNorm::new(dim, device),
            linear: linear(dim, patch_dim, true, Init::Zeros, device),
            adaLN_modulation: linear(dim, 2 * dim, true, Init::Zeros, device),
        }
    }

    /// `x` `[B, N, D]`, `c_silu` `[B, D]` → `[B, N, p·p·C]`.
    pub fn forward(&self, x: Tensor<3>, c_silu: Tensor<2>, mm: MatmulDtype) -> Tensor<3> {
        // The adaLN output [B, 2·D]: chunk 0 the shift, chunk 1 the scale (in the products' type
        // under mixed precision, as the normalised tokens that `linear` takes).
        let m = mm.linear_in_type(&self.adaLN_modulation, c_silu);
        let h = ops::rms_norm_modulate(x, self.norm_final.weight.val(), m, 0, RMS_EPS);
        mm.linear(&self.linear, h)
    }
}
