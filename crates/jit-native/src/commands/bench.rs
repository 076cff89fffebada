//! `jit-native bench`: training and sampling throughput of model presets on a backend, with
//! the first step timed apart (kernel compilation and autotuning), achieved TFLOP/s and, for
//! GPUs whose peak is known, the fraction of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use jit_core::host::{labels as labels_tensor, read_f32};
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use jit_core::sampler::initial_noise;
use jit_core::{DiffusionConfig, Jit, JitConfig, JitError, Network, SamplerConfig, TrainState};

use crate::backend::{BackendArgs, Precision};
use crate::data::DataSource;
use crate::data::loader::Loader;
use crate::dist::{self, Collective};
use crate::lanes::CpuLanes;
use crate::science::inception::batch_bytes;

/// `bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model presets to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "JiT-T/4,JiT-S/4")]
    pub model: Vec<String>,
    /// Image size.
    #[arg(long, default_value_t = 32, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub image_size: usize,
    /// Channels.
    #[arg(long, default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4))]
    pub channels: usize,
    /// Classes.
    #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub num_classes: usize,
    /// Training batch.
    #[arg(long, default_value_t = 32, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub batch_size: usize,
    /// Timed training steps (after 2 warm-up steps); the table shows the median one.
    #[arg(long, default_value_t = 10, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub train_steps: usize,
    /// Images sampled at once.
    #[arg(long, default_value_t = 16, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub sample_count: usize,
    /// Sampler steps (Heun, CFG 2.9 on (0.1, 1)).
    #[arg(long, default_value_t = 50, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub sample_steps: usize,
    /// Skip sampling (training only).
    #[arg(long)]
    pub no_sample: bool,
    /// Blocks per model (default: the preset's): a shallower model of the same width, for
    /// counting launches per block on a slow adapter. The in-context tokens then join at block
    /// `min(preset's, depth − 1)`.
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub depth: Option<usize>,
    /// Run the model's plain tensor ops instead of the fused kernels (CPU kernels, and the GPU
    /// kernels of shaders/), to measure what the kernels gain.
    #[arg(long)]
    pub no_fused: bool,
    /// Also print, to stderr, each kernel's launches in one training step and one sampler step
    /// (on a GPU adapter), most launched first.
    #[arg(long)]
    pub launches_by_kernel: bool,
    /// Under mpirun/srun: time the all-reduce of each model's gradients (its parameter count in
    /// f32, summed over the processes) instead of training and sampling.
    #[arg(long)]
    pub all_reduce: bool,
    /// Times the training data loader instead of the models: decoded, augmented images per
    /// second from DATA (`folder:DIR`, …) at --image-size, in batches of --batch-size, for
    /// --train-steps batches after one warm-up batch.
    #[arg(long, value_name = "DATA")]
    pub loader: Option<DataSource>,
    /// Times the evaluator's Inception (torch-fidelity's `inception-v3-compat`, weights from
    /// FILE) instead of the models: images/s of features and logits for uint8 images of
    /// --image-size (resized to 299² inside, as for FID), in batches of --batch-size, for
    /// --train-steps batches after one warm-up batch.
    #[arg(long, value_name = "FILE")]
    pub inception: Option<std::path::PathBuf>,
    /// The loader's decoding threads (default: the machine's cores).
    #[arg(long, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub loader_threads: Option<usize>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// A network that counts the images it evaluates (for the FLOP count of sampling), on every lane.
struct Counting<'a, N> {
    net: &'a N,
    images: AtomicUsize,
}

impl<N: Network> Network for Counting<'_, N> {
    fn predict(&self, z: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>) -> Tensor<4> {
        self.images.fetch_add(z.dims()[0], Ordering::Relaxed);
        self.net.predict(z, t, y)
    }
    fn null_class(&self) -> usize {
        self.net.null_class()
    }
    fn check_inputs(&self, z: &Tensor<4>, t: &Tensor<1>, y: &Tensor<1, Int>) -> Result<(), JitError> {
        self.net.check_inputs(z, t, y)
    }
}

/// Dense peak TFLOP/s (f32 without tensor cores, f16/bf16 with) of GPUs we know, by a
/// substring of the adapter name.
const PEAKS: &[(&str, f64, f64)] = &[
    ("H200", 67.0, 989.0),
    ("H100", 67.0, 989.0),
    ("A100", 19.5, 312.0),
    ("L40S", 91.6, 362.0),
    ("RTX 4090", 82.6, 165.0),
    ("RTX 3090", 35.6, 71.0),
];

