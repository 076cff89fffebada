//! `jit-native train`: trains a JiT and writes a run folder (see [`crate::training::run_dir`]):
//!
//! - `settings.json` — the run's settings (updated when a resume changes the schedule);
//! - `ckpt-STEP.safetensors` — the whole [`TrainState`] (written atomically; the last `--keep`
//!   are kept);
//! - `metrics.jsonl` — step, loss, lr, images/s;
//! - `samples-STEP.png` — a grid of EMA samples.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressStyle};
use jit_core::checkpoint::CheckpointMeta;
use jit_core::{Jit, JitError, MemoryLimit, TrainState};

use crate::backend::BackendArgs;
use crate::data::loader::{Batch, Loader};
use crate::fsutil::write_atomic;
use crate::generate::{GenerateOptions, generate_grid};
use crate::lanes::CpuLanes;
use crate::training::run_dir::{METRICS, RunDir, SETTINGS};
use crate::training::settings::{self, Resolved, TrainSettings};

/// `train` flags.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run folder to create (default: runs/run-<unix time>); refused if it holds another run.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its newest intact checkpoint. Schedule flags
    /// (--steps, --lr, --schedule, intervals, --keep …) may change; the others are fixed.
    #[arg(long, conflicts_with_all = ["out", "config"])]
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

/// Runs `train`; `matches` are the subcommand's, to tell flags given from defaults.
pub fn run(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    let given = settings::given_on_command_line(matches);
    let resumed = args.resume.as_deref().map(RunDir::open).transpose()?;
    let settings = match &resumed {
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join(SETTINGS)).context("cannot read settings.json")?;
            let saved = settings::from_settings_json(&text).with_context(|| format!("in {}", dir.path.display()))?;
            settings::for_resume(&saved, &args.settings, &given)?
        }
        None => {
            let base = match &args.config {
                Some(p) => {
                    let text =
                        std::fs::read_to_string(p).with_context(|| format!("cannot read config {}", p.display()))?;
                    settings::from_toml(&text).with_context(|| format!("in config {}", p.display()))?
                }
                None => TrainSettings::default(),
            };
            settings::overlay(&base, &args.settings, &given)?
        }
    };
    let (r, dataset) = settings::resolve(&settings)?;
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let limit = args.backend.memory_limit();
    limit.check_training(&r.network, r.batch_size)?;
    let is_resume = resumed.is_some();
    let dir = match resumed {
        Some(dir) => dir,
        None => RunDir::create(&args.out.clone().unwrap_or_else(default_run_dir))?,
    };
    let device = args.backend.device()?;
    let mut state = match is_resume {
        false => {
            device.seed(r.seed);
            TrainState::new(Jit::new(&r.network, &device)?, r.optim.clone(), r.seed)
        }
        true => resume_newest_intact(&dir, &r, &device, limit)?,
    };
    let mm = args.backend.matmul_dtype(&device)?;
    state.model = state.model.with_matmul_dtype(mm);
    state.ema1.model = state.ema1.model.with_matmul_dtype(mm);
    state.ema2.model = state.ema2.model.with_matmul_dtype(mm);
    // The settings as they now apply (a resume may have changed the schedule).
    write_atomic(&dir.join(SETTINGS), serde_json::to_string_pretty(&settings)?.as_bytes())?;
    eprintln!(
        "run {} | {} params | {}×{}×{} | {} classes | batch {} | lr {:.2e} | steps {}..{}",
        dir.path.display(),
        state.model.num_params(),
        r.network.in_channels,
        r.network.input_size,
        r.network.input_size,
        r.network.num_classes,
        r.batch_size,
        r.optim.peak_lr(r.batch_size),
        state.step,
        r.steps
    );
    if state.step >= r.steps {
        eprintln!("already trained for {} steps; pass --steps N to continue further", state.step);
        return Ok(());
    }

    let loader = Loader::spawn(dataset, r.batch_size, r.seed, state.step, 4);
    let bar = ProgressBar::new(r.steps);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")?);
    bar.set_position(state.step);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(METRICS))
        .context("cannot open metrics.jsonl")?;
    let stop_at = args.stop_after.map(|n| (state.step + n).min(r.steps)).unwrap_or(r.steps);
    let interrupted = stop_on_signal();
    let lanes = CpuLanes::new(&device);
    let mut last = Instant::now();
    while state.step < stop_at {
        let (x, y) = to_tensors(&loader.next()?, &r, &state.device());
        let lr = state.lr(r.batch_size);
        let loss: f32 = lanes.train_step(&mut state, &r.diffusion, x, y, limit).into_scalar();
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        if !loss.is_finite() {
            bar.abandon();
            bail!("loss became {loss} at step {}; stopped. {}", state.step, last_good(&dir));
        }
        let ips = r.batch_size as f64 / dt.max(1e-9);
        writeln!(metrics, "{}", serde_json::json!({"step": state.step, "loss": loss, "lr": lr, "images_per_s": ips}))?;
        bar.set_position(state.step);
        bar.set_message(format!("loss {loss:.4} | {ips:.1} img/s"));
        let step = state.step;
        // Read once per step: a signal that lands later is seen after the next step.
        let stop = interrupted.load(Ordering::SeqCst);
        if stop || step % r.checkpoint_every == 0 || step == r.steps || step == stop_at {
            save(&dir, &state, &r)?;
        }
        if (r.sample_every > 0 && step % r.sample_every == 0) || step == r.steps {
            sample_grid(&state.ema1.model, &r, &dir.join(&format!("samples-{step:08}.png")))?;
        }
        if stop {
            bar.abandon();
            metrics.sync_all().ok();
            eprintln!(
                "interrupted: saved step {step}; continue with `jit-native train --resume {}`",
                dir.path.display()
            );
            return Ok(());
        }
    }
    bar.finish();
    metrics.sync_all().ok();
    eprintln!("done: step {} in {}", state.step, dir.path.display());
    Ok(())
}

/// Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save it; another one
/// a second or more later exits at once (checkpoints are written atomically, so nothing saved
/// is lost). Repeats within the second are one request: `timeout` and process managers signal
/// the process and then its group.
fn stop_on_signal() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let seen = flag.clone();
    let first = std::sync::OnceLock::<Instant>::new();
    let handler = ctrlc::set_handler(move || {
        let at = *first.get_or_init(Instant::now);
        if !seen.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to quit now)");
        } else if at.elapsed().as_secs_f64() >= 1.0 {
            eprintln!("\ninterrupted again: exiting without saving the current step");
            std::process::exit(130);
        }
    });
    if let Err(e) = handler {
        eprintln!("warning: Ctrl-C will stop training without saving ({e})");
    }
    flag
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    PathBuf::from(format!("runs/run-{secs}"))
}

fn last_good(dir: &RunDir) -> String {
    match dir.newest() {
        Some(p) => format!(
            "Last good checkpoint: {} (lower the learning rate: train --resume {} --lr RATE)",
            p.display(),
            dir.path.display()
        ),
        None => "No checkpoint was written yet (lower the learning rate and start again).".into(),
    }
}

fn to_tensors(batch: &Batch, r: &Resolved, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let (b, c, s) = (batch.labels.len(), r.network.in_channels, r.network.input_size);
    let x = Tensor::from_data(TensorData::new(batch.images.clone(), [b, c, s, s]), device);
    let y = Tensor::from_data(TensorData::new(batch.labels.clone(), [b]), device);
    (x, y)
}

fn meta_for(r: &Resolved) -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(r.network.clone(), r.diffusion.clone(), r.sampler.clone());
    meta.class_names = r.class_names.clone();
    meta.extra.insert("train".into(), serde_json::to_value(r).expect("serialisable"));
    meta
}

fn save(dir: &RunDir, state: &TrainState<Jit>, r: &Resolved) -> Result<()> {
    let bytes = match state.to_checkpoint(&meta_for(r)) {
        Ok(b) => b,
        // An update can overflow even when the loss that produced it was finite: such weights
        // never replace a good checkpoint.
        Err(e @ JitError::NonFinite(_)) => bail!("at step {}: {e}; stopped. {}", state.step, last_good(dir)),
        Err(e) => return Err(e.into()),
    };
    write_atomic(&dir.checkpoint_path(state.step), &bytes)?;
    dir.prune(r.keep)
}

/// The newest checkpoint that loads completely; unusable newer ones are renamed
/// `….unusable` (kept for inspection, never deleted) with a warning.
fn resume_newest_intact(dir: &RunDir, r: &Resolved, device: &Device, limit: MemoryLimit) -> Result<TrainState<Jit>> {
    let found = dir.checkpoints()?;
    if found.is_empty() {
        eprintln!("{} holds no checkpoint yet (stopped before the first one): starting at step 0", dir.path.display());
        device.seed(r.seed);
        return Ok(TrainState::new(Jit::new(&r.network, device)?, r.optim.clone(), r.seed));
    }
    for f in found.iter().rev() {
        let header = crate::training::run_dir::read_header_meta(&f.path)?;
        if header.network != r.network {
            bail!("{} was trained with another network config than settings.json describes", f.path.display());
        }
        let attempt = std::fs::read(&f.path)
            .map_err(|e| JitError::NotACheckpoint(e.to_string()))
            .and_then(|bytes| TrainState::from_checkpoint(&bytes, r.optim.clone(), r.seed, device, limit));
        match attempt {
            Ok((state, _)) => {
                eprintln!("resuming from {} (step {})", f.path.display(), state.step);
                return Ok(state);
            }
            Err(e @ (JitError::TooLarge { .. } | JitError::Backend(_))) => return Err(e.into()),
            Err(e) => {
                let aside = unusable_name(&f.path);
                std::fs::rename(&f.path, &aside).with_context(|| format!("cannot rename {}", f.path.display()))?;
                eprintln!(
                    "warning: {} is unusable ({e}); renamed it to {} and trying the previous one",
                    f.path.display(),
                    aside.display()
                );
            }
        }
    }
    bail!("no checkpoint in {} is usable (see the warnings above)", dir.path.display())
}

fn unusable_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".unusable");
    PathBuf::from(name)
}

fn sample_grid(model: &Jit, r: &Resolved, path: &Path) -> Result<()> {
    let labels: Vec<i64> = (0..r.grid_images).map(|i| (i % r.network.num_classes) as i64).collect();
    let opts = GenerateOptions { seed: r.seed, sampler: r.sampler.clone(), labels };
    generate_grid(model, &r.diffusion, &opts, path, 2)
}
