//! `jit-native eval --fid-inception PTH …`: FID and Inception Score as the paper's evaluation
//! computes them (torch-fidelity's `inception-v3-compat` network and formulas), of a checkpoint's
//! samples (50 per class by default, labels `arange(K).repeat(count / K)` as the official
//! `engine_jit.py`), of a folder of PNGs, or — with `--make-stats` — the reference statistics of
//! a real dataset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jit_core::checkpoint::WeightCopy;
use jit_core::host::{HostTensor, to_rgb8};
use jit_core::rng::PortableRng;
use jit_core::{DiffusionConfig, Jit, SamplerConfig};

use crate::backend::BackendArgs;
use crate::data::DataSource;
use crate::fsutil::{check_output, write_atomic};
use crate::generate::{GenerateOptions, generate};
use crate::model_file;
use crate::refuse;
use crate::science::fid::{Statistics, fid, inception_score};

/// The Inception Score's splits (torch-fidelity's default): at least this many images are scored.
const IS_SPLITS: usize = 10;
use crate::science::inception::{self, CLASSES, FEATURES, Inception, Weights};

/// The flags of `eval` that measure FID and IS.
#[derive(Args, Debug, Clone)]
pub struct FidArgs {
    /// torch-fidelity's Inception weights (`weights-inception-2015-12-05-6726825d.pth`): FID and
    /// IS as the paper measures them, instead of the small-dataset classifier.
    #[arg(long, value_name = "PTH")]
    pub fid_inception: Option<PathBuf>,
    /// Reference statistics, a .npz with `mu` and `sigma` (the official `jit_in256_stats.npz`,
    /// or one written by `--make-stats`).
    #[arg(long, value_name = "NPZ")]
    pub fid_stats: Option<PathBuf>,
    /// Score the PNG images of this folder instead of sampling the checkpoint.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Write the statistics of this real dataset (`folder:DIR`, `fashion-mnist`, …) to
    /// `--stats-out` instead of scoring.
    #[arg(long, value_name = "DATA")]
    pub make_stats: Option<DataSource>,
    /// Where `--make-stats` writes its .npz.
    #[arg(long, value_name = "NPZ")]
    pub stats_out: Option<PathBuf>,
    /// Images per batch, for sampling and for the Inception network.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub fid_batch: usize,
    /// Noise seed of the samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Replace `--stats-out` (or `eval --json`) if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Features and logits gathered batch by batch.
#[derive(Default)]
struct Gathered {
    features: Vec<f32>,
    logits: Vec<f32>,
    count: usize,
}

impl Gathered {
    fn add(&mut self, net: &Inception, rgb: &[u8], n: usize, size: usize) -> Result<()> {
        let out = net.run(rgb, n, size, size)?;
        self.features.extend(out.features);
        self.logits.extend(out.logits_unbiased);
        self.count += n;
        Ok(())
    }
}

/// Loads torch-fidelity's Inception on `device` from its `.pth` (a zip), or from the same
/// tensors in a `.safetensors` file.
pub fn load_inception(path: &Path, device: &Device) -> Result<Inception> {
    let mut magic = [0u8; 4];
    let (mut file, _) = crate::regular::open_regular(path)?;
    std::io::Read::read(&mut file, &mut magic).with_context(|| format!("cannot read {}", path.display()))?;
    let tensors = if &magic == b"PK\x03\x04" {
        crate::pth::convert::read_state_dict(path).map_err(|e| crate::exit::refused(format!("{e:#}")))?
    } else {
        read_safetensors(path)?
    };
    Inception::new(Weights::new(tensors, device))
        .map_err(|e| crate::exit::refused(format!("{}: {e:#}", path.display())))
}

/// The f32 tensors of a `.safetensors` file.
fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = crate::fsutil::read_regular(path, 1 << 30, "weights file")?;
    let not =
        |e: String| crate::exit::refused(format!("{} is neither a .pth nor a .safetensors file ({e})", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| not(e.to_string()))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(not(format!("'{name}' is {:?}, not F32", view.dtype())));
            }
            let data =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
            Ok((name, HostTensor { shape: view.shape().to_vec(), data }))
        })
        .collect()
}

fn bar(n: usize, what: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(ProgressStyle::with_template(&format!(
        "{what} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}<{{eta_precise}}]"
    ))?);
    Ok(bar)
}

