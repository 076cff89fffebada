//! Every setting of a training run, in one struct that is at once the command line (clap), the
//! `--config FILE.toml` format and the run's `settings.json` (serde). Each default is written
//! once: in a `default_value_t` here, or in the core struct it names (`DiffusionConfig`,
//! `OptimConfig`, `SamplerConfig`); `TrainSettings::default()` is what an empty command line
//! parses to. Precedence: defaults < config file < flags given on the command line.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use jit_core::optim::{OptimConfig, Schedule};
use jit_core::{DiffusionConfig, JitConfig, Method, SamplerConfig, Target};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::data::{DataSource, Dataset};

/// Settings of a run. On the command line each is a flag; a TOML config may hold any of them.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    /// Dataset: `shapes` (built in), `fashion-mnist`, `idx:DIR` or `folder:DIR`.
    #[arg(long, default_value = "shapes")]
    pub data: DataSource,
    /// Model preset: JiT-B/16, B/32, L/16, L/32, H/16, H/32, or the small JiT-T/4, T/8, S/4, S/8.
    #[arg(long, default_value = "JiT-T/4")]
    pub model: String,
    /// Image size in pixels (the dataset is cropped/resized/padded to it).
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
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
    /// Override the SwiGLU width factor.
    #[arg(long)]
    pub mlp_ratio: Option<f64>,
    /// Override the attention dropout in the middle half of the blocks.
    #[arg(long)]
    pub attn_drop: Option<f64>,
    /// Override the projection dropout in the middle half of the blocks.
    #[arg(long)]
    pub proj_drop: Option<f64>,
    /// Logit-normal mean of t.
    #[arg(long, allow_hyphen_values = true, default_value_t = DiffusionConfig::default().p_mean)]
    pub p_mean: f64,
    /// Logit-normal std of t.
    #[arg(long, default_value_t = DiffusionConfig::default().p_std)]
    pub p_std: f64,
    /// Noise scale (1 at 256 px, 2 at 512, 4 at 1024).
    #[arg(long, default_value_t = DiffusionConfig::default().noise_scale)]
    pub noise_scale: f64,
    /// Clamp of 1 − t in the velocity.
    #[arg(long, default_value_t = DiffusionConfig::default().t_eps)]
    pub t_eps: f64,
    /// Probability of the null label (for CFG).
    #[arg(long, default_value_t = DiffusionConfig::default().label_drop_prob)]
    pub label_drop_prob: f64,
    /// Network prediction target.
    #[arg(long, value_enum, default_value_t = DiffusionConfig::default().prediction)]
    pub prediction: Target,
    /// Loss space.
    #[arg(long, value_enum, default_value_t = DiffusionConfig::default().loss)]
    pub loss: Target,
    /// Base learning rate; lr = blr·batch/256 (the reference's is 5e-5; ours suits small CPU runs).
    #[arg(long, default_value_t = 6.4e-3)]
    pub blr: f64,
    /// Absolute learning rate (overrides --blr).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Final learning rate of the cosine schedule.
    #[arg(long, default_value_t = OptimConfig::default().min_lr)]
    pub min_lr: f64,
    /// Warm-up steps. [default: 5% of the steps]
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Warm-up in epochs (reference: 5); overrides --warmup-steps.
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Schedule after warm-up.
    #[arg(long, value_enum, default_value_t = OptimConfig::default().schedule)]
    pub schedule: Schedule,
    /// AdamW weight decay (never on biases and 1-D parameters).
    #[arg(long, default_value_t = OptimConfig::default().weight_decay)]
    pub weight_decay: f64,
    /// First EMA decay (used for sampling; reference 0.9999).
    #[arg(long, default_value_t = 0.999)]
    pub ema_decay1: f64,
    /// Second EMA decay (reference 0.9996).
    #[arg(long, default_value_t = 0.9999)]
    pub ema_decay2: f64,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 5000)]
    pub steps: u64,
    /// Epochs (overrides --steps).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Seed of initialisation, data order and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Write an EMA sample grid every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    pub sample_every: u64,
    /// Checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    /// Sampler steps for the grids.
    #[arg(long, default_value_t = SamplerConfig::default().steps)]
    pub sample_steps: usize,
    /// CFG scale for the grids (and the checkpoint's default).
    #[arg(long, default_value_t = SamplerConfig::default().cfg)]
    pub cfg: f64,
    /// Images in each sample grid. [default: 2 per class, at most 32]
    #[arg(long)]
    pub grid_images: Option<usize>,
    /// Random horizontal flips (image folders).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
}

