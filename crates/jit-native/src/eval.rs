//! `jit-native eval`: a sample-quality number for small datasets, where FID's Inception network
//! is not available. A small classifier is trained once on the dataset's training split (with
//! our engine; cached in a file); then, on its 128-d penultimate features:
//!
//! - **FD-classifier**: the Fréchet distance between features of generated images and of real
//!   test images (FID's formula, with this classifier instead of Inception — not comparable to
//!   FID numbers);
//! - **class accuracy**: how often the classifier assigns a conditional sample to the class it
//!   was asked for.
//!
//! The same numbers for a held-out real split are the floor, and uniform noise images are a
//! sanity ceiling.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};
use clap::Args;
use jit_core::rng::PortableRng;
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::Serialize;

use crate::backend::BackendArgs;
use crate::ckpt::{self, Weights};
use crate::data::idx::IdxDataset;
use crate::data::{DataSource, Dataset};
use crate::generate::{GenerateOptions, generate};

/// Feature width of the classifier.
pub const FEATURES: usize = 128;

/// An MLP classifier over pixels: `[C·H·W] → 512 → 128 (features) → K`.
#[derive(Module, Debug)]
pub struct Classifier {
    pub fc1: Linear,
    pub fc2: Linear,
    pub head: Linear,
}

impl Classifier {
    pub fn new(inputs: usize, classes: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(inputs, 512).init(device),
            fc2: LinearConfig::new(512, FEATURES).init(device),
            head: LinearConfig::new(FEATURES, classes).init(device),
        }
    }
    /// Images `[B, C, H, W]` → features `[B, 128]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, ..] = x.dims();
        silu(self.fc2.forward(silu(self.fc1.forward(x.reshape([b as i64, -1])))))
    }
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}

/// `eval` flags.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (omit to report only the real-data floor and the noise ceiling).
    pub checkpoint: Option<PathBuf>,
    /// Dataset (as for `train`): `fashion-mnist`, `idx:DIR` or `folder:DIR`.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Image size (default: the checkpoint's, else 32).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Generated images (and real images per split).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Sampler steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Guidance scale (default: the checkpoint's).
    #[arg(long)]
    pub cfg: Option<f64>,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value_t = Weights::Ema1)]
    pub weights: Weights,
    /// Classifier cache file (default: ~/.cache/jit-engine/classifier-<dataset>-<size>.mpk).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Classifier training epochs (when not cached).
    #[arg(long, default_value_t = 3)]
    pub classifier_epochs: usize,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
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

/// Fréchet distance between two feature sets (rows are samples):
/// `‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁^½ Σ₂ Σ₁^½)^½`.
pub fn frechet_distance(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let stats = |m: &DMatrix<f64>| {
        let n = m.nrows() as f64;
        let mu: DVector<f64> = m.row_mean().transpose();
        let centered = DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] - mu[j]);
        let cov = centered.transpose() * &centered / (n - 1.0).max(1.0);
        (mu, cov)
    };
    let (mu1, s1) = stats(a);
    let (mu2, s2) = stats(b);
    let sqrt_psd = |m: DMatrix<f64>| {
        let e = SymmetricEigen::new(m);
        let d = DMatrix::from_diagonal(&e.eigenvalues.map(|v| v.max(0.0).sqrt()));
        &e.eigenvectors * d * e.eigenvectors.transpose()
    };
    let s1h = sqrt_psd(s1.clone());
    let inner = &s1h * &s2 * &s1h;
    let inner = (&inner + inner.transpose()) * 0.5;
    let tr_sqrt: f64 = SymmetricEigen::new(inner).eigenvalues.iter().map(|v| v.max(0.0).sqrt()).sum();
    ((mu1 - mu2).norm_squared() + s1.trace() + s2.trace() - 2.0 * tr_sqrt).max(0.0)
}