/// Runs the FID/IS evaluation; `checkpoint`, `count`, `steps`, `cfg`, `weights` and
/// `image_size` are `eval`'s own flags.
#[allow(clippy::too_many_arguments)]
pub fn run(
    f: &FidArgs,
    checkpoint: Option<&Path>,
    count: Option<usize>,
    steps: Option<usize>,
    cfg: Option<f64>,
    weights: WeightCopy,
    image_size: Option<usize>,
    backend: &BackendArgs,
) -> Result<()> {
    let started = Instant::now();
    let Some(weights_path) = &f.fid_inception else {
        refuse!(
            "FID and IS need torch-fidelity's Inception weights: --fid-inception weights-inception-2015-12-05-6726825d.pth"
        );
    };
    if let (Some(_), Some(out)) = (&f.make_stats, &f.stats_out) {
        check_output(out, &[weights_path], f.force)?;
    }
    let reference = match (&f.make_stats, &f.fid_stats) {
        (Some(_), _) => None,
        (None, Some(p)) => {
            let stats = Statistics::read(p)?;
            // Checked before any image is sampled or scored.
            if stats.mu.len() != FEATURES {
                refuse!(
                    "{} holds statistics of {} features; FID compares Inception's {FEATURES} pool features (write them with --make-stats)",
                    p.display(),
                    stats.mu.len()
                );
            }
            Some(stats)
        }
        (None, None) => {
            refuse!("give the reference statistics (--fid-stats NPZ), or write them with --make-stats DATA")
        }
    };
    let device = backend.device()?;
    backend
        .memory_limit()
        .check_bytes("the Inception's activations for one batch (--fid-batch)", inception::batch_bytes(f.fid_batch))?;
    let net = load_inception(weights_path, &device)?;
    let mut got = Gathered::default();
    if let Some(source) = &f.make_stats {
        let Some(out) = &f.stats_out else { refuse!("--make-stats needs --stats-out FILE.npz") };
        let size = image_size.unwrap_or(256);
        let data = source.open(size, 3, false)?;
        let n = count.unwrap_or(data.len()).min(data.len());
        if n < 2 {
            refuse!("--make-stats needs at least 2 images for a covariance ({n} given or in the dataset)");
        }
        let batch = (f.fid_batch as u64).saturating_mul(3 * 4 * (size * size) as u64);
        backend.memory_limit().check_bytes("a batch of real images (--fid-batch, --image-size)", batch)?;
        let bar = bar(n, "real images")?;
        let mut rng = PortableRng::new(0);
        for start in (0..n).step_by(f.fid_batch) {
            let end = (start + f.fid_batch).min(n);
            let mut pixels = Vec::with_capacity((end - start) * 3 * size * size);
            for i in start..end {
                pixels.extend(data.get(i, &mut rng)?.pixels);
            }
            got.add(&net, &to_rgb8(&pixels, 3, size), end - start, size)?;
            bar.set_position(end as u64);
        }
        bar.finish_and_clear();
        let stats = Statistics::of(&got.features, got.count, FEATURES);
        write_atomic(out, &stats.to_npz()?)?;
        println!("wrote the statistics of {n} images to {} ({:.1} s)", out.display(), started.elapsed().as_secs_f64());
        return Ok(());
    }
    if let Some(dir) = &f.images {
        score_folder(dir, &net, f.fid_batch, &mut got)?;
    } else if let Some(ckpt) = checkpoint {
        let (model, meta) = model_file::load(ckpt, weights, &device, backend.memory_limit())?;
        let model = model.for_sampling(backend.matmul_dtype(&device)?);
        let sampler = SamplerConfig {
            steps: steps.unwrap_or(meta.sampler.steps),
            cfg: cfg.unwrap_or(meta.sampler.cfg),
            ..meta.sampler.clone()
        };
        let n = count.unwrap_or(50 * meta.network.num_classes);
        backend.memory_limit().check(&meta.network, 2 * f.fid_batch)?;
        got = sample_features(&model, &meta.diffusion, &sampler, n, f.fid_batch, f.seed, &net, true)?;
    } else {
        refuse!("score a checkpoint (eval CKPT --fid-inception …) or a folder of PNGs (--images DIR)");
    }
    let stats = Statistics::of(&got.features, got.count, FEATURES);
    let reference = reference.expect("checked above");
    let score = fid(&stats, &reference)?;
    let (is_mean, is_std) = inception_score(&got.logits, got.count, CLASSES, IS_SPLITS)?;
    println!(
        "FID {score:.4} | IS {is_mean:.3} ± {is_std:.3} | {} images | {:.1} s",
        got.count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Samples `n` images of `model` (`n / K` per class, in class order, as the official
/// evaluation) in batches of `batch`, each image's noise from its place in `seed`'s stream, and
/// runs them through the Inception network.
#[allow(clippy::too_many_arguments)]
fn sample_features(
    model: &Jit,
    diffusion: &DiffusionConfig,
    sampler: &SamplerConfig,
    n: usize,
    batch: usize,
    seed: u64,
    net: &Inception,
    progress: bool,
) -> Result<Gathered> {
    let (k, size, channels) = (model.config.num_classes, model.config.input_size, model.config.in_channels);
    if n == 0 || !n.is_multiple_of(k) {
        refuse!(
            "--count {n} must be a positive multiple of the {k} classes (the evaluation samples count / classes per class)"
        );
    }
    sampler.validate()?;
    let labels: Vec<i64> = (0..k as i64).flat_map(|c| std::iter::repeat_n(c, n / k)).collect();
    let bar = if progress { bar(n, "sampling")? } else { ProgressBar::hidden() };
    let mut got = Gathered::default();
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let opts =
            GenerateOptions { seed, sampler: sampler.clone(), labels: labels[start..end].to_vec(), first_image: start };
        let images = generate(model, diffusion, &opts, |_| {})?;
        got.add(net, &to_rgb8(&images, channels, size), end - start, size)?;
        bar.set_position(end as u64);
    }
    bar.finish_and_clear();
    Ok(got)
}

/// FID against `reference` and IS (mean, std) of `n` samples of `model`: the online evaluation
/// `train --eval-every` logs.
pub fn score_model(
    model: &Jit,
    diffusion: &DiffusionConfig,
    sampler: &SamplerConfig,
    n: usize,
    net: &Inception,
    reference: &Statistics,
) -> Result<(f64, f64, f64)> {
    let got = sample_features(model, diffusion, sampler, n, 32, 0, net, false)?;
    let score = fid(&Statistics::of(&got.features, got.count, FEATURES), reference)?;
    let (mean, std) = inception_score(&got.logits, got.count, CLASSES, IS_SPLITS)?;
    Ok((score, mean, std))
}

/// The PNGs of `dir` (sorted by name, all of one size) through the network.
fn score_folder(dir: &Path, net: &Inception, batch: usize, got: &mut Gathered) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.len() < IS_SPLITS {
        refuse!(
            "{} holds {} .png images; FID and an Inception Score of {IS_SPLITS} splits need at least {IS_SPLITS}",
            dir.display(),
            files.len()
        );
    }
    let bar = bar(files.len(), "images")?;
    let mut size = None;
    for chunk in files.chunks(batch) {
        let mut rgb = Vec::new();
        for path in chunk {
            let (file, _) = crate::regular::open_regular(path)?;
            let img = image::ImageReader::with_format(std::io::BufReader::new(file), image::ImageFormat::Png)
                .decode()
                .with_context(|| format!("cannot decode {}", path.display()))?
                .to_rgb8();
            let (w, h) = img.dimensions();
            if w != h || *size.get_or_insert(w) != w {
                refuse!("{} is {w}×{h}; every image must be square and of one size", path.display());
            }
            rgb.extend_from_slice(img.as_raw());
        }
        got.add(net, &rgb, chunk.len(), size.unwrap_or(0) as usize)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::science::inception::tests::formula_weights;

    /// The golden network's weights, in the safetensors form `--fid-inception` also reads.
    fn write_formula_weights(path: &Path) {
        let weights: Vec<(String, Vec<usize>, Vec<u8>)> = formula_weights()
            .into_iter()
            .map(|(k, t)| (k, t.shape, t.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = weights
            .iter()
            .map(|(k, shape, bytes)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
    }

    #[test]
    fn training_logs_fid_and_is_every_eval_every_steps() {
        use clap::{Args, FromArgMatches};
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("inception.safetensors");
        write_formula_weights(&weights);
        let d = FEATURES;
        let reference = Statistics { mu: nalgebra::DVector::zeros(d), sigma: nalgebra::DMatrix::identity(d, d) };
        let stats = dir.path().join("ref.npz");
        std::fs::write(&stats, reference.to_npz().unwrap()).unwrap();
        let run = dir.path().join("run");
        let argv = [
            "train",
            "--backend",
            "cpu",
            "--image-size",
            "16",
            "--depth",
            "1",
            "--hidden-size",
            "16",
            "--num-heads",
            "1",
            "--in-context-len",
            "0",
            "--sample-every",
            "0",
            "--sample-steps",
            "2",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-count",
            "12",
        ]
        .map(String::from)
        .into_iter()
        .chain(["--fid-inception", weights.to_str().unwrap(), "--fid-stats", stats.to_str().unwrap()].map(String::from))
        .chain(["--out".to_string(), run.display().to_string()]);
        let matches = super::super::train::TrainArgs::augment_args(clap::Command::new("train")).get_matches_from(argv);
        let args = super::super::train::TrainArgs::from_arg_matches(&matches).unwrap();
        super::super::train::run(args, &matches).unwrap();
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let evals: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v.get("fid").is_some())
            .collect();
        assert_eq!(evals.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4], "{text}");
        for v in &evals {
            // Against N(0, I): FID ≈ Tr I = 2048 plus the features' spread and mean.
            assert!(v["fid"].as_f64().unwrap() > 1000.0 && v["is_mean"].as_f64().unwrap() >= 1.0, "{v}");
            assert_eq!(v["eval_images"], 12);
        }
    }

    #[test]
    fn statistics_of_a_folder_then_fid_and_is_of_png_images_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let wpath = dir.path().join("inception.safetensors");
        write_formula_weights(&wpath);
        // A dataset folder and a folder of PNGs, 12 images of 32×32 each.
        let (data, pngs) = (dir.path().join("data"), dir.path().join("pngs"));
        for (i, class) in ["a", "b", "c"].iter().cycle().take(12).enumerate() {
            std::fs::create_dir_all(data.join(class)).unwrap();
            std::fs::create_dir_all(&pngs).unwrap();
            let img =
                image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, (i * 20) as u8]));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
            img.save(pngs.join(format!("{i:02}.png"))).unwrap();
        }
        let stats = dir.path().join("stats.npz");
        let backend = BackendArgs {
            backend: crate::backend::BackendKind::Cpu,
            precision: crate::backend::Precision::F32,
            attention: crate::backend::Attention::Products,
            device_index: None,
            limit: crate::backend::LimitArgs { max_memory: 16.0 },
        };
        let mut f = FidArgs {
            fid_inception: Some(wpath.clone()),
            fid_stats: None,
            images: None,
            make_stats: Some(format!("folder:{}", data.display()).parse().unwrap()),
            stats_out: Some(stats.clone()),
            fid_batch: 5,
            seed: 0,
            force: false,
        };
        run(&f, None, None, None, None, WeightCopy::Ema1, Some(32), &backend).unwrap();
        let s = Statistics::read(&stats).unwrap();
        assert_eq!((s.mu.len(), s.sigma.nrows()), (FEATURES, FEATURES));
        // The same images as PNGs against their own statistics: FID ≈ 0.
        let e = run(&f, None, None, None, None, WeightCopy::Ema1, Some(32), &backend).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        f.make_stats = None;
        f.fid_stats = Some(stats.clone());
        f.images = Some(pngs.clone());
        run(&f, None, None, None, None, WeightCopy::Ema1, None, &backend).unwrap();
        // Fewer images than the Inception Score's splits, and statistics of another width, are
        // refused before any image is scored.
        let few = dir.path().join("few");
        std::fs::create_dir_all(&few).unwrap();
        for i in 0..3 {
            image::RgbImage::new(32, 32).save(few.join(format!("{i}.png"))).unwrap();
        }
        f.images = Some(few);
        let e = run(&f, None, None, None, None, WeightCopy::Ema1, None, &backend).unwrap_err().to_string();
        assert!(e.contains("3 .png images") && e.contains("at least 10"), "{e}");
        f.images = Some(pngs);
        let narrow = dir.path().join("narrow.npz");
        std::fs::write(&narrow, Statistics::of(&[0.5, 1.0, 2.0, 0.0, 1.5, 3.0], 2, 3).to_npz().unwrap()).unwrap();
        f.fid_stats = Some(narrow);
        let e = run(&f, None, None, None, None, WeightCopy::Ema1, None, &backend).unwrap_err().to_string();
        assert!(e.contains("statistics of 3 features"), "{e}");
        f.fid_stats = Some(stats.clone());
        // Files that are not weights are refused.
        for (file, needle) in [(stats, "not a torch.save checkpoint"), (data.join("a/0.png"), "neither a .pth nor")] {
            f.fid_inception = Some(file);
            let e = run(&f, None, None, None, None, WeightCopy::Ema1, None, &backend).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}
