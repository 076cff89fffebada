//! `jit-native train`: trains a JiT and writes a run folder:
//!
//! - `settings.json` — the resolved settings of the run;
//! - `ckpt-STEP.safetensors` — the raw model, both EMAs, the optimizer state, step and seed
//!   (written atomically; the last `--keep` are kept);
//! - `metrics.jsonl` — step, loss, lr, images/s;
//! - `samples-STEP.png` — a grid of EMA samples.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jit_core::checkpoint::{self, CheckpointMeta, StoreDtype};
use jit_core::train::{OptimConfig, Schedule, Trainer};
use jit_core::{DiffusionConfig, Jit, JitConfig, Method, SamplerConfig, Target};
use serde::{Deserialize, Serialize};

use crate::backend::BackendArgs;
use crate::data::{DataSource, loader::Loader};
use crate::fsutil::write_atomic;
use crate::generate::{GenerateOptions, generate_grid};

/// Every setting of a run. On the command line each is a flag; `--config FILE.toml` may hold
/// any of them (flags win).
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    /// Dataset: `shapes` (built in), `fashion-mnist`, `idx:DIR` or `folder:DIR`. [default: shapes]
    #[arg(long)]
    pub data: Option<String>,
    /// Model preset: JiT-B/16, B/32, L/16, L/32, H/16, H/32, or the small JiT-T/4, T/8, S/4, S/8. [default: JiT-T/4]
    #[arg(long)]
    pub model: Option<String>,
    /// Image size in pixels (the dataset is cropped/resized/padded to it). [default: 32]
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Image channels (1 or 3). [default: the dataset's]
    #[arg(long)]
    pub channels: Option<usize>,
    /// Override the preset's patch size.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Override the preset's width D.
    #[arg(long)]
    pub hidden_size: Option<usize>,
    /// Override the preset's depth.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Override the preset's number of heads.
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Override the preset's bottleneck width.
    #[arg(long)]
    pub bottleneck_dim: Option<usize>,
    /// Override the number of in-context class tokens (0 disables).
    #[arg(long)]
    pub in_context_len: Option<usize>,
    /// Override the block where in-context tokens start.
    #[arg(long)]
    pub in_context_start: Option<usize>,
    /// SwiGLU width factor. [default: 4.0]
    #[arg(long)]
    pub mlp_ratio: Option<f64>,
    /// Attention dropout in the middle half of the blocks. [default: 0]
    #[arg(long)]
    pub attn_drop: Option<f64>,
    /// Projection dropout in the middle half of the blocks. [default: preset's]
    #[arg(long)]
    pub proj_drop: Option<f64>,
    /// Logit-normal mean of t. [default: -0.8]
    #[arg(long, allow_hyphen_values = true)]
    pub p_mean: Option<f64>,
    /// Logit-normal std of t. [default: 0.8]
    #[arg(long)]
    pub p_std: Option<f64>,
    /// Noise scale (1 at 256 px, 2 at 512, 4 at 1024). [default: 1.0]
    #[arg(long)]
    pub noise_scale: Option<f64>,
    /// Clamp of 1 − t in the velocity. [default: 0.05]
    #[arg(long)]
    pub t_eps: Option<f64>,
    /// Probability of the null label (for CFG). [default: 0.1]
    #[arg(long)]
    pub label_drop_prob: Option<f64>,
    /// Network prediction target: x, eps or v. [default: x]
    #[arg(long)]
    pub prediction: Option<String>,
    /// Loss space: x, eps or v. [default: v]
    #[arg(long)]
    pub loss: Option<String>,
    /// Base learning rate; lr = blr·batch/256 (reference: 5e-5). [default: 6.4e-3 → 8e-4 at batch 32]
    #[arg(long)]
    pub blr: Option<f64>,
    /// Absolute learning rate (overrides --blr).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine schedule. [default: 0]
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Warm-up steps. [default: 5% of the steps]
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Warm-up in epochs (reference: 5); overrides --warmup-steps.
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Schedule after warm-up: constant or cosine. [default: constant]
    #[arg(long)]
    pub schedule: Option<String>,
    /// AdamW weight decay (never on biases and 1-D parameters). [default: 0]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// First EMA decay (used for sampling; reference 0.9999). [default: 0.999]
    #[arg(long)]
    pub ema_decay1: Option<f64>,
    /// Second EMA decay (reference 0.9996). [default: 0.9999]
    #[arg(long)]
    pub ema_decay2: Option<f64>,
    /// Images per step. [default: 32]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Optimizer steps. [default: 5000]
    #[arg(long)]
    pub steps: Option<u64>,
    /// Epochs (overrides --steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Seed of initialisation, data order and noise. [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every N steps (and at the end). [default: 500]
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Write an EMA sample grid every N steps (0: only at the end). [default: 500]
    #[arg(long)]
    pub sample_every: Option<u64>,
    /// Checkpoints to keep. [default: 3]
    #[arg(long)]
    pub keep: Option<usize>,
    /// Sampler steps for the grids. [default: 50]
    #[arg(long)]
    pub sample_steps: Option<usize>,
    /// CFG scale for the grids (and the checkpoint's default). [default: 2.9]
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Images in each sample grid. [default: 2 per class, at most 32]
    #[arg(long)]
    pub grid_images: Option<usize>,
    /// Random horizontal flips (image folders). [default: true]
    #[arg(long)]
    pub flip: Option<bool>,
}

