//! `jit-native train`: trains a JiT and writes a run folder (see [`crate::training::run_dir`]):
//!
//! - `settings.json` — the run's settings (updated when a resume changes the schedule);
//! - `ckpt-STEP.safetensors` — the whole [`TrainState`] (written atomically; the last `--keep`
//!   are kept);
//! - `metrics.jsonl` — step, loss, lr, images/s;
//! - `samples-STEP.png` — a grid of EMA samples.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{ArgMatches, Args};
use indicatif::{ProgressBar, ProgressStyle};
use jit_core::checkpoint::CheckpointMeta;
use jit_core::train_state::Shard;
use jit_core::{Jit, JitError, MemoryLimit, TrainState};

use crate::backend::BackendArgs;
use crate::data::loader::{Batch, Loader};
use crate::dist::{self, Collective};
use crate::exit::Interrupted;
use crate::fsutil::{read_text, write_atomic};
use crate::generate::{GenerateOptions, generate_grid};
use crate::lanes::CpuLanes;
use crate::refuse;
use crate::science::fid::Statistics;
use crate::signals::stop_on_signal;
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
    /// Where stderr is not a terminal (a log file, a cluster job): a log line (step, loss, lr,
    /// images/s, ETA) every N steps, and at the first and the last step.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: u64,
    /// Under mpirun/srun: compare a checksum of every rank's weights every N steps (a mismatch
    /// stops the run, naming the step).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub check_every: u64,
    /// Every N steps, FID and Inception Score of `--eval-count` EMA-1 samples, logged to
    /// metrics.jsonl (the official online evaluation); needs --fid-inception and --fid-stats.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Images of each online evaluation (a multiple of the classes). [default: 10 per class]
    #[arg(long)]
    pub eval_count: Option<usize>,
    /// torch-fidelity's Inception weights, for --eval-every.
    #[arg(long, value_name = "PTH")]
    pub fid_inception: Option<PathBuf>,
    /// Reference statistics (.npz with mu, sigma), for --eval-every.
    #[arg(long, value_name = "NPZ")]
    pub fid_stats: Option<PathBuf>,
    /// Threads decoding and augmenting images (folder datasets). [default: this process's cores]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub loader_threads: Option<usize>,
    #[command(flatten)]
    pub settings: TrainSettings,
}

/// Runs `train`; `matches` are the subcommand's, to tell flags given from defaults. Under
/// `mpirun`/`srun` every process runs this as one rank of a data-parallel run (see
/// [`crate::dist`]); an error on any rank ends every rank.
pub fn run(args: TrainArgs, matches: &ArgMatches) -> Result<()> {
    dist::run_on_every_rank(|world| train(&args, matches, world))
}

