//! `jit-native sample`: images from a checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use jit_core::checkpoint::WeightCopy;
use jit_core::host::read_f32;
use jit_core::{Method, SamplerConfig, SamplerOverrides};
use safetensors::tensor::{Dtype, TensorView};

use crate::backend::BackendArgs;
use crate::dist::{self, Collective};
use crate::fsutil::{check_output, write_atomic};
use crate::generate::{GenerateOptions, generate};
use crate::images::{HostImages, save_png};
use crate::model_file;
use crate::refuse;
use crate::science::npz::{self, Array, Values};

/// `sample` flags (sampler settings default to those stored in the checkpoint).
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// Checkpoint (a training `ckpt-*.safetensors` or an exported file).
    pub checkpoint: PathBuf,
    /// Class index or name; repeat for several; `all` for every class; `none` for unconditional.
    #[arg(long = "class", default_value = "all")]
    pub classes: Vec<String>,
    /// Images per class.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Noise seed (same seed → same images on every backend and in the browser).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ODE steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Solver.
    #[arg(long, value_enum)]
    pub sampler: Option<Method>,
    /// Guidance scale (1: none).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Lower end of the guidance interval (0: none).
    #[arg(long)]
    pub interval_low: Option<f64>,
    /// Upper end of the guidance interval.
    #[arg(long)]
    pub interval_high: Option<f64>,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value_t = WeightCopy::Ema1)]
    pub weights: WeightCopy,
    /// Output folder for the images and `grid.png`.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// How the images are named: `ours` (`sample-NNN-classK.png`) or `official` (`NNNNN.png`, the
    /// image's index zero-padded to five digits, as the official evaluation saves the images it
    /// scores; with `--class all --count 50` image i is of class i / 50, as there).
    #[arg(long, value_enum, default_value_t = Names::Ours)]
    pub names: Names,
    /// Grid only, no single images.
    #[arg(long)]
    pub grid_only: bool,
    /// Also write `previews.png`: the x̂ estimate of every image at every step.
    #[arg(long)]
    pub previews: bool,
    /// Also write the float images `[B, C, H, W]` in [-1, 1] as a safetensors tensor `samples`.
    #[arg(long)]
    pub save_tensor: Option<PathBuf>,
    /// Also write the images as the ADM evaluator's `.npz`: `arr_0`, uint8 `[N, H, W, 3]`.
    #[arg(long, value_name = "NPZ")]
    pub npz: Option<PathBuf>,
    /// Upscaling of the grid (nearest neighbour), 1 to 64.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub scale: u32,
    /// Replace images and files that exist (never a checkpoint or a file of a training run).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// How `sample` names the image files.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// `sample-NNN-classK.png`.
    Ours,
    /// `NNNNN.png`, as the official code's evaluation writes them.
    Official,
}

/// Whether `name` is an image file `sample` writes under either naming (`sample-NNN-classK.png`,
/// `NNNNN.png`).
fn is_sample_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some(stem) = name.strip_suffix(".png") else { return false };
    match stem.strip_prefix("sample-").and_then(|rest| rest.split_once("-class")) {
        Some((i, k)) => digits(i) && digits(k),
        None => stem.len() == 5 && digits(stem),
    }
}

/// The file of image `i` (of class `label`).
fn sample_name(names: Names, i: usize, label: i64) -> String {
    match names {
        Names::Ours => format!("sample-{i:03}-class{label}.png"),
        Names::Official => format!("{i:05}.png"),
    }
}

fn parse_classes(spec: &[String], names: &[String], k: usize) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for s in spec {
        match s.as_str() {
            "all" => out.extend(0..k as i64),
            "none" | "null" => out.push(k as i64),
            _ => {
                if let Ok(i) = s.parse::<usize>() {
                    if i >= k {
                        refuse!("class {i} does not exist: the model has classes 0..{}", k - 1);
                    }
                    out.push(i as i64);
                } else if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
                    out.push(i as i64);
                } else {
                    refuse!("unknown class '{s}' (classes: {})", names.join(", "));
                }
            }
        }
    }
    Ok(out)
}

/// Runs `sample`. Under `mpirun`/`srun` the images are shared out over the processes, each
/// drawing its images' noise from their place in the seed's batch, and rank 0 writes exactly
/// the images one process would.
pub fn run(a: SampleArgs) -> Result<()> {
    dist::run_on_every_rank(|world| sample(&a, world))
}

