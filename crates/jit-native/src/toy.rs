//! `jit-native toy`: the paper's manifold experiment. A 2-D spiral is embedded in D dimensions
//! by a random column-orthonormal `D×2` matrix P; a small MLP denoiser is trained with the same
//! objective code as JiT (x-, ε- or v-prediction, v-loss) and sampled with the same Heun solver.
//! Samples are projected back with Pᵀ and compared with held-out data (sliced Wasserstein-1 in
//! 2-D); `‖(I − PPᵀ)x‖` measures how far samples stray off the data's plane.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};
use clap::Args;
use image::{Rgb, RgbImage};
use jit_core::objective::{draw_noise, loss};
use jit_core::rng::PortableRng;
use jit_core::sampler::sample;
use jit_core::{Denoiser, DiffusionConfig, JitError, Method, SamplerConfig, Target};
use serde::Serialize;

use crate::fsutil::write_atomic;
use crate::images::save_png;

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

impl Denoiser for ToyMlp {
    fn denoise(&self, z: Tensor<4>, t: Tensor<1>, _y: Tensor<1, Int>) -> Tensor<4> {
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
    fn check_inputs(&self, _z: &Tensor<4>, _t: &Tensor<1>, _y: &Tensor<1, Int>) -> Result<(), JitError> {
        Ok(())
    }
}

/// `toy` flags.
#[derive(Args, Debug)]
pub struct ToyArgs {
    /// Ambient dimensions D.
    #[arg(long, value_delimiter = ',', default_value = "2,8,16,512")]
    pub dims: Vec<usize>,
    /// Prediction targets (all trained with the v-loss).
    #[arg(long, value_delimiter = ',', default_value = "x,eps,v")]
    pub targets: Vec<String>,
    /// Training steps per model.
    #[arg(long, default_value_t = 3000)]
    pub steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// MLP width.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// MLP depth (linear layers).
    #[arg(long, default_value_t = 5)]
    pub layers: usize,
    /// Learning rate (AdamW, β 0.9/0.95).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Generated points per model (and held-out real points).
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Heun steps.
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (toy.png, toy.json, toy.md).
    #[arg(long, default_value = "toy")]
    pub out: PathBuf,
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
fn spiral(n: usize, rng: &mut PortableRng) -> Vec<[f32; 2]> {
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
pub fn run_cell(a: &ToyArgs, target: Target, dim: usize) -> Result<(ToyResult, Vec<[f32; 2]>)> {
    let t0 = std::time::Instant::now();
    let mut rng = PortableRng::new(a.seed.wrapping_mul(1_000_003).wrapping_add(dim as u64));
    let p = projection(dim, &mut rng);
    let device = Device::flex().autodiff();
    device.seed(a.seed);
    let mut model = ToyMlp::new(dim, a.hidden, a.layers, &device);
    let mut optim = AdamWConfig::new().with_beta_2(0.95).with_weight_decay(0.0).with_epsilon(1e-8).init();
    let diffusion = DiffusionConfig { label_drop_prob: 0.0, prediction: target, loss: Target::V, ..DiffusionConfig::default() };
    let labels: Tensor<1, Int> = Tensor::zeros([a.batch_size], &device);
    let mut final_loss = f32::NAN;
    for step in 0..a.steps {
        let x = embed(&spiral(a.batch_size, &mut rng), &p);
        let x = Tensor::<4>::from_data(TensorData::new(x, [a.batch_size, dim, 1, 1]), &device);
        let draw = draw_noise(&diffusion, 1, &x, labels.clone(), &device);
        let l = loss(&model, &diffusion, x, draw);
        if step + 1 == a.steps || step % 100 == 0 {
            final_loss = l.clone().into_scalar();
        }
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(a.lr, model, grads);
    }
    let model = model.valid();
    let cpu = Device::flex();
    let sampler = SamplerConfig { method: Method::Heun, steps: a.sample_steps, cfg: 1.0, interval: (0.0, 1.0) };
    let z0 = PortableRng::new(a.seed ^ 0xABCD).noise([a.samples, dim, 1, 1], 1.0, &cpu);
    let y = Tensor::<1, Int>::zeros([a.samples], &cpu);
    let out = sample(&model, &diffusion, &sampler, z0, y, |_| true)?;
    let x: Vec<f32> = out.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
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

fn draw_panel(img: &mut RgbImage, x0: u32, y0: u32, size: u32, real: &[[f32; 2]], fake: &[[f32; 2]], color: Rgb<u8>) {
    for x in x0..x0 + size {
        for y in [y0, y0 + size - 1] {
            img.put_pixel(x, y, Rgb([180, 180, 180]));
        }
    }
    for y in y0..y0 + size {
        for x in [x0, x0 + size - 1] {
            img.put_pixel(x, y, Rgb([180, 180, 180]));
        }
    }
    let span = 2.6f32;
    let mut dot = |p: &[f32; 2], c: Rgb<u8>, r: i64| {
        let px = ((p[0] / span + 1.0) * 0.5 * size as f32) as i64;
        let py = ((1.0 - (p[1] / span + 1.0) * 0.5) * size as f32) as i64;
        for dx in 0..r {
            for dy in 0..r {
                let (x, y) = (px + dx, py + dy);
                if x > 0 && y > 0 && x < size as i64 - 1 && y < size as i64 - 1 {
                    img.put_pixel(x0 + x as u32, y0 + y as u32, c);
                }
            }
        }
    };
    for p in real {
        dot(p, Rgb([200, 200, 200]), 2);
    }
    for p in fake {
        dot(p, color, 2);
    }
}

/// Runs `toy`.
pub fn run(a: ToyArgs) -> Result<()> {
    let targets: Vec<Target> = a.targets.iter().map(|t| t.parse::<Target>()).collect::<Result<_, _>>()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let size = 200u32;
    let mut img = RgbImage::from_pixel(size * a.dims.len() as u32, size * targets.len() as u32, Rgb([255, 255, 255]));
    let real = spiral(a.samples, &mut PortableRng::new(a.seed ^ 0x5151));
    let colors = [Rgb([30, 90, 220]), Rgb([220, 50, 50]), Rgb([30, 160, 60])];
    let mut results = Vec::new();
    for (row, target) in targets.iter().enumerate() {
        for (col, &dim) in a.dims.iter().enumerate() {
            let (r, pts) = run_cell(&a, *target, dim)?;
            eprintln!(
                "{:>3}-pred D={:<4} loss {:.4}  SW1 {:.3}  off-manifold {:.3}  ({:.0}s)",
                r.target, dim, r.final_loss, r.sliced_w1, r.off_manifold, r.seconds
            );
            draw_panel(&mut img, col as u32 * size, row as u32 * size, size, &real, &pts, colors[row % 3]);
            results.push(r);
        }
    }
    save_png(&a.out.join("toy.png"), &img)?;
    write_atomic(&a.out.join("toy.json"), serde_json::to_string_pretty(&results)?.as_bytes())?;
    let mut md = String::from("| prediction | D | SW1 (2-D, ↓) | ‖(I−PPᵀ)x‖ (↓) | final v-loss |\n|---|---|---|---|---|\n");
    for r in &results {
        md += &format!("| {} | {} | {:.3} | {:.3} | {:.4} |\n", r.target, r.dim, r.sliced_w1, r.off_manifold, r.final_loss);
    }
    let floor = sliced_w1(&real, &spiral(a.samples, &mut PortableRng::new(a.seed ^ 0x7777)), 64);
    md += &format!("\nReal vs. real (held-out) SW1: {floor:.3}.\n");
    write_atomic(&a.out.join("toy.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}
