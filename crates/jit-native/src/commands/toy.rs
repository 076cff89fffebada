//! `jit-native toy`: runs the manifold experiment of [`crate::science::toy`] for every
//! (prediction target, dimension) cell and writes `toy.png`, `toy.json` and `toy.md`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use image::{Rgb, RgbImage};
use jit_core::Target;
use jit_core::rng::PortableRng;

use crate::fsutil::write_atomic;
use crate::images::save_png;
use crate::science::toy::{CellConfig, run_cell, sliced_w1, spiral};

/// `toy` flags.
#[derive(Args, Debug)]
pub struct ToyArgs {
    /// Ambient dimensions D (2 to 4096: the 2-D spiral embedded in D dimensions).
    #[arg(long, value_delimiter = ',', default_value = "2,8,16,512", value_parser = RangedU64ValueParser::<usize>::new().range(2..=4096))]
    pub dims: Vec<usize>,
    /// Prediction targets (all trained with the v-loss).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "x,eps,v")]
    pub targets: Vec<Target>,
    /// Training steps per model.
    #[arg(long, default_value_t = 3000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub batch_size: usize,
    /// MLP width.
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub hidden: usize,
    /// MLP depth (linear layers).
    #[arg(long, default_value_t = 5, value_parser = RangedU64ValueParser::<usize>::new().range(1..=32))]
    pub layers: usize,
    /// Learning rate (AdamW, β 0.9/0.95).
    #[arg(long, default_value_t = 1e-3, value_parser = positive_rate)]
    pub lr: f64,
    /// Generated points per model (and held-out real points).
    #[arg(long, default_value_t = 1000, value_parser = RangedU64ValueParser::<usize>::new().range(2..=1_000_000))]
    pub samples: usize,
    /// Heun steps.
    #[arg(long, default_value_t = 50, value_parser = RangedU64ValueParser::<usize>::new().range(1..=10_000))]
    pub sample_steps: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (toy.png, toy.json, toy.md).
    #[arg(long, default_value = "toy")]
    pub out: PathBuf,
    /// Replace toy.png, toy.json and toy.md where they exist.
    #[arg(long)]
    pub force: bool,
}

/// A learning rate: positive and finite.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s}: a positive learning rate, such as 1e-3")),
    }
}

/// The files `toy` writes in its output folder.
const OUTPUTS: [&str; 3] = ["toy.png", "toy.json", "toy.md"];

impl ToyArgs {
    fn cell(&self) -> CellConfig {
        CellConfig {
            steps: self.steps,
            batch_size: self.batch_size,
            hidden: self.hidden,
            layers: self.layers,
            lr: self.lr,
            samples: self.samples,
            sample_steps: self.sample_steps,
            seed: self.seed,
        }
    }
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
    let targets = a.targets.clone();
    for name in OUTPUTS {
        crate::fsutil::check_output(&a.out.join(name), &[], a.force)?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let size = 200u32;
    let mut img = RgbImage::from_pixel(size * a.dims.len() as u32, size * targets.len() as u32, Rgb([255, 255, 255]));
    let real = spiral(a.samples, &mut PortableRng::new(a.seed ^ 0x5151));
    let colors = [Rgb([30, 90, 220]), Rgb([220, 50, 50]), Rgb([30, 160, 60])];
    let mut results = Vec::new();
    for (row, target) in targets.iter().enumerate() {
        for (col, &dim) in a.dims.iter().enumerate() {
            let (r, pts) = run_cell(&a.cell(), *target, dim)?;
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
    let mut md =
        String::from("| prediction | D | SW1 (2-D, ↓) | ‖(I−PPᵀ)x‖ (↓) | final v-loss |\n|---|---|---|---|---|\n");
    for r in &results {
        md += &format!(
            "| {} | {} | {:.3} | {:.3} | {:.4} |\n",
            r.target, r.dim, r.sliced_w1, r.off_manifold, r.final_loss
        );
    }
    let floor = sliced_w1(&real, &spiral(a.samples, &mut PortableRng::new(a.seed ^ 0x7777)), 64);
    md += &format!("\nReal vs. real (held-out) SW1: {floor:.3}.\n");
    write_atomic(&a.out.join("toy.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}