/// `train` flags.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run folder to create (default: runs/<timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its newest checkpoint (`--steps` may extend it).
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// TOML file with any of the settings below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Print the resolved settings and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this many steps in this invocation (the run stays resumable).
    #[arg(long, hide = true)]
    pub stop_after: Option<u64>,
    #[command(flatten)]
    pub settings: TrainSettings,
}

macro_rules! merge {
    ($base:expr, $over:expr, $($f:ident),*) => { $( if $over.$f.is_some() { $base.$f = $over.$f.clone(); } )* };
}

macro_rules! set_some {
    ($base:expr, $over:expr, $($f:ident),*) => { $( if let Some(v) = $over.$f { $base.$f = v; } )* };
}

impl TrainSettings {
    fn overlay(mut self, o: &TrainSettings) -> Self {
        merge!(self, o, data, model, image_size, channels, patch_size, hidden_size, depth, num_heads,
            bottleneck_dim, in_context_len, in_context_start, mlp_ratio, attn_drop, proj_drop, p_mean,
            p_std, noise_scale, t_eps, label_drop_prob, prediction, loss, blr, lr, min_lr, warmup_steps,
            warmup_epochs, schedule, weight_decay, ema_decay1, ema_decay2, batch_size, steps, epochs, seed,
            checkpoint_every, sample_every, keep, sample_steps, cfg, grid_images, flip);
        self
    }
}

/// Settings resolved to concrete values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    pub data: DataSource,
    pub network: JitConfig,
    pub diffusion: DiffusionConfig,
    pub optim: OptimConfig,
    pub sampler: SamplerConfig,
    pub batch_size: usize,
    pub steps: u64,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub keep: usize,
    pub grid_images: usize,
    pub flip: bool,
    pub class_names: Vec<String>,
}