fn train(args: &TrainArgs, matches: &ArgMatches, world: &dyn Collective) -> Result<()> {
    let (rank, size) = (world.rank(), world.size());
    let lead = rank == 0;
    let who = if size > 1 { format!("rank {rank} of {size} (local {}): ", world.local_rank()) } else { String::new() };
    if size > 1 {
        let argv: Vec<u8> = std::env::args_os().flat_map(|a| a.into_encoded_bytes().into_iter().chain([0])).collect();
        let exe = std::env::current_exe().and_then(std::fs::read).context("cannot read this program's file")?;
        let hash = dist::settings_hash(&[&argv, env!("CARGO_PKG_VERSION").as_bytes(), &exe]);
        dist::check_same(world, hash, "was started with other flags or another binary")?;
    }
    let given = settings::given_on_command_line(matches);
    // Only rank 0 touches the run folder; the settings it resolves go to every rank.
    let resumed = if lead { args.resume.as_deref().map(RunDir::open).transpose()? } else { None };
    let mut text = Vec::new();
    if lead {
        let settings = match &resumed {
            Some(dir) => {
                let text = read_text(&dir.join(SETTINGS), MAX_SETTINGS_BYTES, "settings file")?;
                let saved =
                    settings::from_settings_json(&text).with_context(|| format!("in {}", dir.path.display()))?;
                settings::for_ranks(settings::for_resume(&saved, &args.settings, &given)?, size)?
            }
            None => {
                let base = match &args.config {
                    Some(p) => {
                        let text = read_text(p, MAX_SETTINGS_BYTES, "config")?;
                        settings::from_toml(&text).with_context(|| format!("in config {}", p.display()))?
                    }
                    None => TrainSettings::default(),
                };
                TrainSettings { ranks: size, ..settings::overlay(&base, &args.settings, &given)? }
            }
        };
        text = serde_json::to_vec(&settings)?;
    }
    world.broadcast(&mut text)?;
    let settings: TrainSettings = serde_json::from_slice(&text).context("settings from rank 0")?;
    let (r, dataset) = settings::resolve(&settings)?;
    if args.dry_run {
        if lead {
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        return Ok(());
    }
    if size > 1 {
        let names = serde_json::to_vec(&(dataset.len(), &r.class_names))?;
        dist::check_same(world, dist::settings_hash(&[&names]), "sees another dataset (size or classes)")?;
    }
    let limit = args.backend.memory_limit();
    let (device, _) = args.backend.device_for_rank((size > 1).then(|| world.local_rank()), &who)?;
    // Once the device is known (the estimate follows how it runs attention, and the device may
    // not compute in --precision's type), before a run directory is made.
    limit.check_training(&r.network, r.batch_size)?;
    let mm = args.backend.matmul_dtype(&device)?;
    // The online evaluation's network and reference, loaded (and checked) before a run
    // directory is made.
    let evaluator = match (lead && args.eval_every > 0, &args.fid_inception, &args.fid_stats) {
        (false, ..) => None,
        (true, Some(w), Some(s)) => {
            let n = args.eval_count.unwrap_or(10 * r.network.num_classes);
            if n == 0 || !n.is_multiple_of(r.network.num_classes) {
                refuse!("--eval-count {n} must be a positive multiple of the {} classes", r.network.num_classes);
            }
            Some((super::fid::load_inception(w, &device)?, Statistics::read(s)?, n))
        }
        (true, ..) => refuse!("--eval-every needs --fid-inception PTH and --fid-stats NPZ (see docs/fid.md)"),
    };
    if lead && r.optim.warmup_steps > r.steps {
        eprintln!(
            "note: the warm-up ({} steps) is longer than the run ({} steps): the learning rate never reaches its peak",
            r.optim.warmup_steps, r.steps
        );
    }
    if args.eval_every == 0 {
        for (given, flag) in [
            (args.fid_inception.is_some(), "--fid-inception"),
            (args.fid_stats.is_some(), "--fid-stats"),
            (args.eval_count.is_some(), "--eval-count"),
        ] {
            if given && lead {
                eprintln!("note: {flag} is for the online evaluation; without --eval-every N it does nothing");
            }
        }
    }
    let is_resume = args.resume.is_some();
    let dir = match (lead, resumed) {
        (false, _) => None,
        (true, Some(dir)) => Some(dir),
        (true, None) => Some(RunDir::create(&args.out.clone().unwrap_or_else(default_run_dir))?),
    };
    // Rank 0 picks the checkpoint to resume from; every rank restores the same bytes.
    let (state, mut bytes) = match (&dir, is_resume) {
        (Some(dir), true) => resume_newest_intact(dir, &r, &device, limit)?,
        _ => (None, Vec::new()),
    };
    world.broadcast(&mut bytes)?;
    let mut state = match state {
        Some(state) => state,
        None if bytes.is_empty() => {
            device.seed(r.seed);
            TrainState::new(Jit::new(&r.network, &device)?, r.optim.clone(), r.seed)
        }
        None => TrainState::from_checkpoint(&bytes, r.optim.clone(), r.seed, &device, limit)?.0,
    };
    drop(bytes);
    // (A checkpoint with a loss scale was written by an f16 run.)
    if state.loss_scale.is_some() && mm != Some(burn::tensor::FloatDType::F16) && lead {
        let asked = format!("{:?}", args.backend.precision).to_lowercase();
        eprintln!(
            "note: this run trained with --precision f16 (its checkpoint holds a loss scale); it goes on in {asked} as asked (pass --precision f16 to keep f16)"
        );
    }
    state.set_matmul_dtype(mm);
    if size > 1 {
        let sum = jit_core::flat::weights_checksum(&state.model)?;
        dist::check_same(world, sum, &format!("starts from other weights at step {}", state.step))?;
    }
    if state.step >= r.steps {
        if lead {
            eprintln!("already trained for {} steps; pass --steps N to continue further", state.step);
        }
        return Ok(());
    }
    if let Some(dir) = &dir {
        // The settings as they now apply (a resume may have changed the schedule or the ranks).
        write_atomic(&dir.join(SETTINGS), serde_json::to_string_pretty(&settings)?.as_bytes())?;
        eprintln!(
            "run {} | {} params | {}×{}×{} | {} classes | batch {} ({} × {size} processes) | lr {:.2e} | steps {}..{}",
            dir.path.display(),
            state.model.num_params(),
            r.network.in_channels,
            r.network.input_size,
            r.network.input_size,
            r.network.num_classes,
            r.global_batch,
            r.batch_size,
            r.optim.peak_lr(r.global_batch),
            state.step,
            r.steps
        );
    }

    let part = rank * r.batch_size..(rank + 1) * r.batch_size;
    let threads = args.loader_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let loader = Loader::spawn(dataset, r.global_batch, part.clone(), r.seed, state.step, 4, threads)?;
    let bar = if lead { ProgressBar::new(r.steps) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")?);
    bar.set_position(state.step);
    let mut metrics = match &dir {
        Some(dir) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(METRICS))
                .context("cannot open metrics.jsonl")?,
        ),
        None => None,
    };
    let stop_at = args.stop_after.map(|n| (state.step + n).min(r.steps)).unwrap_or(r.steps);
    // A rank waiting for one that died would wait for ever: after a signal, the step in flight
    // gets a bounded time to finish.
    let interrupted = stop_on_signal((size > 1).then_some(STEP_GRACE));
    let log = Log::new(lead && !std::io::stderr().is_terminal(), args.log_every, state.step, r.steps);
    let lanes = CpuLanes::new(&device);
    let mut last = Instant::now();
    while state.step < stop_at {
        let (x, y) = to_tensors(&loader.next()?, &r, &state.device());
        let lr = state.lr(r.global_batch);
        let mut signal = interrupted.signal();
        let loss: f32 = if size == 1 {
            lanes.train_step(&mut state, &r.diffusion, x, y, limit).into_scalar()
        } else {
            let shard = Shard { offset: part.start, global: r.global_batch };
            let mut reduced = Ok(None);
            let loss = lanes.train_step_sharded(&mut state, &r.diffusion, x, y, limit, shard, |model, grads, loss| {
                match all_reduce(world, model, grads, loss, signal) {
                    Ok((grads, loss, stop)) => {
                        reduced = Ok(stop);
                        (grads, loss)
                    }
                    Err(e) => {
                        reduced = Err(e);
                        (GradientsParams::new(), Tensor::zeros([1], &device))
                    }
                }
            });
            // Every rank stops after the same step when any of them was asked to.
            signal = reduced?;
            loss.into_scalar()
        };
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let step = state.step;
        if !loss.is_finite() {
            bar.abandon();
            bail!("loss became {loss} at step {step}; stopped. {}", dir.as_ref().map_or(String::new(), last_good));
        }
        if state.loss_scale.is_some_and(|s| s.diverged()) {
            bar.abandon();
            let last = dir.as_ref().map_or(String::new(), last_good);
            bail!(
                "the gradients were not finite at step {step} even at loss scale 1 (training diverged); stopped. {last}"
            );
        }
        if size > 1 && step % args.check_every == 0 {
            let sum = jit_core::flat::weights_checksum(&state.model)?;
            dist::check_same(world, sum, &format!("has other weights after step {step}"))?;
        }
        let ips = r.global_batch as f64 / dt.max(1e-9);
        if let Some(metrics) = &mut metrics {
            let mut line = serde_json::json!({"step": step, "loss": loss, "lr": lr, "images_per_s": ips});
            if let Some(s) = state.loss_scale {
                // f16 products: the loss scale after this step, and whether the step was skipped.
                line["loss_scale"] = s.scale.into();
                line["skipped"] = (s.skipped > 0).into();
            }
            writeln!(metrics, "{line}")?;
        }
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.4} | {ips:.1} img/s"));
        log.step(step, loss, lr, ips, step == stop_at);
        if let Some(dir) = &dir {
            if signal.is_some() || step % r.checkpoint_every == 0 || step == r.steps || step == stop_at {
                save(dir, &state, &r)?;
            }
            if (r.sample_every > 0 && step % r.sample_every == 0) || step == r.steps {
                sample_grid(&state.ema1.model, &r, &dir.join(&format!("samples-{step:08}.png")))?;
            }
            if let Some((net, reference, n)) = &evaluator
                && step % args.eval_every == 0
            {
                let model = &state.ema1.model;
                let (fid, is_mean, is_std) =
                    super::fid::score_model(model, &r.diffusion, &r.sampler, *n, net, reference)?;
                bar.println(format!("step {step}: FID {fid:.4} | IS {is_mean:.3} ± {is_std:.3} ({n} EMA-1 samples)"));
                if let Some(metrics) = &mut metrics {
                    let line = serde_json::json!({"step": step, "fid": fid, "is_mean": is_mean, "is_std": is_std, "eval_images": n});
                    writeln!(metrics, "{line}")?;
                }
            }
        }
        if let Some(signal) = signal {
            bar.abandon();
            if let Some(metrics) = &metrics {
                metrics.sync_all().ok();
            }
            let message = match &dir {
                Some(dir) => {
                    format!("saved step {step}; continue with `jit-native train --resume {}`", dir.path.display())
                }
                None => format!("rank {rank} stopped after step {step} (rank 0 saved it)"),
            };
            return Err(Interrupted { signal, message }.into());
        }
    }
    bar.finish();
    if let (Some(dir), Some(metrics)) = (&dir, &metrics) {
        metrics.sync_all().ok();
        eprintln!("done: step {} in {}", state.step, dir.path.display());
    }
    Ok(())
}

