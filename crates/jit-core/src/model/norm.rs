//! RMSNorm's parameters: `x / sqrt(mean(x²) + eps) · weight` over the last dimension
//! (the maths: [`crate::ops::reference::rms_norm`], fused with what follows it in [`crate::ops`]).

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
}