fn sample(a: &SampleArgs, world: &dyn Collective) -> Result<()> {
    let (rank, size) = (world.rank(), world.size());
    let who = if size > 1 { format!("rank {rank} of {size}: ") } else { String::new() };
    let (device, _) = a.backend.device_for_rank((size > 1).then(|| world.local_rank()), &who)?;
    let limit = a.backend.memory_limit();
    let (model, meta) = model_file::load(&a.checkpoint, a.weights, &device, limit)?;
    let model = model.for_sampling(a.backend.matmul_dtype(&device)?);
    let c = &meta.network;
    let sampler = meta.sampler.with(SamplerOverrides {
        method: a.sampler,
        steps: a.steps,
        cfg: a.cfg,
        interval_low: a.interval_low,
        interval_high: a.interval_high,
    })?;
    if a.count == 0 {
        refuse!("--count must be at least 1");
    }
    let per_class = parse_classes(&a.classes, &meta.class_names, c.num_classes)?;
    let n = per_class.len().checked_mul(a.count).context("--count is too large")?;
    if n > SamplerConfig::MAX_IMAGES {
        refuse!("--count × classes is {n} images, more than the {} of one request", SamplerConfig::MAX_IMAGES);
    }
    let labels: Vec<i64> = per_class.iter().flat_map(|l| std::iter::repeat_n(*l, a.count)).collect();
    SamplerConfig::check_request(c, &labels, limit)?;
    let sizes = HostImages { data: &[], count: n, channels: c.in_channels, size: c.input_size };
    limit.check_bytes(format!("a grid of {n} images at --scale {}", a.scale), sizes.grid_bytes(8, a.scale))?;
    if a.out.exists() && !a.out.is_dir() {
        refuse!("--out {} exists and is not a folder; choose a folder for the images", a.out.display());
    }
    if a.previews && size > 1 {
        refuse!("--previews runs in one process; start it without mpirun");
    }
    let mut outputs = vec![a.out.join("grid.png")];
    if !a.grid_only {
        outputs.extend(labels.iter().enumerate().map(|(i, label)| a.out.join(sample_name(a.names, i, *label))));
    }
    if a.previews {
        outputs.push(a.out.join("previews.png"));
    }
    outputs.extend(a.save_tensor.iter().cloned());
    outputs.extend(a.npz.iter().cloned());
    if rank == 0 {
        for out in &outputs {
            check_output(out, &[&a.checkpoint], a.force)?;
        }
        // Images of an earlier sample that this one would not replace would be scored with it
        // by an evaluation of the folder (`eval --images`).
        if !a.grid_only && a.out.is_dir() {
            let ours: std::collections::HashSet<&std::path::Path> = outputs.iter().map(|p| p.as_path()).collect();
            let entries = std::fs::read_dir(&a.out).with_context(|| format!("cannot read {}", a.out.display()))?;
            let stale = entries
                .filter_map(|e| e.ok())
                .filter(|e| is_sample_name(&e.file_name().to_string_lossy()) && !ours.contains(e.path().as_path()))
                .count();
            if stale > 0 {
                refuse!(
                    "--out {} holds {stale} sample images this run would not replace (an earlier, larger or differently named sample); an evaluation of the folder would mix them: choose an empty folder",
                    a.out.display()
                );
            }
        }
    }
    // This process's images: a contiguous part of the batch.
    let part = rank * n / size..(rank + 1) * n / size;
    let opts = GenerateOptions {
        seed: a.seed,
        sampler: sampler.clone(),
        labels: labels[part.clone()].to_vec(),
        first_image: part.start,
    };
    let mut previews: Vec<Vec<f32>> = Vec::new();
    let t0 = std::time::Instant::now();
    let mine = if part.is_empty() {
        Vec::new()
    } else {
        generate(&model, &meta.diffusion, &opts, |step| {
            if a.previews {
                previews.push(read_f32(step.x_hat.clone()).unwrap_or_default());
            }
        })?
    };
    let parts = world.gather(mine.iter().flat_map(|v| v.to_le_bytes()).collect())?;
    if rank != 0 {
        return Ok(());
    }
    let data: Vec<f32> =
        parts.concat().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let imgs = HostImages { data: &data, count: n, channels: c.in_channels, size: c.input_size };
    save_png(&a.out.join("grid.png"), &imgs.grid(8, a.scale))?;
    if !a.grid_only {
        for (i, label) in labels.iter().enumerate().take(n) {
            save_png(&a.out.join(sample_name(a.names, i, *label)), &imgs.rgb(i))?;
        }
    }
    if a.previews {
        // rows: images; columns: steps
        let per = c.in_channels * c.input_size * c.input_size;
        let mut strip = Vec::with_capacity(n * previews.len() * per);
        for i in 0..n {
            for p in &previews {
                strip.extend_from_slice(&p[i * per..(i + 1) * per]);
            }
        }
        let all = HostImages { data: &strip, count: n * previews.len(), channels: c.in_channels, size: c.input_size };
        save_png(&a.out.join("previews.png"), &all.grid(previews.len(), a.scale.min(2)))?;
    }
    if let Some(path) = &a.npz {
        let (s, rgb) = (c.input_size, jit_core::host::to_rgb8(&data, c.in_channels, c.input_size));
        let arr = Array { shape: vec![n, s, s, 3], values: Values::U8(rgb) };
        write_atomic(path, &npz::write(std::io::Cursor::new(Vec::new()), &[("arr_0", &arr)])?.into_inner())?;
    }
    if let Some(path) = &a.save_tensor {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![n, c.in_channels, c.input_size, c.input_size], &bytes)?;
        let info =
            HashMap::from([("labels".to_string(), format!("{labels:?}")), ("seed".to_string(), a.seed.to_string())]);
        write_atomic(path, &safetensors::serialize([("samples", view)], Some(info))?)?;
    }
    println!(
        "{n} images, {} {} steps, cfg {} in ({}, {}): {:.2}s ({:.2} images/s) → {}",
        sampler.steps,
        format!("{:?}", sampler.method).to_lowercase(),
        sampler.cfg,
        sampler.interval.0,
        sampler.interval.1,
        secs,
        n as f64 / secs,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_names_are_recognised_under_both_namings() {
        for (i, label) in [(0, 0), (7, 3), (1234, 12)] {
            assert!(is_sample_name(&sample_name(Names::Ours, i, label)));
            assert!(is_sample_name(&sample_name(Names::Official, i, label)));
        }
        for other in ["grid.png", "previews.png", "sample-1-class.png", "1234.png", "00012.jpg", "sample-a-class1.png"]
        {
            assert!(!is_sample_name(other), "{other}");
        }
    }
}
