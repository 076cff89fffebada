//! RMSNorm: `x / sqrt(mean(x²) + eps) · weight` over the last dimension.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{Device, Tensor};

/// The reference's `eps` inside the square root.
pub const RMS_EPS: f32 = 1e-6;

/// Root-mean-square normalisation with a learned per-channel gain (eps [`RMS_EPS`]).
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain, shape `[dim]`.
    pub weight: Param<Tensor<1>>,
}

impl RmsNorm {
    /// Unit gain over `dim` channels.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self { weight: Initializer::Ones.init([dim], device) }
    }

    /// Normalises `x` `[.., dim]` over its last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let rms = x.clone().square().mean_dim(D - 1).add_scalar(RMS_EPS).sqrt();
        let weight = self.weight.val().unsqueeze::<D>();
        x.div(rms).mul(weight)
    }
}