fn peak(adapter: &str, precision: Precision) -> Option<f64> {
    let (_, f32_peak, half_peak) = PEAKS.iter().find(|(name, ..)| adapter.contains(name))?;
    Some(if precision == Precision::F32 { *f32_peak } else { *half_peak })
}

fn rate(flops: f64, secs: f64, peak: Option<f64>) -> String {
    let tflops = flops / secs.max(1e-12) / 1e12;
    match peak {
        Some(p) => format!("{tflops:.2} ({:.1}%)", 100.0 * tflops / p),
        None => format!("{tflops:.3}"),
    }
}

/// The measured network: preset `name` at the bench's image size, channels and classes, at
/// `--depth` where given.
fn model_config(a: &BenchArgs, name: &str) -> Result<JitConfig> {
    let mut config = JitConfig::preset_unchecked(name, a.image_size, a.channels, a.num_classes)?;
    if let Some(depth) = a.depth {
        config.depth = depth;
        config.in_context_start = config.in_context_start.min(depth - 1);
    }
    config.validate()?;
    Ok(config)
}

/// Runs `bench` and prints a Markdown table.
pub fn run(a: BenchArgs) -> Result<()> {
    if a.loader_threads.is_some() && a.loader.is_none() {
        eprintln!("note: --loader-threads is for --loader DATA; without it it does nothing");
    }
    if a.all_reduce {
        return dist::run_on_every_rank(|world| all_reduce(&a, world));
    }
    if let Some(data) = &a.loader {
        return loader(&a, data);
    }
    jit_core::ops::set_enabled(!a.no_fused);
    if let Some(weights) = &a.inception {
        return inception(&a, weights);
    }
    let (device, adapter) = a.backend.device_named()?;
    if a.launches_by_kernel && device == burn::tensor::Device::flex() {
        eprintln!("note: --launches-by-kernel counts GPU kernels; the CPU launches none");
    }
    let mm = a.backend.matmul_dtype(&device)?;
    let peak = peak(&adapter, a.backend.precision);
    println!(
        "device: {adapter} | precision {:?} | peak {} | fused kernels {} | attention {:?}",
        a.backend.precision,
        peak.map_or("unknown".into(), |p| format!("{p} TFLOP/s")),
        if a.no_fused { "off" } else { "on" },
        a.backend.attention
    );
    println!(
        "| model | params | image | batch | first step (s) | train step (s, median) | train img/s | train TFLOP/s (% peak) | first sample step (s) | sample img/s ({} Heun steps, CFG) | sample TFLOP/s | train img/s (mean step) | launches / train step | launches / sample step | host part of a step (s, median) | train img/s (one read-back per {} steps) |",
        a.sample_steps,
        a.train_steps.max(1)
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // Every name before the first is measured.
    for name in &a.model {
        JitConfig::preset_unchecked(name, a.image_size, a.channels, a.num_classes)?;
    }
    let lanes = CpuLanes::new(&device);
    for name in &a.model {
        let config = model_config(&a, name)?;
        a.backend.memory_limit().check_training(&config, a.batch_size)?;
        a.backend.memory_limit().check(&config, 2 * a.sample_count)?;
        let model = Jit::new(&config, &device)?;
        let params = model.num_params();
        let diffusion = DiffusionConfig::default();
        let mut state = TrainState::new(model, OptimConfig::default(), 0);
        // As `train` runs: f16 products with loss scaling.
        state.set_matmul_dtype(mm);
        let mut rng = PortableRng::new(1);
        let shape = [a.batch_size, a.channels, a.image_size, a.image_size];
        let labels: Vec<i64> = (0..a.batch_size).map(|i| (i % a.num_classes) as i64).collect();
        // One fixed batch on the device, as the official benchmark's: a run's loader decodes and
        // uploads its batches on other threads, so drawing images here would time the host's
        // random numbers (12.6M normals a B/16 step) instead of the training step.
        let x = rng.noise(shape, 0.5, &state.device()).clamp(-1.0, 1.0);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [a.batch_size]), &state.device());
        // One training step, its loss not yet read back (no wait for the device).
        let mut issue = || -> Tensor<1> {
            lanes.train_step(&mut state, &diffusion, x.clone(), y.clone(), a.backend.memory_limit())
        };
        let t0 = Instant::now();
        let _: f32 = issue().into_scalar();
        let first = t0.elapsed().as_secs_f64();
        let _: f32 = issue().into_scalar();
        // The median step: on a shared machine a few steps slowed by other work would move a mean.
        // Each step's host part (building and issuing its work) is timed apart.
        let (mut times, mut host): (Vec<f64>, Vec<f64>) = (0..a.train_steps.max(1))
            .map(|_| {
                let t0 = Instant::now();
                let loss = issue();
                let issued = t0.elapsed().as_secs_f64();
                let _: f32 = loss.into_scalar();
                (t0.elapsed().as_secs_f64(), issued)
            })
            .unzip();
        let mean_step = times.iter().sum::<f64>() / times.len() as f64;
        // The same steps with one read-back at the end: the host's work overlaps the device's.
        let t0 = Instant::now();
        let losses: Vec<Tensor<1>> = (0..a.train_steps.max(1)).map(|_| issue()).collect();
        let _: Vec<f32> = losses.into_iter().map(|l| l.into_scalar()).collect();
        let unsynced_step = t0.elapsed().as_secs_f64() / a.train_steps.max(1) as f64;
        // Kernel launches of one more step (issued ones: the loss is read back).
        let train_launches = launches(
            || {
                let _: f32 = issue().into_scalar();
            },
            "training step",
            a.launches_by_kernel,
        );
        host.sort_by(f64::total_cmp);
        let host_step = host[host.len() / 2];
        times.sort_by(f64::total_cmp);
        let per_step = times[times.len() / 2];
        let train_flops = 3.0 * config.forward_flops(a.batch_size);
        let (first_sample, sample_ips, sample_rate, sample_launches) = if a.no_sample {
            ("—".into(), "—".into(), "—".into(), "—".into())
        } else {
            let ema = state.ema1.model.clone().for_sampling(mm);
            let (first, secs, images, launches) = time_sampling(&lanes, &ema, &diffusion, &a, &device)?;
            let flops = config.forward_flops(images);
            (format!("{first:.3}"), format!("{:.2}", a.sample_count as f64 / secs), rate(flops, secs, peak), launches)
        };
        println!(
            "| {name} | {:.2}M | {}×{}×{} | {} | {first:.2} | {per_step:.4} | {:.1} | {} | {first_sample} | {sample_ips} | {sample_rate} | {:.1} | {train_launches} | {sample_launches} | {host_step:.4} | {:.1} |",
            params as f64 / 1e6,
            a.channels,
            a.image_size,
            a.image_size,
            a.batch_size,
            a.batch_size as f64 / per_step,
            rate(train_flops, per_step, peak),
            a.batch_size as f64 / mean_step,
            a.batch_size as f64 / unsynced_step,
        );
    }
    Ok(())
}