/// How long the step in flight of a data-parallel run may take to finish after a signal.
const STEP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The sum over the ranks of this rank's gradients and loss, in one all-reduce with one more
/// value: the stop request (1 where a signal arrived), so that every rank stops after
/// the same step. Returns the global gradients, loss and the stop signal, if any rank had one.
fn all_reduce(
    world: &dyn Collective,
    model: &Jit,
    mut grads: GradientsParams,
    loss: Tensor<1>,
    signal: Option<i32>,
) -> Result<(GradientsParams, Tensor<1>, Option<i32>)> {
    let device = loss.device();
    let mut flat = jit_core::flat::gradients_to_flat(model, &mut grads)?;
    flat.push(loss.into_scalar());
    flat.push(if signal.is_some() { 1.0 } else { 0.0 });
    world.all_reduce_sum(&mut flat)?;
    let stopping = flat.pop().expect("pushed") > 0.0;
    let loss = flat.pop().expect("pushed");
    // A rank that saw no signal itself stops as if terminated (SIGTERM).
    let stop = stopping.then(|| signal.unwrap_or(15));
    Ok((jit_core::flat::gradients_from_flat(model, &flat, &device), Tensor::from_data([loss], &device), stop))
}

/// The most a config or `settings.json` may hold.
const MAX_SETTINGS_BYTES: u64 = 1 << 20;

