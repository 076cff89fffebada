//! The interface between a network and the diffusion math: the objective, the samplers and the
//! training state drive any [`Network`], so JiT and the toy MLP of the paper's manifold
//! experiment share them. (In the reference, `Denoiser` is the wrapper with loss, sampler and
//! EMAs; here that role is split into [`crate::objective`], [`crate::sampler`] and
//! [`crate::train_state`].)

use burn::tensor::{Int, Tensor};

use crate::error::JitError;
use crate::model::Jit;

/// A conditional network over data shaped `[B, C, H, W]` (vectors use `[B, D, 1, 1]`).
pub trait Network {
    /// Network output for noisy data `z`, times `t` `[B]` in [0, 1] and labels `y` `[B]`; same
    /// shape as `z`, read as x, ε or v according to `DiffusionConfig::prediction`.
    fn predict(&self, z: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4>;
    /// The label of the unconditional ("null") class used for guidance.
    fn null_class(&self) -> usize;
    /// Rejects inputs of the wrong shape with a clear error.
    fn check_inputs(&self, _z: &Tensor<4>, _t: &Tensor<1>, _y: &Tensor<1, Int>) -> Result<(), JitError> {
        Ok(())
    }
}

impl Network for Jit {
    fn predict(&self, z: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        self.forward(z, t, y)
    }
    fn null_class(&self) -> usize {
        self.config.num_classes
    }
    fn check_inputs(&self, z: &Tensor<4>, t: &Tensor<1>, y: &Tensor<1, Int>) -> Result<(), JitError> {
        Jit::check_inputs(self, z, t, y)
    }
}
