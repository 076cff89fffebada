//! Every setting of a training run, in one struct that is at once the command line (clap), the
//! `--config FILE.toml` format and the run's `settings.json` (serde). Each default is written
//! once: in a `default_value_t` here, or in the core struct it names (`DiffusionConfig`,
//! `OptimConfig`, `SamplerConfig`); `TrainSettings::default()` is what an empty command line
//! parses to. Precedence: defaults < config file < flags given on the command line.

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::exit::refused;
use crate::refuse;
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
    /// Images per step and process: the global batch is this × the processes (mpirun -np N).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Processes the run was started or last resumed with (the global batch, `batch_size` ×
    /// `ranks`, defines the run; a resume with another number of processes splits it anew).
    #[arg(skip = 1usize)]
    pub ranks: usize,
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

impl TrainSettings {
    /// Checks every number where it enters (flags, a TOML file, `settings.json`, and again
    /// after they are merged): finite and in range, naming the flag. NaN and infinities would
    /// otherwise become JSON `null` when settings are merged and saved, and silently fall back
    /// to a default.
    pub fn validate(&self) -> Result<()> {
        fn real(flag: &str, v: f64, ok: bool, rule: &str) -> Result<()> {
            if !(v.is_finite() && ok) {
                refuse!("--{flag} {v}: {rule}");
            }
            Ok(())
        }
        let unit = |v: f64| (0.0..1.0).contains(&v);
        if let Some(v) = self.mlp_ratio {
            real("mlp-ratio", v, v > 0.0 && v <= 64.0, "must be a number in (0, 64]")?;
        }
        for (flag, v) in [("attn-drop", self.attn_drop), ("proj-drop", self.proj_drop)] {
            if let Some(v) = v {
                real(flag, v, unit(v), "must be a probability in [0, 1)")?;
            }
        }
        real("p-mean", self.p_mean, true, "must be a finite number")?;
        real("p-std", self.p_std, self.p_std >= 0.0, "must be zero or positive")?;
        real("noise-scale", self.noise_scale, self.noise_scale > 0.0, "must be positive")?;
        real("t-eps", self.t_eps, self.t_eps > 0.0 && self.t_eps <= 1.0, "must be in (0, 1]")?;
        real(
            "label-drop-prob",
            self.label_drop_prob,
            (0.0..=1.0).contains(&self.label_drop_prob),
            "must be in [0, 1]",
        )?;
        real("blr", self.blr, self.blr > 0.0, "must be positive")?;
        if let Some(v) = self.lr {
            real("lr", v, v > 0.0, "must be positive")?;
        }
        real("min-lr", self.min_lr, self.min_lr >= 0.0, "must be zero or positive")?;
        if let Some(v) = self.warmup_epochs {
            real("warmup-epochs", v, v >= 0.0, "must be zero or positive")?;
        }
        real("weight-decay", self.weight_decay, self.weight_decay >= 0.0, "must be zero or positive")?;
        real("ema-decay1", self.ema_decay1, unit(self.ema_decay1), "must be in [0, 1) (the reference's is 0.9999)")?;
        real("ema-decay2", self.ema_decay2, unit(self.ema_decay2), "must be in [0, 1) (the reference's is 0.9996)")?;
        if let Some(v) = self.epochs {
            real("epochs", v, v > 0.0 && v <= 1e9, "must be a positive number of epochs")?;
        }
        real("cfg", self.cfg, self.cfg >= 0.0, "must be zero or positive (1: no guidance)")?;
        for (flag, v, min) in [
            ("image-size", self.image_size, 1),
            ("batch-size", self.batch_size, 1),
            ("keep", self.keep, 1),
            ("sample-steps", self.sample_steps, 1),
            ("ranks", self.ranks, 1),
        ] {
            if v < min {
                refuse!("--{flag} {v}: must be at least {min}");
            }
        }
        for (flag, v) in [("steps", self.steps), ("checkpoint-every", self.checkpoint_every)] {
            if v == 0 {
                refuse!("--{flag} 0: must be at least 1");
            }
        }
        if let Some(c) = self.channels.filter(|c| !(1..=4).contains(c)) {
            refuse!("--channels {c}: must be 1 to 4");
        }
        if let Some(g) = self.grid_images.filter(|g| !(1..=1024).contains(g)) {
            refuse!("--grid-images {g}: must be 1 to 1024");
        }
        Ok(())
    }
}

