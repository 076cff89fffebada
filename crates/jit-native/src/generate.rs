//! Sampling shared by `sample`, `bench` and the training grids: portable seeded noise →
//! `jit_core::sampler` → host images.

use std::path::Path;

use anyhow::Result;
use jit_core::host::{labels as labels_tensor, read_f32};
use jit_core::sampler::{Step, initial_noise};
use jit_core::{DiffusionConfig, Jit, SamplerConfig};

use crate::images::{HostImages, save_png};
use crate::lanes::CpuLanes;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Noise seed: the batch's initial noise is `PortableRng::new(seed).noise([B, C, H, W])`,
    /// the same on every backend and in the browser.
    pub seed: u64,
    /// Solver settings.
    pub sampler: SamplerConfig,
    /// One class per image (K = num_classes gives unconditional samples).
    pub labels: Vec<i64>,
    /// Index of the first of these images in the seed's batch (its noise is that part of the
    /// batch's): a process that samples part of a batch gets exactly those images.
    pub first_image: usize,
}

/// Runs the sampler; `on_step` sees every step (x̂ previews). Returns `[B, C, H, W]` on the host.
pub fn generate(
    model: &Jit,
    diffusion: &DiffusionConfig,
    opts: &GenerateOptions,
    mut on_step: impl FnMut(&Step),
) -> Result<Vec<f32>> {
    use burn::module::Module;
    let device = model.devices()[0].clone();
    SamplerConfig::check_labels(&model.config, &opts.labels)?;
    let images = opts.first_image..opts.first_image + opts.labels.len();
    let z0 = initial_noise(&model.config, diffusion, images, opts.seed, &device);
    let lanes = CpuLanes::new(&device);
    let out =
        lanes.sample(model, diffusion, &opts.sampler, z0, labels_tensor(&opts.labels, &device), None, |step| {
            on_step(step)
        })?;
    Ok(read_f32(out)?)
}

/// Generates and writes a grid PNG (one row per 8 images).
pub fn generate_grid(
    model: &Jit,
    diffusion: &DiffusionConfig,
    opts: &GenerateOptions,
    path: &Path,
    scale: u32,
) -> Result<()> {
    let data = generate(model, diffusion, opts, |_| {})?;
    let c = &model.config;
    let imgs = HostImages { data: &data, count: opts.labels.len(), channels: c.in_channels, size: c.input_size };
    save_png(path, &imgs.grid(8, scale))
}