fn resolve(s: &TrainSettings) -> Result<(Resolved, Arc<dyn crate::data::Dataset>)> {
    let data: DataSource = s.data.as_deref().unwrap_or("shapes").parse()?;
    let size = s.image_size.unwrap_or(32);
    let channels = s.channels.unwrap_or(data.natural_channels());
    let flip = s.flip.unwrap_or(true);
    let dataset: Arc<dyn crate::data::Dataset> = Arc::from(data.open(size, channels, flip)?);
    let num_classes = dataset.class_names().len();
    let mut net = JitConfig::preset(s.model.as_deref().unwrap_or("JiT-T/4"), size, channels, num_classes)?;
    set_some!(net, s, patch_size, hidden_size, depth, num_heads, bottleneck_dim, in_context_len,
        in_context_start, mlp_ratio, attn_drop, proj_drop);
    if net.in_context_len > 0 && net.in_context_start >= net.depth {
        net.in_context_start = net.depth / 2;
    }
    net.validate()?;
    let diffusion = DiffusionConfig {
        p_mean: s.p_mean.unwrap_or(-0.8),
        p_std: s.p_std.unwrap_or(0.8),
        noise_scale: s.noise_scale.unwrap_or(1.0),
        t_eps: s.t_eps.unwrap_or(0.05),
        label_drop_prob: s.label_drop_prob.unwrap_or(0.1),
        prediction: s.prediction.as_deref().unwrap_or("x").parse::<Target>()?,
        loss: s.loss.as_deref().unwrap_or("v").parse::<Target>()?,
    };
    let batch_size = s.batch_size.unwrap_or(32);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let steps_per_epoch = (dataset.len() as f64 / batch_size as f64).max(1.0);
    let steps = match s.epochs {
        Some(e) => (e * steps_per_epoch).ceil() as u64,
        None => s.steps.unwrap_or(5000),
    };
    if steps == 0 {
        bail!("--steps/--epochs must give at least one step");
    }
    let warmup_steps = match s.warmup_epochs {
        Some(e) => (e * steps_per_epoch).round() as u64,
        None => s.warmup_steps.unwrap_or(steps / 20),
    };
    let schedule = match s.schedule.as_deref().unwrap_or("constant") {
        "constant" => Schedule::Constant,
        "cosine" => Schedule::Cosine,
        other => bail!("unknown --schedule '{other}' (use constant or cosine)"),
    };
    let optim = OptimConfig {
        blr: s.blr.unwrap_or(6.4e-3),
        lr: s.lr,
        min_lr: s.min_lr.unwrap_or(0.0),
        weight_decay: s.weight_decay.unwrap_or(0.0),
        warmup_steps,
        total_steps: steps,
        schedule,
        ema_decays: (s.ema_decay1.unwrap_or(0.999), s.ema_decay2.unwrap_or(0.9999)),
        ..OptimConfig::default()
    };
    let sampler = SamplerConfig {
        method: Method::Heun,
        steps: s.sample_steps.unwrap_or(50),
        cfg: s.cfg.unwrap_or(2.9),
        interval: (0.1, 1.0),
    };
    sampler.validate()?;
    let resolved = Resolved {
        data,
        network: net,
        diffusion,
        optim,
        sampler,
        batch_size,
        steps,
        seed: s.seed.unwrap_or(0),
        checkpoint_every: s.checkpoint_every.unwrap_or(500).max(1),
        sample_every: s.sample_every.unwrap_or(500),
        keep: s.keep.unwrap_or(3).max(1),
        grid_images: s.grid_images.unwrap_or((2 * num_classes).min(32)),
        flip,
        class_names: dataset.class_names().to_vec(),
    };
    Ok((resolved, dataset))
}

fn ckpt_name(step: u64) -> String {
    format!("ckpt-{step:08}.safetensors")
}

/// Checkpoints in `dir`, oldest first.
pub fn checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read run folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("ckpt-") && n.ends_with(".safetensors")
        })
        .collect();
    found.sort();
    Ok(found)
}

fn to_tensors(batch: &crate::data::loader::Batch, r: &Resolved, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let (b, c, s) = (batch.labels.len(), r.network.in_channels, r.network.input_size);
    let x = Tensor::from_data(TensorData::new(batch.images.clone(), [b, c, s, s]), device);
    let y = Tensor::from_data(TensorData::new(batch.labels.clone(), [b]), device);
    (x, y)
}