/// Settings every `settings.json` holds, whatever version wrote it.
const DEFINING: &[&str] = &["data", "model", "image_size", "batch_size", "seed"];

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
    base.validate()?;
    flags.validate()?;
    let mut merged = to_map(base);
    let flags = to_map(flags);
    for key in given {
        merged.insert(key.clone(), flags[key].clone());
    }
    let merged: TrainSettings = serde_json::from_value(Value::Object(merged))?;
    merged.validate()?;
    Ok(merged)
}

fn to_map(s: &TrainSettings) -> Map<String, Value> {
    match serde_json::to_value(s).expect("serialisable") {
        Value::Object(m) => m,
        _ => unreachable!("a struct serialises to an object"),
    }
}

/// Reads a `--config` TOML file (unknown keys are errors naming them).
pub fn from_toml(text: &str) -> Result<TrainSettings> {
    let settings: TrainSettings =
        toml::from_str(text).map_err(|e| refused(format!("not a valid settings file: {e}")))?;
    settings.validate()?;
    Ok(settings)
}

/// Reads a run's `settings.json`. Files written before every setting had a concrete default
/// hold `null` for unset ones: those take today's defaults, which are the same values.
pub fn from_settings_json(text: &str) -> Result<TrainSettings> {
    let mut value: Value = serde_json::from_str(text).context("settings.json is not JSON")?;
    let Value::Object(map) = &mut value else { refuse!("settings.json does not hold a JSON object of settings") };
    // What defines a run, written by every version (an earlier one wrote null for a default): a
    // file without it would resume with defaults in its place.
    let missing: Vec<&str> = DEFINING.iter().copied().filter(|k| !map.contains_key(*k)).collect();
    if !missing.is_empty() {
        refuse!(
            "settings.json lacks {}: it is not the file this run wrote (restore it, or start a new run with --out)",
            missing.join(", ")
        );
    }
    map.retain(|_, v| !v.is_null());
    let settings: TrainSettings = serde_json::from_value(value)
        .map_err(|e| refused(format!("settings.json does not hold valid settings: {e}")))?;
    settings.validate()?;
    Ok(settings)
}

