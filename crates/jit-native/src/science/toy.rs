//! The paper's manifold experiment (its Fig. 2): a 2-D spiral embedded in D dimensions by a
//! random column-orthonormal `D×2` matrix P; a small MLP denoiser trained with the same
//! objective, training state and Heun sampler as JiT. Samples are projected back with Pᵀ and
//! compared with held-out data (sliced Wasserstein-1 in 2-D); `‖(I − PPᵀ)x‖` measures how far
//! samples stray off the data's plane.

use anyhow::Result;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};
use jit_core::host::read_f32;
use jit_core::objective::{draw_noise, loss};
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use jit_core::sampler::sample;
use jit_core::{DiffusionConfig, Method, Network, SamplerConfig, Target, TrainState};
use serde::Serialize;

/// Time features fed to the MLP: t and sin/cos(2πkt), k = 1..8.
const T_FREQS: usize = 8;

/// The toy denoiser: `layers` linear layers of width `hidden` with SiLU, on `[z, features(t)]`.
#[derive(Module, Debug)]
pub struct ToyMlp {
    pub layers: Vec<Linear>,
    pub freqs: Tensor<2>,
}

impl ToyMlp {
    pub fn new(dim: usize, hidden: usize, layers: usize, device: &Device) -> Self {
        let t_dim = 1 + 2 * T_FREQS;
        let mut widths = vec![dim + t_dim];
        widths.extend(std::iter::repeat_n(hidden, layers.max(2) - 1));
        widths.push(dim);
        let layers = widths.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        let freqs: Vec<f32> = (1..=T_FREQS).map(|k| std::f32::consts::TAU * k as f32).collect();
        Self { layers, freqs: Tensor::from_data(TensorData::new(freqs, [1, T_FREQS]), device) }
    }
}

impl Network for ToyMlp {
    fn predict(&self, z: Tensor<4>, t: Tensor<1>, _y: Tensor<1, Int>) -> Tensor<4> {
        let [b, d, ..] = z.dims();
        let t = t.unsqueeze_dim::<2>(1);
        let args = t.clone().mul(self.freqs.clone());
        let mut h = Tensor::cat(vec![z.reshape([b, d]), t, args.clone().sin(), args.cos()], 1);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(h);
            if i < last {
                h = silu(h);
            }
        }
        h.reshape([b, d, 1, 1])
    }
    fn null_class(&self) -> usize {
        1
    }
}

/// One cell's training and sampling settings.
#[derive(Debug, Clone)]
pub struct CellConfig {
    /// Training steps.
    pub steps: usize,
    /// Batch size.
    pub batch_size: usize,
    /// MLP width.
    pub hidden: usize,
    /// MLP depth (linear layers).
    pub layers: usize,
    /// Constant learning rate (AdamW, β 0.9/0.95).
    pub lr: f64,
    /// Generated points (and held-out real points).
    pub samples: usize,
    /// Heun steps.
    pub sample_steps: usize,
    /// Seed.
    pub seed: u64,
}

/// One cell of the experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ToyResult {
    pub target: String,
    pub dim: usize,
    pub final_loss: f32,
    /// Sliced Wasserstein-1 between projected samples and held-out data (2-D).
    pub sliced_w1: f64,
    /// Mean ‖(I − PPᵀ)x‖ of the samples.
    pub off_manifold: f64,
    pub seconds: f64,
}

/// Spiral points in 2-D, radius up to 2.
pub fn spiral(n: usize, rng: &mut PortableRng) -> Vec<[f32; 2]> {
    (0..n)
        .map(|_| {
            let theta = std::f64::consts::PI * (0.5 + 3.5 * rng.uniform().sqrt());
            let r = 2.0 * theta / (4.0 * std::f64::consts::PI);
            let noise = rng.normals(2);
            [(r * theta.cos()) as f32 + 0.02 * noise[0], (r * theta.sin()) as f32 + 0.02 * noise[1]]
        })
        .collect()
}

/// A random `D×2` matrix with orthonormal columns (Gram–Schmidt on Gaussian columns).
fn projection(dim: usize, rng: &mut PortableRng) -> Vec<[f64; 2]> {
    let a: Vec<f64> = rng.normals(dim).into_iter().map(f64::from).collect();
    let b: Vec<f64> = rng.normals(dim).into_iter().map(f64::from).collect();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let u: Vec<f64> = a.iter().map(|v| v / na).collect();
    let dot: f64 = u.iter().zip(&b).map(|(x, y)| x * y).sum();
    let w: Vec<f64> = b.iter().zip(&u).map(|(y, x)| y - dot * x).collect();
    let nw = w.iter().map(|v| v * v).sum::<f64>().sqrt();
    u.iter().zip(&w).map(|(x, y)| [*x, y / nw]).collect()
}

fn embed(points: &[[f32; 2]], p: &[[f64; 2]]) -> Vec<f32> {
    points.iter().flat_map(|q| p.iter().map(move |row| (row[0] * q[0] as f64 + row[1] * q[1] as f64) as f32)).collect()
}