impl Default for TrainSettings {
    /// What an empty command line gives: the defaults written in the `#[arg]` attributes.
    fn default() -> Self {
        let matches = Self::augment_args(clap::Command::new("defaults")).get_matches_from(["defaults"]);
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Settings that may change when a run is resumed; all others define the run and are fixed.
pub const RESUMABLE: &[&str] = &[
    "blr",
    "lr",
    "min_lr",
    "warmup_steps",
    "warmup_epochs",
    "schedule",
    "steps",
    "epochs",
    "checkpoint_every",
    "sample_every",
    "keep",
    "sample_steps",
    "cfg",
    "grid_images",
];

/// The settings fields given explicitly on the command line (`matches` of `train`).
pub fn given_on_command_line(matches: &ArgMatches) -> Vec<String> {
    let fields = serde_json::to_value(TrainSettings::default()).expect("serialisable");
    let fields = fields.as_object().expect("a struct");
    matches
        .ids()
        .map(|id| id.as_str().to_string())
        .filter(|id| fields.contains_key(id) && matches.value_source(id) == Some(ValueSource::CommandLine))
        .collect()
}

/// `base` with the fields named in `given` taken from `flags`.
pub fn overlay(base: &TrainSettings, flags: &TrainSettings, given: &[String]) -> Result<TrainSettings> {
    let mut merged = to_map(base);
    let flags = to_map(flags);
    for key in given {
        merged.insert(key.clone(), flags[key].clone());
    }
    Ok(serde_json::from_value(Value::Object(merged))?)
}

fn to_map(s: &TrainSettings) -> Map<String, Value> {
    match serde_json::to_value(s).expect("serialisable") {
        Value::Object(m) => m,
        _ => unreachable!("a struct serialises to an object"),
    }
}

/// Reads a `--config` TOML file (unknown keys are errors naming them).
pub fn from_toml(text: &str) -> Result<TrainSettings> {
    toml::from_str(text).context("not a valid settings file")
}

/// Reads a run's `settings.json`. Files written before every setting had a concrete default
/// hold `null` for unset ones: those take today's defaults, which are the same values.
pub fn from_settings_json(text: &str) -> Result<TrainSettings> {
    let mut value: Value = serde_json::from_str(text).context("settings.json is not JSON")?;
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    serde_json::from_value(value).context("settings.json does not hold valid settings")
}

/// On `--resume`: the saved settings with the resumable flags applied; any other flag is an
/// error that says why and what to do instead.
pub fn for_resume(saved: &TrainSettings, flags: &TrainSettings, given: &[String]) -> Result<TrainSettings> {
    if let Some(fixed) = given.iter().find(|k| !RESUMABLE.contains(&k.as_str())) {
        let flag = fixed.replace('_', "-");
        bail!(
            "--{flag} cannot change when resuming (it defines the run); start a new run with --out, or leave it out (only {} may change)",
            RESUMABLE.iter().map(|k| format!("--{}", k.replace('_', "-"))).collect::<Vec<_>>().join(", ")
        );
    }
    let mut given = given.to_vec();
    // --steps replaces --epochs (and the other way round), as both set the length.
    let mut flags = flags.clone();
    if given.iter().any(|k| k == "steps") && !given.iter().any(|k| k == "epochs") {
        flags.epochs = None;
        given.push("epochs".into());
    }
    overlay(saved, &flags, &given)
}

/// Settings resolved to concrete values (stored in each checkpoint's metadata).
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

/// Opens the dataset and resolves every setting to a concrete value.
pub fn resolve(s: &TrainSettings) -> Result<(Resolved, Arc<dyn Dataset>)> {
    let channels = s.channels.unwrap_or(s.data.natural_channels());
    let dataset: Arc<dyn Dataset> = Arc::from(s.data.open(s.image_size, channels, s.flip)?);
    let num_classes = dataset.class_names().len();
    let mut net = JitConfig::preset(&s.model, s.image_size, dataset.channels(), num_classes)?;
    macro_rules! set_some {
        ($($f:ident),*) => { $( if let Some(v) = s.$f { net.$f = v; } )* };
    }
    set_some!(
        patch_size,
        hidden_size,
        depth,
        num_heads,
        bottleneck_dim,
        in_context_len,
        in_context_start,
        mlp_ratio,
        attn_drop,
        proj_drop
    );
    if net.in_context_len > 0 && net.in_context_start >= net.depth && s.in_context_start.is_none() {
        net.in_context_start = net.depth / 2;
    }
    net.validate()?;
    let diffusion = DiffusionConfig {
        p_mean: s.p_mean,
        p_std: s.p_std,
        noise_scale: s.noise_scale,
        t_eps: s.t_eps,
        label_drop_prob: s.label_drop_prob,
        prediction: s.prediction,
        loss: s.loss,
    };
    diffusion.validate()?;
    if s.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let steps_per_epoch = (dataset.len() as f64 / s.batch_size as f64).max(1.0);
    let steps = match s.epochs {
        Some(e) if e.is_finite() && e > 0.0 => (e * steps_per_epoch).ceil() as u64,
        Some(e) => bail!("--epochs {e} must be a positive number"),
        None => s.steps,
    };
    if steps == 0 {
        bail!("--steps/--epochs must give at least one step");
    }
    let warmup_steps = match s.warmup_epochs {
        Some(e) if e.is_finite() && e >= 0.0 => (e * steps_per_epoch).round() as u64,
        Some(e) => bail!("--warmup-epochs {e} must be zero or positive"),
        None => s.warmup_steps.unwrap_or(steps / 20),
    };
    let optim = OptimConfig {
        blr: s.blr,
        lr: s.lr,
        min_lr: s.min_lr,
        weight_decay: s.weight_decay,
        warmup_steps,
        total_steps: steps,
        schedule: s.schedule,
        ema_decays: (s.ema_decay1, s.ema_decay2),
        ..OptimConfig::default()
    };
    let lr = optim.peak_lr(s.batch_size);
    if !(lr.is_finite() && lr > 0.0) {
        bail!("the learning rate {lr} must be a positive number (--lr or --blr)");
    }
    let sampler = SamplerConfig { method: Method::Heun, steps: s.sample_steps, cfg: s.cfg, ..SamplerConfig::default() };
    sampler.validate()?;
    let resolved = Resolved {
        data: s.data.clone(),
        network: net,
        diffusion,
        optim,
        sampler,
        batch_size: s.batch_size,
        steps,
        seed: s.seed,
        checkpoint_every: s.checkpoint_every.max(1),
        sample_every: s.sample_every,
        keep: s.keep.max(1),
        grid_images: s.grid_images.unwrap_or((2 * num_classes).min(32)).clamp(1, 1024),
        flip: s.flip,
        class_names: dataset.class_names().to_vec(),
    };
    Ok((resolved, dataset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_core_structs_and_the_flags() {
        let d = TrainSettings::default();
        assert_eq!(d.p_mean, DiffusionConfig::default().p_mean);
        assert_eq!(d.prediction, Target::X);
        assert_eq!(d.loss, Target::V);
        assert_eq!(d.sample_steps, SamplerConfig::default().steps);
        assert_eq!(d.model, "JiT-T/4");
        assert_eq!(d.data, DataSource::Shapes);
        assert!(d.flip);
    }

    #[test]
    fn config_files_fill_gaps_and_flags_win() {
        let file = from_toml("steps = 7\nlr = 0.01\nprediction = \"eps\"\n").unwrap();
        assert_eq!((file.steps, file.lr, file.prediction, file.batch_size), (7, Some(0.01), Target::Eps, 32));
        let flags = TrainSettings { steps: 9, ..TrainSettings::default() };
        let merged = overlay(&file, &flags, &["steps".into()]).unwrap();
        assert_eq!((merged.steps, merged.lr, merged.prediction), (9, Some(0.01), Target::Eps));
        assert!(from_toml("stepz = 7").unwrap_err().chain().any(|e| e.to_string().contains("stepz")));
    }

    #[test]
    fn resume_applies_schedule_flags_and_refuses_the_rest() {
        let saved = TrainSettings { epochs: Some(2.0), ..TrainSettings::default() };
        let flags = TrainSettings { lr: Some(1e-4), steps: 99, ..TrainSettings::default() };
        let r = for_resume(&saved, &flags, &["lr".into(), "steps".into()]).unwrap();
        assert_eq!((r.lr, r.steps, r.epochs), (Some(1e-4), 99, None));
        let e = for_resume(&saved, &flags, &["hidden_size".into()]).unwrap_err().to_string();
        assert!(e.contains("--hidden-size cannot change"), "{e}");
    }

    #[test]
    fn old_settings_json_with_nulls_still_reads() {
        let s = from_settings_json(r#"{"data": "shapes", "model": null, "steps": 40, "lr": 0.002}"#).unwrap();
        assert_eq!((s.model.as_str(), s.steps, s.lr), ("JiT-T/4", 40, Some(0.002)));
    }
}