struct Split {
    data: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Split {
    fn images(&self, n: usize) -> Result<(Vec<f32>, Vec<i64>)> {
        let mut rng = PortableRng::new(0);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for &i in self.indices.iter().take(n) {
            let s = self.data.get(i, &mut rng)?;
            x.extend(s.pixels);
            y.push(s.label as i64);
        }
        Ok((x, y))
    }
}

/// Train split for the classifier, and two disjoint real test halves (reference and floor).
fn splits(source: &DataSource, size: usize) -> Result<(Split, Split, Split)> {
    match source {
        DataSource::Idx { dir } => {
            let train: Arc<dyn Dataset> = Arc::new(IdxDataset::open(dir, "train", size)?);
            let test: Arc<dyn Dataset> = Arc::new(IdxDataset::open(dir, "test", size)?);
            let n = test.len();
            let train_idx = (0..train.len()).collect();
            Ok((
                Split { data: train, indices: train_idx },
                Split { data: test.clone(), indices: (0..n).step_by(2).collect() },
                Split { data: test, indices: (1..n).step_by(2).collect() },
            ))
        }
        DataSource::Folder { .. } => {
            let data: Arc<dyn Dataset> = Arc::from(source.open(size, 3, false)?);
            let n = data.len();
            // every 5th image is held out (and never seen by the classifier), alternating halves
            let train = (0..n).filter(|i| i % 5 != 0).collect();
            let a = (0..n).filter(|i| i % 10 == 0).collect();
            let b = (0..n).filter(|i| i % 10 == 5).collect();
            Ok((Split { data: data.clone(), indices: train }, Split { data: data.clone(), indices: a }, Split { data, indices: b }))
        }
        DataSource::Shapes => {
            let data: Arc<dyn Dataset> = Arc::from(source.open(size, 3, false)?);
            let n = data.len();
            Ok((
                Split { data: data.clone(), indices: (0..n - 4000).collect() },
                Split { data: data.clone(), indices: (n - 4000..n - 2000).collect() },
                Split { data, indices: (n - 2000..n).collect() },
            ))
        }
    }
}

fn train_classifier(split: &Split, epochs: usize, device: &Device) -> Result<Classifier> {
    let d = &split.data;
    let (c, s, k) = (d.channels(), d.size(), d.class_names().len());
    let ad = device.clone().autodiff();
    ad.seed(0);
    let mut model = Classifier::new(c * s * s, k, &ad);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let batch = 128;
    let mut rng = PortableRng::new(1);
    let mut order = split.indices.clone();
    for epoch in 0..epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let mut last = 0f32;
        for chunk in order.chunks(batch) {
            let (x, y) = Split { data: d.clone(), indices: chunk.to_vec() }.images(chunk.len())?;
            let n = y.len();
            let x = Tensor::<4>::from_data(TensorData::new(x, [n, c, s, s]), &ad);
            let y = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), &ad);
            let loss = loss_fn.forward(model.logits(x), y);
            last = loss.clone().into_scalar();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
        eprintln!("classifier epoch {}/{epochs}: loss {last:.4}", epoch + 1);
    }
    Ok(model.valid())
}

fn features_and_accuracy(model: &Classifier, x: &[f32], labels: &[i64], shape: [usize; 3], device: &Device) -> Result<(DMatrix<f64>, f64)> {
    let n = labels.len();
    let [c, s, _] = shape;
    let per = c * s * s;
    let mut feats = Vec::with_capacity(n * FEATURES);
    let mut correct = 0usize;
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        let xb = Tensor::<4>::from_data(TensorData::new(x[start * per..end * per].to_vec(), [end - start, c, s, s]), device);
        let f = model.features(xb);
        let pred: Vec<i64> = model.head.forward(f.clone()).argmax(1).into_data().convert::<i64>().try_into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        correct += pred.iter().zip(&labels[start..end]).filter(|(p, l)| p == l).count();
        feats.extend(f.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    let m = DMatrix::from_row_iterator(n, FEATURES, feats.into_iter().map(f64::from));
    Ok((m, correct as f64 / n.max(1) as f64))
}

fn default_cache(source: &DataSource, size: usize) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let tag: String = format!("{source:?}").chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    home.join(".cache/jit-engine").join(format!("classifier-{tag}-{size}.mpk"))
}

fn load_or_train(path: &Path, split: &Split, epochs: usize, device: &Device) -> Result<Classifier> {
    let d = &split.data;
    let fresh = Classifier::new(d.channels() * d.size() * d.size(), d.class_names().len(), device);
    if path.is_file() {
        match fresh.clone().try_load_file(path) {
            Ok(m) => {
                eprintln!("classifier: cached {}", path.display());
                return Ok(m);
            }
            Err(e) => eprintln!("classifier cache {} unusable ({e:?}); retraining", path.display()),
        }
    }
    let model = train_classifier(split, epochs, device)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    model.clone().save_file(path).map_err(|e| anyhow::anyhow!("cannot cache the classifier at {}: {e:?}", path.display()))?;
    Ok(model)
}