/// The GPU kernels `work` launches (cubecl's launch observer), as a table cell: "—" where it
/// launches none (the CPU backend).
fn launches(work: impl FnOnce(), what: &str, by_kernel: bool) -> String {
    let ((), counted) = jit_core::launches::count(work);
    if by_kernel && counted.total() > 0 {
        eprintln!("launches per {what}, by kernel:");
        // `path::to::Kernel<generics>` → `Kernel`, summed over its instances.
        let mut short: Vec<(String, usize)> = Vec::new();
        for (name, n) in &counted.by_kernel {
            let base = name.split('<').next().unwrap_or(name);
            let base = base.rsplit("::").next().unwrap_or(base).to_string();
            match short.iter_mut().find(|(s, _)| *s == base) {
                Some((_, total)) => *total += n,
                None => short.push((base, *n)),
            }
        }
        short.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        short.iter().for_each(|(name, n)| eprintln!("{n:6} {name}"));
    }
    match counted.total() {
        0 => "—".into(),
        n => n.to_string(),
    }
}

/// Times the first sampler step apart, then a whole run; returns (first step s, whole run s,
/// images the network evaluated in the whole run, kernel launches of one more sampler step).
fn time_sampling(
    lanes: &CpuLanes,
    ema: &Jit,
    diffusion: &DiffusionConfig,
    a: &BenchArgs,
    device: &Device,
) -> Result<(f64, f64, usize, String)> {
    let sampler = SamplerConfig { steps: a.sample_steps, ..SamplerConfig::default() };
    let labels: Vec<i64> = (0..a.sample_count).map(|i| (i % a.num_classes) as i64).collect();
    let net = Counting { net: ema, images: AtomicUsize::new(0) };
    let run = |steps: Option<usize>| -> Result<f64> {
        let z0 = initial_noise(&ema.config, diffusion, 0..labels.len(), 0, device);
        let t0 = Instant::now();
        read_f32(lanes.sample(&net, diffusion, &sampler, z0, labels_tensor(&labels, device), steps, |_| {})?)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let first = run(Some(1))?;
    net.images.store(0, Ordering::Relaxed);
    let whole = run(None)?;
    let images = net.images.load(Ordering::Relaxed);
    let mut step = Ok(0.0);
    let counted = launches(|| step = run(Some(1)), "sampler step", a.launches_by_kernel);
    step?;
    Ok((first, whole, images, counted))
}

/// `bench --loader DATA`: the training loader's decoded images/s (what `train` gets), as a
/// Markdown row.
fn loader(a: &BenchArgs, data: &DataSource) -> Result<()> {
    let threads = a.loader_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The batch being filled and the two waiting, f32.
    let batch = image_bytes(a.batch_size, a.channels, a.image_size).saturating_mul(4 * 3);
    a.backend.memory_limit().check_bytes("the loader's batches (--batch-size, --image-size)", batch)?;
    let dataset: std::sync::Arc<dyn crate::data::Dataset> = data.open(a.image_size, a.channels, true)?.into();
    let loader = Loader::spawn(dataset.clone(), a.batch_size, 0..a.batch_size, 0, 0, 2, threads)?;
    loader.next()?;
    let t0 = Instant::now();
    for _ in 0..a.train_steps {
        loader.next()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("| loader | images | image | batch | threads | batches | images/s |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| jit-native ({data}) | {} | {}×{}×{} | {} | {threads} | {} | {:.1} |",
        dataset.len(),
        a.channels,
        a.image_size,
        a.image_size,
        a.batch_size,
        a.train_steps,
        (a.train_steps * a.batch_size) as f64 / secs
    );
    Ok(())
}

/// Values in `n` images of `channels`×`side`×`side` (saturating: a bound to check, not an index).
fn image_bytes(n: usize, channels: usize, side: usize) -> u64 {
    [n, channels, side, side].iter().fold(1u64, |a, &b| a.saturating_mul(b as u64))
}

/// `bench --inception FILE`: the FID extractor's images/s on random images.
fn inception(a: &BenchArgs, weights: &std::path::Path) -> Result<()> {
    let (device, adapter) = a.backend.device_named()?;
    let net = crate::commands::fid::load_inception(weights, &device)?;
    let (n, side) = (a.batch_size, a.image_size);
    let limit = a.backend.memory_limit();
    limit.check_bytes("the Inception's activations (--batch-size)", batch_bytes(n))?;
    limit.check_bytes("the batch of 8-bit images (--batch-size, --image-size)", image_bytes(n, 3, side))?;
    let mut rng = PortableRng::new(1);
    let images: Vec<u8> = (0..n * side * side * 3).map(|_| (rng.next_u64() >> 56) as u8).collect();
    net.run(&images, n, side, side)?;
    let t0 = Instant::now();
    for _ in 0..a.train_steps {
        net.run(&images, n, side, side)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("| extractor | device | image | batch | batches | images/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| jit-native inception-v3-compat | {adapter} | 3×{side}×{side} | {n} | {} | {:.2} |",
        a.train_steps,
        (a.train_steps * n) as f64 / secs
    );
    Ok(())
}

/// `bench --all-reduce`: one all-reduce of each model's gradients, timed (median of 5 after one
/// warm-up) on every rank; rank 0 prints the slowest rank's time and the ring all-reduce's bus
/// bandwidth (2·(N−1)/N · bytes / time, as NCCL's tests report it).
fn all_reduce(a: &BenchArgs, world: &dyn Collective) -> Result<()> {
    let n = world.size();
    if world.rank() == 0 {
        println!("| model | parameters | MB (f32) | processes | all-reduce (s, median) | bus GB/s |");
        println!("|---|---|---|---|---|---|");
    }
    for name in &a.model {
        let config = model_config(a, name)?;
        let params = config.param_count() as usize;
        a.backend.memory_limit().check_bytes(format!("two gradient buffers of {name}"), 8 * params as u64)?;
        let mut buf = vec![1f32; params];
        let mut times = Vec::new();
        for round in 0..6 {
            let t0 = Instant::now();
            world.all_reduce_sum(&mut buf)?;
            let secs = t0.elapsed().as_secs_f64();
            // The slowest rank's time is the collective's.
            let slowest = world.all_gather(secs.to_bits())?.into_iter().map(f64::from_bits).fold(0.0, f64::max);
            if round > 0 {
                times.push(slowest);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let bytes = 4.0 * params as f64;
        let bus = 2.0 * (n as f64 - 1.0) / n as f64 * bytes / median / 1e9;
        if world.rank() == 0 {
            println!("| {name} | {params} | {:.0} | {n} | {median:.3} | {bus:.2} |", bytes / 1e6);
        }
    }
    Ok(())
}
