//! `jit-native eval`: a sample-quality number for small datasets, with the classifier of
//! [`crate::science::classifier`]:
//!
//! - **FD-classifier**: the Fréchet distance between features of generated images and of real
//!   test images (FID's formula, with this classifier instead of Inception — not comparable to
//!   FID numbers);
//! - **class accuracy**: how often the classifier assigns a conditional sample to the class it
//!   was asked for.
//!
//! The same numbers for a held-out real split are the floor, and uniform noise images are a
//! sanity ceiling.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use jit_core::checkpoint::WeightCopy;
use jit_core::rng::PortableRng;
use serde::Serialize;

use crate::backend::BackendArgs;
use crate::data::DataSource;
use crate::generate::{GenerateOptions, generate};
use crate::model_file;
use crate::refuse;
use crate::science::classifier::{default_cache, features_and_accuracy, load_or_train, splits};
use crate::science::frechet::frechet_distance;

/// `eval` flags.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (omit to report only the real-data floor and the noise ceiling).
    pub checkpoint: Option<PathBuf>,
    /// Dataset (as for `train`): `fashion-mnist`, `idx:DIR` or `folder:DIR`.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: DataSource,
    /// Image size (default: the checkpoint's, else 32).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub image_size: Option<usize>,
    /// Generated images (and real images per split) [default: 1000; with --fid-inception, 50
    /// per class].
    #[arg(long)]
    pub count: Option<usize>,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Guidance scale (default: the checkpoint's).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value_t = WeightCopy::Ema1)]
    pub weights: WeightCopy,
    /// Classifier cache file (default: ~/.cache/jit-engine/classifier-<dataset>-<size>.mpk). A
    /// file given here that is not a classifier for these images is refused, never replaced.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Classifier training epochs (when not cached).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub classifier_epochs: usize,
    /// Write the report as JSON here (an existing file only with --force).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub fid: super::fid::FidArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub fd_classifier: f64,
    pub class_accuracy: f64,
}

/// Runs `eval`; prints a Markdown table (or, with `--fid-inception`, FID and IS).
pub fn run(a: EvalArgs) -> Result<Vec<Row>> {
    if a.fid.fid_inception.is_some() || a.fid.make_stats.is_some() {
        let (ckpt, steps) = (a.checkpoint.as_deref(), Some(a.steps));
        super::fid::run(&a.fid, ckpt, a.count, steps, a.cfg, a.weights, a.image_size, &a.backend)?;
        return Ok(Vec::new());
    }
    // The FID flags without the Inception network would be ignored by the classifier's report.
    for (given, flag) in [
        (a.fid.images.is_some(), "--images"),
        (a.fid.fid_stats.is_some(), "--fid-stats"),
        (a.fid.stats_out.is_some(), "--stats-out"),
    ] {
        if given {
            refuse!("{flag} is for FID and IS: add --fid-inception FILE (torch-fidelity's Inception weights)");
        }
    }
    let count = a.count.unwrap_or(1000);
    if count < 2 {
        refuse!("--count {count}: must be at least 2 (images per split, for a covariance)");
    }
    // Outputs are checked before any work.
    let inputs: Vec<&std::path::Path> = a.checkpoint.iter().chain(&a.classifier).map(PathBuf::as_path).collect();
    if let Some(json) = &a.json {
        crate::fsutil::check_output(json, &inputs, a.fid.force)?;
    }
    if let Some(cache) = &a.classifier {
        crate::fsutil::check_cache(cache)?;
    }
    let device = a.backend.device()?;
    let source = a.data.clone();
    let loaded = match &a.checkpoint {
        Some(p) => {
            let (model, meta) = model_file::load(p, a.weights, &device, a.backend.memory_limit())?;
            Some((model.for_sampling(a.backend.matmul_dtype(&device)?), meta))
        }
        None => None,
    };
    let size = a.image_size.or(loaded.as_ref().map(|(_, m)| m.network.input_size)).unwrap_or(32);
    let (train, test_a, test_b) = splits(&source, size)?;
    let (c, k) = (train.data.channels(), train.data.class_names().len());
    if let Some((_, meta)) = &loaded
        && (meta.network.in_channels != c || meta.network.input_size != size || meta.network.num_classes != k)
    {
        bail!(
            "the checkpoint makes {}×{}×{} images of {} classes but the dataset has {c}×{size}×{size} images of {k} classes",
            meta.network.in_channels,
            meta.network.input_size,
            meta.network.input_size,
            meta.network.num_classes
        );
    }
    // The classifier (weights, gradients, two AdamW moments) and four sets of images, f32.
    let pixels = (c * size * size) as u64;
    let need = (16 * pixels * 512).saturating_add(16 * pixels * count.min(1 << 20) as u64);
    a.backend.memory_limit().check_bytes("the classifier and its images (--image-size, --count)", need)?;
    let (cache, given) = match &a.classifier {
        Some(p) => (p.clone(), true),
        None => (default_cache(&source, size), false),
    };
    let clf = load_or_train(&cache, given, &train, a.classifier_epochs, &device)?;
    let shape = [c, size, size];
    let n = count.min(test_a.indices.len()).min(test_b.indices.len());
    if n < 2 {
        bail!("need at least 2 test images per split (have {})", test_a.indices.len().min(test_b.indices.len()));
    }
    let (xa, ya) = test_a.images(n)?;
    let (fa, _) = features_and_accuracy(&clf, &xa, &ya, shape, &device)?;
    let (xb, yb) = test_b.images(n)?;
    let (fb, acc_b) = features_and_accuracy(&clf, &xb, &yb, shape, &device)?;
    let mut rows = vec![Row {
        what: "real held-out (floor)".into(),
        fd_classifier: frechet_distance(&fb, &fa),
        class_accuracy: acc_b,
    }];
    let mut rng = PortableRng::new(3);
    let noise: Vec<f32> = (0..n * c * size * size).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let (fnz, acc_n) = features_and_accuracy(&clf, &noise, &ya, shape, &device)?;
    rows.push(Row {
        what: "uniform noise (ceiling)".into(),
        fd_classifier: frechet_distance(&fnz, &fa),
        class_accuracy: acc_n,
    });
    if let Some((model, meta)) = &loaded {
        let labels: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
        let sampler =
            jit_core::SamplerConfig { steps: a.steps, cfg: a.cfg.unwrap_or(meta.sampler.cfg), ..meta.sampler.clone() };
        let mut images = Vec::with_capacity(n * c * size * size);
        for chunk in labels.chunks(250) {
            let opts = GenerateOptions {
                seed: 1000 + images.len() as u64,
                sampler: sampler.clone(),
                labels: chunk.to_vec(),
                first_image: 0,
            };
            images.extend(generate(model, &meta.diffusion, &opts, |_| {})?);
        }
        let (fg, acc_g) = features_and_accuracy(&clf, &images, &labels, shape, &device)?;
        let name = a.checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        rows.push(Row {
            what: format!("generated ({name}, {} steps, cfg {})", sampler.steps, sampler.cfg),
            fd_classifier: frechet_distance(&fg, &fa),
            class_accuracy: acc_g,
        });
    }
    println!("| images (n = {n}) | FD-classifier ↓ | class accuracy ↑ |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {:.2} | {:.1}% |", r.what, r.fd_classifier, 100.0 * r.class_accuracy);
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&rows)?.as_bytes())
            .context("cannot write the report")?;
    }
    Ok(rows)
}
