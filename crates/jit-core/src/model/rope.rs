//! 2-D rotary position embedding (the reference's `VisionRotaryEmbeddingFast`, "lang"
//! frequencies, theta 10000).
//!
//! For head width `hd`, each image axis gets `hd/2` channels: frequencies
//! `f_j = 1/theta^(2j/(hd/2))`, `j < hd/4`, repeated pairwise `(f0, f0, f1, f1, …)`; the row-axis
//! half comes first, then the column-axis half. Tokens are in row-major order. With `L`
//! in-context tokens in front, their rows are the identity (cos 1, sin 0).
//! `rope(x) = x·cos + rotate_half(x)·sin`, where `rotate_half` maps interleaved pairs
//! `(x0, x1) → (−x1, x0)`: [`crate::ops::reference::rope`], fused with qk-norm in
//! [`crate::ops::qkv_heads`].

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

/// The cos/sin tables of one token layout, `[tokens, head_dim]`, as constant tensors.
#[derive(Module, Debug)]
pub struct Rope {
    /// cos table `[T, hd]`.
    pub cos: Tensor<2>,
    /// sin table with the rotate-half sign folded in: `−sin` at even channels, `+sin` at odd,
    /// so that `rope(x) = x·cos + swap_pairs(x)·sin_signed`.
    pub sin_signed: Tensor<2>,
}

/// The reference tables (`freqs_cos`, `freqs_sin`), each `[prefix + grid², head_dim]` row-major.
pub fn rope_tables(head_dim: usize, grid: usize, prefix: usize) -> (Vec<f32>, Vec<f32>) {
    let dim = head_dim / 2; // per axis
    let theta = 10000f32;
    let freqs: Vec<f32> = (0..dim / 2).map(|j| 1.0 / theta.powf((2 * j) as f32 / dim as f32)).collect();
    // positions t = arange(g) / g * g, computed in f32 as the reference does
    let axis = |pos: usize| -> Vec<f32> {
        let t = pos as f32 / grid as f32 * grid as f32;
        freqs.iter().flat_map(|f| [t * f, t * f]).collect()
    };
    let rows = prefix + grid * grid;
    let mut cos = Vec::with_capacity(rows * head_dim);
    let mut sin = Vec::with_capacity(rows * head_dim);
    for _ in 0..prefix {
        cos.extend(std::iter::repeat_n(1.0f32, head_dim));
        sin.extend(std::iter::repeat_n(0.0f32, head_dim));
    }
    for r in 0..grid {
        for c in 0..grid {
            for a in axis(r).into_iter().chain(axis(c)) {
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    (cos, sin)
}

impl Rope {
    /// The tables `(cos, sin_signed)`, as [`crate::ops`] takes them.
    pub fn tables(&self) -> (Tensor<2>, Tensor<2>) {
        (self.cos.clone(), self.sin_signed.clone())
    }

    /// Tables for `prefix` identity tokens followed by a `grid × grid` image.
    pub fn new(head_dim: usize, grid: usize, prefix: usize, device: &Device) -> Self {
        let (cos, mut sin) = rope_tables(head_dim, grid, prefix);
        for (i, s) in sin.iter_mut().enumerate() {
            if i % 2 == 0 {
                *s = -*s;
            }
        }
        let rows = prefix + grid * grid;
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [rows, head_dim]), device);
        Self { cos: table(cos), sin_signed: table(sin) }
    }
}