/// Runs `train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let file_settings = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str::<TrainSettings>(&text).with_context(|| format!("invalid config {}", p.display()))?
        }
        None => TrainSettings::default(),
    };
    let (run_dir, settings, resolved, dataset, resume_from) = if let Some(dir) = &args.resume {
        let latest = checkpoints(dir)?
            .pop()
            .with_context(|| format!("{} holds no checkpoint to resume from", dir.display()))?;
        let text = std::fs::read_to_string(dir.join("settings.json"))
            .with_context(|| format!("{} is not a run folder (no settings.json)", dir.display()))?;
        let mut settings: TrainSettings = serde_json::from_str(&text).context("settings.json is corrupt")?;
        if let Some(steps) = args.settings.steps {
            settings.steps = Some(steps);
            settings.epochs = None;
        }
        let (resolved, dataset) = resolve(&settings)?;
        (dir.clone(), settings, resolved, dataset, Some(latest))
    } else {
        let settings = file_settings.overlay(&args.settings);
        let (resolved, dataset) = resolve(&settings)?;
        let dir = args.out.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            PathBuf::from(format!("runs/run-{secs}"))
        });
        (dir, settings, resolved, dataset, None)
    };
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&resolved)?);
        return Ok(());
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let device = args.backend.device()?;
    let r = resolved;

    let mut trainer = match &resume_from {
        None => {
            // Everything explicit, as it will be re-read on `--resume`.
            let settings_json = serde_json::to_string_pretty(&settings)?;
            write_atomic(&run_dir.join("settings.json"), settings_json.as_bytes())?;
            device.seed(r.seed);
            let model = Jit::new(&r.network, &device)?;
            Trainer::new(model, r.diffusion.clone(), r.optim.clone(), r.seed)
        }
        Some(path) => restore(path, &r, &device)?,
    };
    let n_params = trainer.model.num_params();
    eprintln!(
        "run {} | {} params | {}×{}×{} | {} classes | batch {} | lr {:.2e} | steps {}..{}",
        run_dir.display(),
        n_params,
        r.network.in_channels,
        r.network.input_size,
        r.network.input_size,
        r.network.num_classes,
        r.batch_size,
        r.optim.peak_lr(r.batch_size),
        trainer.step,
        r.steps
    );
    if trainer.step >= r.steps {
        eprintln!("already trained for {} steps; pass --steps N to continue further", trainer.step);
        return Ok(());
    }

    let loader = Loader::spawn(dataset, r.batch_size, r.seed, trainer.step, 4);
    let bar = ProgressBar::new(r.steps);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
            .unwrap(),
    );
    bar.set_position(trainer.step);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .context("cannot open metrics.jsonl")?;
    let stop_at = args.stop_after.map(|n| (trainer.step + n).min(r.steps)).unwrap_or(r.steps);
    let mut last = Instant::now();
    while trainer.step < stop_at {
        let batch = loader.next()?;
        let (x, y) = to_tensors(&batch, &r, &trainer.device());
        let lr = r.optim.lr_at(trainer.step, r.batch_size);
        let loss: f32 = trainer.step(x, y).into_scalar();
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        if !loss.is_finite() {
            bar.abandon();
            let kept = checkpoints(&run_dir)?.pop();
            bail!(
                "loss became {loss} at step {}; stopped. Last good checkpoint: {} (lower the learning rate and --resume)",
                trainer.step,
                kept.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
            );
        }
        let ips = r.batch_size as f64 / dt.max(1e-9);
        use std::io::Write;
        writeln!(metrics, "{}", serde_json::json!({"step": trainer.step, "loss": loss, "lr": lr, "images_per_s": ips}))?;
        bar.set_position(trainer.step);
        bar.set_message(format!("loss {loss:.4} | {ips:.1} img/s"));
        let step = trainer.step;
        if step % r.checkpoint_every == 0 || step == r.steps || step == stop_at {
            save_checkpoint(&run_dir, &trainer, &r)?;
        }
        if (r.sample_every > 0 && step % r.sample_every == 0) || step == r.steps {
            let grid = run_dir.join(format!("samples-{step:08}.png"));
            sample_grid(&trainer.ema1.model, &r, &grid)?;
        }
    }
    bar.finish();
    metrics.sync_all().ok();
    eprintln!("done: step {} in {}", trainer.step, run_dir.display());
    Ok(())
}

