//! `jit-native bench`: training and sampling throughput of a configuration on a backend.

use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Int, Tensor};
use clap::Args;
use jit_core::rng::PortableRng;
use jit_core::train::{OptimConfig, Trainer};
use jit_core::{DiffusionConfig, Jit, JitConfig, Method, SamplerConfig};

use crate::backend::BackendArgs;
use crate::generate::{GenerateOptions, generate};

/// `bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model presets to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "JiT-T/4,JiT-S/4")]
    pub model: Vec<String>,
    /// Image size.
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    /// Channels.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    pub num_classes: usize,
    /// Training batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed training steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub train_steps: usize,
    /// Images sampled at once.
    #[arg(long, default_value_t = 16)]
    pub sample_count: usize,
    /// Sampler steps (Heun, CFG 2.9 on (0.1, 1)).
    #[arg(long, default_value_t = 50)]
    pub sample_steps: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Runs `bench` and prints a Markdown table.
pub fn run(a: BenchArgs) -> Result<()> {
    let device = a.backend.device()?;
    println!("| model | params | image | batch | train step (s) | train img/s | sample img/s ({} Heun steps, CFG) |", a.sample_steps);
    println!("|---|---|---|---|---|---|---|");
    for name in &a.model {
        let config = JitConfig::preset(name, a.image_size, a.channels, a.num_classes)?;
        let model = Jit::new(&config, &device)?;
        let params = model.num_params();
        let mut trainer = Trainer::new(model, DiffusionConfig::default(), OptimConfig::default(), 0);
        let mut rng = PortableRng::new(1);
        let shape = [a.batch_size, a.channels, a.image_size, a.image_size];
        let labels: Vec<i64> = (0..a.batch_size).map(|i| (i % a.num_classes) as i64).collect();
        let mut step = || -> f32 {
            let x = rng.noise(shape, 0.5, &trainer.device()).clamp(-1.0, 1.0);
            let y = Tensor::<1, Int>::from_data(burn::tensor::TensorData::new(labels.clone(), [a.batch_size]), &trainer.device());
            trainer.step(x, y).into_scalar()
        };
        for _ in 0..2 {
            step();
        }
        let t0 = Instant::now();
        for _ in 0..a.train_steps {
            step();
        }
        let per_step = t0.elapsed().as_secs_f64() / a.train_steps.max(1) as f64;
        let ema = trainer.ema1.model.clone();
        let opts = GenerateOptions {
            seed: 0,
            sampler: SamplerConfig { method: Method::Heun, steps: a.sample_steps, cfg: 2.9, interval: (0.1, 1.0) },
            labels: (0..a.sample_count).map(|i| (i % a.num_classes) as i64).collect(),
        };
        generate(&ema, &DiffusionConfig::default(), &GenerateOptions { sampler: SamplerConfig { steps: 2, ..opts.sampler.clone() }, ..opts.clone() }, |_| {})?;
        let t0 = Instant::now();
        generate(&ema, &DiffusionConfig::default(), &opts, |_| {})?;
        let sample_secs = t0.elapsed().as_secs_f64();
        println!(
            "| {name} | {:.2}M | {}×{}×{} | {} | {per_step:.3} | {:.1} | {:.2} |",
            params as f64 / 1e6,
            a.channels,
            a.image_size,
            a.image_size,
            a.batch_size,
            a.batch_size as f64 / per_step,
            a.sample_count as f64 / sample_secs
        );
    }
    Ok(())
}