/// Progress as log lines where there is no terminal for the bar (`indicatif` hides it there).
struct Log {
    on: bool,
    every: u64,
    first: u64,
    total: u64,
    started: Instant,
}

impl Log {
    fn new(on: bool, every: u64, first: u64, total: u64) -> Self {
        Self { on, every, first, total, started: Instant::now() }
    }

    /// Logs `step` if it is the first of this invocation, a multiple of `every`, or `last`.
    fn step(&self, step: u64, loss: f32, lr: f64, images_per_s: f64, last: bool) {
        if !self.on || !(step == self.first + 1 || step.is_multiple_of(self.every) || last) {
            return;
        }
        let done = (step - self.first) as f64;
        let eta = self.started.elapsed().as_secs_f64() / done * (self.total - step) as f64;
        let (h, m, s) = (eta as u64 / 3600, eta as u64 / 60 % 60, eta as u64 % 60);
        eprintln!(
            "step {step}/{} | loss {loss:.4} | lr {lr:.3e} | {images_per_s:.1} img/s | eta {h}:{m:02}:{s:02}",
            self.total
        );
    }
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
        None => format!(
            "No checkpoint was written yet (start again with a lower --lr, in another --out or after removing {}).",
            dir.path.display()
        ),
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

/// The newest checkpoint that loads completely, and its bytes (for the other ranks); unusable
/// newer ones are renamed `….unusable` (kept for inspection, never deleted) with a warning.
/// `(None, [])` when the run has no checkpoint yet.
fn resume_newest_intact(
    dir: &RunDir,
    r: &Resolved,
    device: &Device,
    limit: MemoryLimit,
) -> Result<(Option<TrainState<Jit>>, Vec<u8>)> {
    let found = dir.checkpoints()?;
    if found.is_empty() {
        // Checkpoints set aside by an earlier resume hold steps a fresh start would lose.
        let aside = std::fs::read_dir(&dir.path)
            .with_context(|| format!("cannot list {}", dir.path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".unusable"))
            .count();
        if aside > 0 {
            bail!(
                "no checkpoint in {} is usable ({aside} set aside as ….unusable); resuming would start again at step 0: rename a good one back, or start a new run with --out",
                dir.path.display()
            );
        }
        eprintln!("{} holds no checkpoint yet (stopped before the first one): starting at step 0", dir.path.display());
        return Ok((None, Vec::new()));
    }
    for f in found.iter().rev() {
        let header = crate::training::run_dir::read_header_meta(&f.path)?;
        if header.network != r.network {
            bail!("{} was trained with another network config than settings.json describes", f.path.display());
        }
        let bytes = std::fs::read(&f.path).map_err(|e| JitError::NotACheckpoint(e.to_string()));
        let attempt = bytes.and_then(|bytes| {
            TrainState::from_checkpoint(&bytes, r.optim.clone(), r.seed, device, limit).map(|(s, _)| (s, bytes))
        });
        match attempt {
            Ok((state, bytes)) => {
                eprintln!("resuming from {} (step {})", f.path.display(), state.step);
                return Ok((Some(state), bytes));
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
    let opts = GenerateOptions { seed: r.seed, sampler: r.sampler.clone(), labels, first_image: 0 };
    generate_grid(model, &r.diffusion, &opts, path, 2)
}
