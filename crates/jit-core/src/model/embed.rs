//! Input embeddings: timestep (`t_embedder`), class label (`y_embedder`), bottleneck patch
//! embedding (`x_embedder`) and the fixed 2-D sin-cos position table (`pos_embed`).

use burn::module::{Initializer, Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};

use super::{Init, MatmulDtype, linear};

/// Width of the sinusoidal timestep features.
pub const FREQ_EMBED_SIZE: usize = 256;

/// `t` `[B]` → sinusoidal features (first half cos, second half sin, frequencies
/// `exp(−ln(10000)·i/128)` times t) → `mlp.0` → SiLU → `mlp.2` → `[B, D]`.
#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    /// `Linear(256, D)` (`mlp.0` in the reference).
    pub mlp0: Linear,
    /// `Linear(D, D)` (`mlp.2` in the reference).
    pub mlp2: Linear,
    /// Constant frequencies `[1, 128]`.
    pub freqs: Tensor<2>,
}

impl TimestepEmbedder {
    /// Weights N(0, 0.02), zero biases.
    pub fn new(hidden: usize, device: &Device) -> Self {
        let half = FREQ_EMBED_SIZE / 2;
        let freqs: Vec<f32> = (0..half).map(|i| (-(10000f32).ln() * i as f32 / half as f32).exp()).collect();
        Self {
            mlp0: linear(FREQ_EMBED_SIZE, hidden, true, Init::Normal(0.02), device),
            mlp2: linear(hidden, hidden, true, Init::Normal(0.02), device),
            freqs: Tensor::from_data(TensorData::new(freqs, [1, half]), device),
        }
    }

    /// `t` `[B]` in [0, 1] → `[B, D]`.
    pub fn forward(&self, t: Tensor<1>, mm: MatmulDtype) -> Tensor<2> {
        let args = t.unsqueeze_dim::<2>(1).mul(self.freqs.clone());
        let features = Tensor::cat(vec![args.clone().cos(), args.sin()], 1);
        mm.linear(&self.mlp2, silu(mm.linear(&self.mlp0, features)))
    }
}

/// Class embedding table with `K + 1` rows; row K is the null class used for guidance.
#[derive(Module, Debug)]
pub struct LabelEmbedder {
    /// `[K + 1, D]`, N(0, 0.02).
    pub embedding_table: Param<Tensor<2>>,
}

impl LabelEmbedder {
    /// Table for `num_classes` classes plus the null class.
    pub fn new(num_classes: usize, hidden: usize, device: &Device) -> Self {
        let init = Initializer::Normal { mean: 0.0, std: 0.02 };
        Self { embedding_table: init.init([num_classes + 1, hidden], device) }
    }

    /// `y` `[B]` (values 0..=K) → `[B, D]`.
    pub fn forward(&self, y: Tensor<1, Int>) -> Tensor<2> {
        self.embedding_table.val().select(0, y)
    }
}

/// Bottleneck patch embedding: `proj1` Conv(C→B, kernel = stride = p, no bias) then `proj2`
/// Conv(B→D, 1×1), written as two linears on flattened `(C, p, p)` patches.
#[derive(Module, Debug)]
pub struct BottleneckPatchEmbed {
    /// `[C·p·p, B]`, no bias.
    pub proj1: Linear,
    /// `[B, D]` with bias.
    pub proj2: Linear,
    /// Patch side p.
    pub patch_size: usize,
}

impl BottleneckPatchEmbed {
    /// Xavier init with the conv fan-in/fan-out, zero bias.
    pub fn new(in_channels: usize, patch: usize, bottleneck: usize, hidden: usize, device: &Device) -> Self {
        Self {
            proj1: linear(in_channels * patch * patch, bottleneck, false, Init::Xavier, device),
            proj2: linear(bottleneck, hidden, true, Init::Xavier, device),
            patch_size: patch,
        }
    }

    /// `x` `[B, C, H, W]` → tokens `[B, (H/p)·(W/p), D]` in row-major order.
    pub fn forward(&self, x: Tensor<4>, mm: MatmulDtype) -> Tensor<3> {
        let tokens = patchify(x, self.patch_size);
        mm.linear(&self.proj2, mm.linear_in_type(&self.proj1, tokens))
    }
}

/// `[B, C, H, W]` → `[B, (H/p)(W/p), C·p·p]`, each patch flattened in `(C, p, p)` order.
pub fn patchify(x: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p])
}

/// `[B, N, p·p·C]` (channel last within a patch) → `[B, C, H, W]` — the reference's unpatchify.
pub fn unpatchify(x: Tensor<3>, p: usize, channels: usize) -> Tensor<4> {
    let [b, n, _] = x.dims();
    let g = (n as f64).sqrt().round() as usize;
    x.reshape([b, g, g, p, p, channels]).permute([0, 5, 1, 3, 2, 4]).reshape([b, channels, g * p, g * p])
}

/// Fixed 2-D sin-cos table `[grid², D]` (MAE's `get_2d_sincos_pos_embed`): for token (r, c),
/// `[sin(c·ω), cos(c·ω), sin(r·ω), cos(r·ω)]`, each `D/4` wide, `ω_i = 10000^(−i/(D/4))`.
pub fn sincos_pos_embed(hidden: usize, grid: usize) -> Vec<f32> {
    let quarter = hidden / 4;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity(grid * grid * hidden);
    for r in 0..grid {
        for c in 0..grid {
            for pos in [c as f64, r as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}