/// On `--resume`: the saved settings with the resumable flags applied; any other flag is an
/// error that says why and what to do instead.
pub fn for_resume(saved: &TrainSettings, flags: &TrainSettings, given: &[String]) -> Result<TrainSettings> {
    if let Some(fixed) = given.iter().find(|k| !RESUMABLE.contains(&k.as_str())) {
        let flag = fixed.replace('_', "-");
        refuse!(
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

/// The settings of a resumed run for `ranks` processes: the global batch stays, split anew.
pub fn for_ranks(mut s: TrainSettings, ranks: usize) -> Result<TrainSettings> {
    let global = s.batch_size * s.ranks;
    if !global.is_multiple_of(ranks) {
        refuse!(
            "the run's global batch of {global} images ({} per process × {}) does not split over {ranks} processes; resume with a number of processes that divides {global}",
            s.batch_size,
            s.ranks
        );
    }
    s.batch_size = global / ranks;
    s.ranks = ranks;
    Ok(s)
}

/// Settings resolved to concrete values (stored in each checkpoint's metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resolved {
    pub data: DataSource,
    pub network: JitConfig,
    pub diffusion: DiffusionConfig,
    pub optim: OptimConfig,
    pub sampler: SamplerConfig,
    /// Images per step in this process.
    pub batch_size: usize,
    /// Images per step over all processes.
    pub global_batch: usize,
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
    s.validate()?;
    // The preset's sizes are validated after the overrides: T/4 does not fit 1024 px, T/16 does.
    let mut net = JitConfig::preset_unchecked(&s.model, s.image_size, dataset.channels(), num_classes)?;
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
    let global_batch = s.batch_size.checked_mul(s.ranks).context("--batch-size × processes overflows")?;
    let steps_per_epoch = (dataset.len() as f64 / global_batch as f64).max(1.0);
    let steps = match s.epochs {
        Some(e) => (e * steps_per_epoch).ceil().min(u64::MAX as f64) as u64,
        None => s.steps,
    };
    if steps == 0 {
        bail!("--steps/--epochs must give at least one step");
    }
    let warmup_steps = match s.warmup_epochs {
        Some(e) => (e * steps_per_epoch).round().min(u64::MAX as f64) as u64,
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
    let lr = optim.peak_lr(global_batch);
    if !(lr.is_finite() && lr > 0.0) {
        refuse!("the learning rate {lr} must be a positive number (--lr or --blr)");
    }
    if optim.min_lr > lr {
        refuse!("--min-lr {} is above the peak learning rate {lr:.3e}; give a smaller --min-lr", optim.min_lr);
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
        global_batch,
        steps,
        seed: s.seed,
        checkpoint_every: s.checkpoint_every,
        sample_every: s.sample_every,
        keep: s.keep,
        grid_images: s.grid_images.unwrap_or((2 * num_classes).min(32)),
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
    fn every_number_is_checked_where_it_enters_and_named() {
        for (toml, flag) in [
            ("lr = nan", "--lr NaN"),
            ("epochs = inf", "--epochs inf"),
            ("ema_decay1 = 2.0", "--ema-decay1 2"),
            ("ema_decay2 = -0.5", "--ema-decay2 -0.5"),
            ("min_lr = -1e-4", "--min-lr -0.0001"),
            ("checkpoint_every = 0", "--checkpoint-every 0"),
            ("mlp_ratio = nan", "--mlp-ratio NaN"),
            ("attn_drop = 1.0", "--attn-drop 1"),
            ("warmup_epochs = -inf", "--warmup-epochs -inf"),
            ("keep = 0", "--keep 0"),
        ] {
            let e = format!("{:#}", from_toml(toml).unwrap_err());
            assert!(e.contains(flag), "{toml}: {e}");
        }
        // Flags: a NaN given on the command line never reaches the JSON merge.
        let flags = TrainSettings { lr: Some(f64::NAN), ..TrainSettings::default() };
        let e = overlay(&TrainSettings::default(), &flags, &["lr".into()]).unwrap_err().to_string();
        assert!(e.contains("--lr NaN"), "{e}");
        let e = from_settings_json(
            r#"{"blr": -1.0, "data": "shapes", "model": "JiT-T/4", "image_size": 32, "batch_size": 8, "seed": 0}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--blr -1"), "{e}");
        TrainSettings::default().validate().unwrap();
    }

    #[test]
    fn a_preset_too_big_for_the_image_may_be_fixed_by_overrides() {
        let s = TrainSettings { image_size: 1024, patch_size: Some(16), ..TrainSettings::default() };
        let (r, _) = resolve(&s).unwrap();
        assert_eq!((r.network.input_size, r.network.patch_size), (1024, 16));
        let s = TrainSettings { image_size: 1024, ..TrainSettings::default() };
        assert!(resolve(&s).is_err());
        let s = TrainSettings { min_lr: 1.0, ..TrainSettings::default() };
        assert!(resolve(&s).err().expect("refused").to_string().contains("--min-lr"));
    }

    #[test]
    fn a_resume_keeps_the_global_batch_over_any_number_of_processes() {
        let two = TrainSettings { batch_size: 6, ranks: 2, ..TrainSettings::default() };
        let one = for_ranks(two.clone(), 1).unwrap();
        assert_eq!((one.batch_size, one.ranks), (12, 1));
        assert_eq!(for_ranks(one, 3).unwrap().batch_size, 4);
        let e = for_ranks(two, 5).unwrap_err().to_string();
        assert!(e.contains("global batch of 12") && e.contains("5 processes"), "{e}");
    }

    #[test]
    fn old_settings_json_with_nulls_still_reads() {
        let defining = r#""image_size": 32, "batch_size": 8, "seed": null"#;
        let text = format!(r#"{{"data": "shapes", "model": null, "steps": 40, "lr": 0.002, {defining}}}"#);
        let s = from_settings_json(&text).unwrap();
        assert_eq!((s.model.as_str(), s.steps, s.lr), ("JiT-T/4", 40, Some(0.002)));
        // A file without what defines a run, or not an object, is refused.
        for bad in ["{}", "[]", r#"{"data": "shapes"}"#] {
            let e = from_settings_json(bad).unwrap_err().to_string();
            assert!(e.contains("settings.json"), "{bad}: {e}");
        }
        let e = from_settings_json(r#"{"data": "shapes", "model": "JiT-T/4"}"#).unwrap_err().to_string();
        assert!(e.contains("lacks image_size, batch_size, seed"), "{e}");
    }
}