/// Projects `[N, D]` back to 2-D and measures the off-plane norm of each point.
fn unembed(x: &[f32], p: &[[f64; 2]]) -> (Vec<[f32; 2]>, f64) {
    let d = p.len();
    let mut pts = Vec::with_capacity(x.len() / d);
    let mut off = 0.0;
    for v in x.chunks_exact(d) {
        let (mut a, mut b) = (0.0, 0.0);
        for (xi, row) in v.iter().zip(p) {
            a += *xi as f64 * row[0];
            b += *xi as f64 * row[1];
        }
        let resid: f64 = v.iter().zip(p).map(|(xi, row)| (*xi as f64 - (a * row[0] + b * row[1])).powi(2)).sum();
        off += resid.sqrt();
        pts.push([a as f32, b as f32]);
    }
    let n = pts.len().max(1) as f64;
    (pts, off / n)
}

/// Sliced Wasserstein-1 distance between two 2-D point sets of equal size.
pub fn sliced_w1(a: &[[f32; 2]], b: &[[f32; 2]], directions: usize) -> f64 {
    let mut total = 0.0;
    for k in 0..directions {
        let angle = std::f64::consts::PI * k as f64 / directions as f64;
        let (c, s) = (angle.cos(), angle.sin());
        let proj = |pts: &[[f32; 2]]| {
            let mut v: Vec<f64> = pts.iter().map(|p| p[0] as f64 * c + p[1] as f64 * s).collect();
            v.sort_by(|x, y| x.total_cmp(y));
            v
        };
        let (pa, pb) = (proj(a), proj(b));
        let n = pa.len().min(pb.len()).max(1);
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).abs()).sum::<f64>() / n as f64;
    }
    total / directions as f64
}

/// Trains and samples one (target, D) cell.
pub fn run_cell(a: &CellConfig, target: Target, dim: usize) -> Result<(ToyResult, Vec<[f32; 2]>)> {
    let t0 = std::time::Instant::now();
    let mut rng = PortableRng::new(a.seed.wrapping_mul(1_000_003).wrapping_add(dim as u64));
    let p = projection(dim, &mut rng);
    let device = Device::flex().autodiff();
    device.seed(a.seed);
    let model = ToyMlp::new(dim, a.hidden, a.layers, &device);
    let optim = OptimConfig { lr: Some(a.lr), ..OptimConfig::default() };
    let mut state = TrainState::new(model, optim, a.seed);
    let diffusion =
        DiffusionConfig { label_drop_prob: 0.0, prediction: target, loss: Target::V, ..DiffusionConfig::default() };
    let labels: Tensor<1, Int> = Tensor::zeros([a.batch_size], &device);
    let mut final_loss = f32::NAN;
    for step in 0..a.steps {
        let x = embed(&spiral(a.batch_size, &mut rng), &p);
        let x = Tensor::<4>::from_data(TensorData::new(x, [a.batch_size, dim, 1, 1]), &device);
        let draw = draw_noise(&diffusion, 1, &x, labels.clone(), &device);
        let l = loss(&state.model, &diffusion, x, draw);
        if step + 1 == a.steps || step % 100 == 0 {
            final_loss = l.clone().into_scalar();
        }
        state.apply(l, a.batch_size);
    }
    let model = state.model.valid();
    let cpu = Device::flex();
    let sampler = SamplerConfig { method: Method::Heun, steps: a.sample_steps, cfg: 1.0, interval: (0.0, 1.0) };
    let z0 = PortableRng::new(a.seed ^ 0xABCD).noise([a.samples, dim, 1, 1], 1.0, &cpu);
    let y = Tensor::<1, Int>::zeros([a.samples], &cpu);
    let out = sample(&model, &diffusion, &sampler, z0, y, |_| true)?;
    let x = read_f32(out)?;
    let (pts, off) = unembed(&x, &p);
    let held_out = spiral(a.samples, &mut PortableRng::new(a.seed ^ 0x5151));
    let result = ToyResult {
        target: format!("{target:?}").to_lowercase(),
        dim,
        final_loss,
        sliced_w1: sliced_w1(&pts, &held_out, 64),
        off_manifold: off,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((result, pts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliced_w1_is_zero_for_equal_sets_and_measures_a_shift() {
        let a = spiral(500, &mut PortableRng::new(1));
        assert!(sliced_w1(&a, &a, 16) < 1e-12);
        let shifted: Vec<[f32; 2]> = a.iter().map(|p| [p[0] + 1.0, p[1]]).collect();
        // a shift by (1, 0) projects to |cos θ| on direction θ: mean over θ ∈ [0, π) is 2/π
        let w = sliced_w1(&a, &shifted, 256);
        assert!((w - 2.0 / std::f64::consts::PI).abs() < 0.01, "{w}");
    }

    #[test]
    fn embedding_is_orthonormal_and_unembed_inverts_it() {
        let p = projection(16, &mut PortableRng::new(2));
        let pts = spiral(50, &mut PortableRng::new(3));
        let (back, off) = unembed(&embed(&pts, &p), &p);
        assert!(off < 1e-5, "{off}");
        for (a, b) in pts.iter().zip(&back) {
            assert!((a[0] - b[0]).abs() < 1e-4 && (a[1] - b[1]).abs() < 1e-4);
        }
    }
}