/// Runs `eval`; prints a Markdown table.
pub fn run(a: EvalArgs) -> Result<Vec<Row>> {
    let device = a.backend.device()?;
    let source: DataSource = a.data.parse()?;
    let loaded = match &a.checkpoint {
        Some(p) => Some(ckpt::load(p, a.weights, &device)?),
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
            meta.network.in_channels, meta.network.input_size, meta.network.input_size, meta.network.num_classes
        );
    }
    let cache = a.classifier.clone().unwrap_or_else(|| default_cache(&source, size));
    let clf = load_or_train(&cache, &train, a.classifier_epochs, &device)?;
    let shape = [c, size, size];
    let n = a.count.min(test_a.indices.len()).min(test_b.indices.len());
    if n < 2 {
        bail!("need at least 2 test images per split (have {})", test_a.indices.len().min(test_b.indices.len()));
    }
    let (xa, ya) = test_a.images(n)?;
    let (fa, _) = features_and_accuracy(&clf, &xa, &ya, shape, &device)?;
    let (xb, yb) = test_b.images(n)?;
    let (fb, acc_b) = features_and_accuracy(&clf, &xb, &yb, shape, &device)?;
    let mut rows = vec![Row { what: "real held-out (floor)".into(), fd_classifier: frechet_distance(&fb, &fa), class_accuracy: acc_b }];
    let mut rng = PortableRng::new(3);
    let noise: Vec<f32> = (0..n * c * size * size).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    let (fnz, acc_n) = features_and_accuracy(&clf, &noise, &ya, shape, &device)?;
    rows.push(Row { what: "uniform noise (ceiling)".into(), fd_classifier: frechet_distance(&fnz, &fa), class_accuracy: acc_n });
    if let Some((model, meta)) = &loaded {
        let labels: Vec<i64> = (0..n).map(|i| (i % k) as i64).collect();
        let sampler = jit_core::SamplerConfig { steps: a.steps, cfg: a.cfg.unwrap_or(meta.sampler.cfg), ..meta.sampler.clone() };
        let mut images = Vec::with_capacity(n * c * size * size);
        for chunk in labels.chunks(250) {
            let opts = GenerateOptions { seed: 1000 + images.len() as u64, sampler: sampler.clone(), labels: chunk.to_vec() };
            images.extend(generate(model, &meta.diffusion, &opts, |_| {})?);
        }
        let (fg, acc_g) = features_and_accuracy(&clf, &images, &labels, shape, &device)?;
        let name = a.checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        rows.push(Row { what: format!("generated ({name}, {} steps, cfg {})", sampler.steps, sampler.cfg), fd_classifier: frechet_distance(&fg, &fa), class_accuracy: acc_g });
    }
    println!("| images (n = {n}) | FD-classifier ↓ | class accuracy ↑ |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {:.2} | {:.1}% |", r.what, r.fd_classifier, 100.0 * r.class_accuracy);
    }
    if let Some(p) = &a.json {
        crate::fsutil::write_atomic(p, serde_json::to_string_pretty(&rows)?.as_bytes()).context("cannot write the report")?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frechet_distance_is_zero_for_identical_sets_and_grows_with_shift_and_spread() {
        let mut rng = PortableRng::new(4);
        let a = DMatrix::from_fn(400, 6, |_, _| rng.normals(1)[0] as f64);
        assert!(frechet_distance(&a, &a) < 1e-6);
        let shifted = a.map(|v| v + 1.0);
        // ‖μ₁ − μ₂‖² = 6 for a unit shift in 6 dimensions
        assert!((frechet_distance(&shifted, &a) - 6.0).abs() < 1e-6);
        let wide = a.map(|v| 3.0 * v);
        // same mean, σ 3 vs 1 per dimension: Σ (3 − 1)² ≈ 6·4 = 24
        let fd = frechet_distance(&wide, &a);
        assert!((fd - 24.0).abs() < 3.0, "{fd}");
    }
}
