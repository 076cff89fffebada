//! The JiT network (`model_jit.py` in the reference), one concept per file.
//!
//! Field names follow the reference's state-dict keys (`x_embedder`, `t_embedder`,
//! `adaLN_modulation`, …) so that [`crate::state_dict`] maps them 1:1.

pub mod attention;
pub mod block;
pub mod embed;
pub mod final_layer;
pub mod jit;
pub mod mlp;
pub mod norm;
pub mod rope;

pub use jit::{Activations, Jit};

use burn::module::Initializer;
use burn::nn::Linear;
use burn::tensor::{Device, FloatDType, Tensor};

/// Float type of the linear layers' matrix products. The reference trains and samples under
/// bf16 autocast: linear layers take bf16 inputs and weights and accumulate in f32. Here a
/// layer whose result returns to f32 (`proj`, `w3`, the embedders, the final layer) adds its
/// bias in f32 to the rounded product, where autocast rounds their sum once; one whose result
/// feeds a consumer that reads the products' type (`adaLN_modulation`, `qkv`, `w12`) adds it in
/// that type ([`Self::linear_in_type`]). Norms, RoPE, the attention softmax, residual sums and
/// the loss compute in f32; training keeps f32 weights, gradients, AdamW moments and EMAs, and
/// casts the weights at each call, while [`crate::Jit::for_sampling`] stores them in the
/// products' type once. `None` computes everything in f32 (weights stored in another type are
/// cast back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatmulDtype(pub Option<FloatDType>);

impl MatmulDtype {
    /// `layer(x)`, with the product in the chosen type and the result back in f32. Under mixed
    /// precision the bias is added to the product's result in f32 (one rounding, as a fused
    /// bias epilogue of a GPU product; an f32 bias and its gradient are not cast).
    pub fn linear<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        let bias = layer.bias.as_ref().map(|b| b.val());
        match self.0 {
            None => Self::typed(FloatDType::F32, layer, x, bias),
            Some(dtype) => {
                let product = Self::typed(dtype, layer, x, None).cast(FloatDType::F32);
                match bias {
                    // (An f32 bias is not cast; one stored in another type is added in f32.)
                    Some(b) => product.add(b.cast(FloatDType::F32).unsqueeze()),
                    None => product,
                }
            }
        }
    }

    /// `layer(x)` with the result left in the product's type (the bias added in that type), for
    /// a consumer that takes that type (the next linear layer, `qkv_heads`), where a cast to f32
    /// and back would change nothing but cost two passes each way. An `x` already in the chosen
    /// type is not cast.
    pub fn linear_in_type<const D: usize>(self, layer: &Linear, x: Tensor<D>) -> Tensor<D> {
        let bias = layer.bias.as_ref().map(|b| b.val());
        Self::typed(self.0.unwrap_or(FloatDType::F32), layer, x, bias)
    }

    /// Stores `layer`'s weight in the products' type (nothing for f32), so that [`Self::linear`]
    /// and [`Self::linear_in_type`] find it there and do not cast it at each call.
    pub(crate) fn store_weight(self, layer: &mut Linear) {
        if let Some(dtype) = self.0 {
            // (A clone of the parameter shares its tensor: nothing is copied before the cast.)
            layer.weight = layer.weight.clone().map(|w| w.cast(dtype));
        }
    }

    /// [`Self::store_weight`], and the bias too, for a layer that runs through
    /// [`Self::linear_in_type`] (which adds its bias in the products' type).
    pub(crate) fn store_in_type(self, layer: &mut Linear) {
        self.store_weight(layer);
        if let (Some(dtype), Some(bias)) = (self.0, layer.bias.as_mut()) {
            *bias = bias.clone().map(|b| b.cast(dtype));
        }
    }

    /// `x·weight (+ bias)` with every operand cast to `dtype` (no cast where one already is).
    fn typed<const D: usize>(dtype: FloatDType, layer: &Linear, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
        crate::ops::linear(x.cast(dtype), layer.weight.val().cast(dtype), bias.map(|b| b.cast(dtype)))
    }
}

/// A linear layer initialised as the reference does: xavier-uniform weight (or zeros for the
/// adaLN and output layers, or N(0, std)), zero bias. burn stores the weight as `[d_in, d_out]`.
pub(crate) fn linear(d_in: usize, d_out: usize, bias: bool, init: Init, device: &Device) -> Linear {
    let weight_init = match init {
        Init::Xavier => Initializer::XavierUniform { gain: 1.0 },
        Init::Zeros => Initializer::Zeros,
        Init::Normal(std) => Initializer::Normal { mean: 0.0, std },
    };
    Linear {
        weight: weight_init.init_with([d_in, d_out], Some(d_in), Some(d_out), device),
        bias: bias.then(|| Initializer::Zeros.init([d_out], device)),
    }
}

/// Weight initialisation of a [`linear`] layer.
#[derive(Clone, Copy)]
pub(crate) enum Init {
    Xavier,
    Zeros,
    Normal(f64),
}