fn meta_for(r: &Resolved, step: u64) -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(r.network.clone(), r.diffusion.clone(), r.sampler.clone());
    meta.class_names = r.class_names.clone();
    meta.step = step;
    meta.extra.insert("train".into(), serde_json::to_value(r).expect("serialisable"));
    meta
}

fn save_checkpoint(dir: &Path, t: &Trainer, r: &Resolved) -> Result<()> {
    // An update can overflow even when the loss that produced it was finite: never save such
    // weights over a good checkpoint.
    let weights = jit_core::state_dict::export(&t.model)?;
    if let Some((name, _)) = weights.iter().find(|(_, v)| v.data.iter().any(|x| !x.is_finite())) {
        let kept = checkpoints(dir)?.pop();
        bail!(
            "weights became non-finite at step {} (first: {name}); stopped. Last good checkpoint: {} (lower the learning rate and --resume)",
            t.step,
            kept.map(|p| p.display().to_string()).unwrap_or_else(|| "none".into())
        );
    }
    let meta = meta_for(r, t.step);
    let optim = t.optim.into_bytes().map_err(|e| anyhow::anyhow!("cannot serialise optimizer state: {e:?}"))?;
    let ids = serde_json::to_vec(&jit_core::state_dict::param_ids(&t.model))?;
    let bytes = checkpoint::save_with_blobs(
        &meta,
        &[("net", &t.model), ("ema1", &t.ema1.model), ("ema2", &t.ema2.model)],
        StoreDtype::F32,
        &[("optimizer", &optim[..]), ("param_ids", &ids[..])],
    )?;
    write_atomic(&dir.join(ckpt_name(t.step)), &bytes)?;
    let all = checkpoints(dir)?;
    for old in &all[..all.len().saturating_sub(r.keep)] {
        std::fs::remove_file(old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
    }
    Ok(())
}

fn restore(path: &Path, r: &Resolved, device: &Device) -> Result<Trainer> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ctx = || format!("cannot resume from {}", path.display());
    let (net, meta) = checkpoint::load(&bytes, "net", device).with_context(ctx)?;
    if meta.network != r.network {
        bail!("{} was trained with another network config than settings.json describes", path.display());
    }
    let (ema1, _) = checkpoint::load(&bytes, "ema1", device).with_context(ctx)?;
    let (ema2, _) = checkpoint::load(&bytes, "ema2", device).with_context(ctx)?;
    let optim = checkpoint::blob(&bytes, "optimizer")?.with_context(|| format!("{} has no optimizer state", path.display()))?;
    // AdamW state is keyed by parameter id: give the loaded weights their saved ids.
    let ids = checkpoint::blob(&bytes, "param_ids")?.with_context(|| format!("{} has no parameter ids", path.display()))?;
    let ids: std::collections::BTreeMap<String, u64> = serde_json::from_slice(&ids).context("corrupt parameter ids")?;
    let net = jit_core::state_dict::set_param_ids(net, &ids);
    let mut t = Trainer::new(net, r.diffusion.clone(), r.optim.clone(), r.seed);
    t.ema1.model = ema1;
    t.ema2.model = ema2;
    t.optim = t
        .optim
        .clone()
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(optim))
        .map_err(|e| anyhow::anyhow!("optimizer state in {} is corrupt: {e:?}", path.display()))?;
    t.step = meta.step;
    Ok(t)
}

fn sample_grid(model: &Jit, r: &Resolved, path: &Path) -> Result<()> {
    let n = r.grid_images.max(1);
    let labels: Vec<i64> = (0..n).map(|i| (i % r.network.num_classes) as i64).collect();
    let opts = GenerateOptions { seed: r.seed, sampler: r.sampler.clone(), labels };
    generate_grid(model, &r.diffusion, &opts, path, 2)
}
