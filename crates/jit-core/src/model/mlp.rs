//! SwiGLU feed-forward: `w3(SiLU(x1) · x2)` with `(x1, x2) = w12(x)`.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::ops;

use super::{Init, MatmulDtype, linear};

/// The reference's `SwiGLUFFN`; hidden width `int(int(D·mlp_ratio)·2/3)`.
#[derive(Module, Debug)]
pub struct SwiGlu {
    /// `Linear(D, 2·hidden)`: both gates at once.
    pub w12: Linear,
    /// `Linear(hidden, D)`.
    pub w3: Linear,
    /// Dropout after `w3` (training only; 0 unless configured).
    pub drop: Dropout,
}

impl SwiGlu {
    /// Xavier-initialised SwiGLU of width `dim` and hidden width `hidden`.
    pub fn new(dim: usize, hidden: usize, drop: f64, device: &Device) -> Self {
        Self {
            w12: linear(dim, 2 * hidden, true, Init::Xavier, device),
            w3: linear(hidden, dim, true, Init::Xavier, device),
            drop: DropoutConfig::new(drop).init(),
        }
    }

    /// `x` `[B, N, D]` → `[B, N, D]`. Under mixed precision the `w12` product's output and the
    /// gate stay in the products' type (the gate computed in f32), the type `w3` takes.
    pub fn forward(&self, x: Tensor<3>, mm: MatmulDtype) -> Tensor<3> {
        let gated = match (&self.w12.bias, mm.0) {
            (Some(bias), None) => ops::swiglu_hidden(x, self.w12.weight.val(), bias.val()),
            _ => ops::silu_gate(mm.linear_in_type(&self.w12, x)),
        };
        self.drop.forward(mm.linear(&self.w3, gated))
    }
}
