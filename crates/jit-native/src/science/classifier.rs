//! A small classifier over pixels for scoring samples of small datasets, where FID's Inception
//! network is not available: trained once on the training split (with the same
//! [`TrainState`] as JiT) and cached; its 128-d penultimate features feed the Fréchet distance,
//! its predictions the class accuracy of conditional samples.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor, TensorData, activation::silu};
use jit_core::TrainState;
use jit_core::host::read_f32;
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use nalgebra::DMatrix;

use crate::data::idx::IdxDataset;
use crate::data::{DataSource, Dataset};

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

/// A subset of a dataset, by index.
pub struct Split {
    pub data: Arc<dyn Dataset>,
    pub indices: Vec<usize>,
}

impl Split {
    /// The first `n` images `[n, C, H, W]` (flattened) and their labels.
    pub fn images(&self, n: usize) -> Result<(Vec<f32>, Vec<i64>)> {
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
pub fn splits(source: &DataSource, size: usize) -> Result<(Split, Split, Split)> {
    match source {
        DataSource::Idx { dir } => {
            let train: Arc<dyn Dataset> = Arc::new(IdxDataset::open(dir, "train", size, 1)?);
            let test: Arc<dyn Dataset> = Arc::new(IdxDataset::open(dir, "test", size, 1)?);
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
            Ok((
                Split { data: data.clone(), indices: train },
                Split { data: data.clone(), indices: a },
                Split { data, indices: b },
            ))
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
    // burn's AdamW defaults (β₂ 0.999, ε 1e-5) at a constant 1e-3, as the cached classifiers had.
    let optim = OptimConfig { lr: Some(1e-3), beta2: 0.999, epsilon: 1e-5, ..OptimConfig::default() };
    let mut state = TrainState::new(Classifier::new(c * s * s, k, &ad), optim, 0);
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
            let loss = loss_fn.forward(state.model.logits(x), y);
            last = loss.clone().into_scalar();
            state.apply(loss, n);
        }
        eprintln!("classifier epoch {}/{epochs}: loss {last:.4}", epoch + 1);
    }
    Ok(state.model.valid())
}

pub fn features_and_accuracy(
    model: &Classifier,
    x: &[f32],
    labels: &[i64],
    shape: [usize; 3],
    device: &Device,
) -> Result<(DMatrix<f64>, f64)> {
    let n = labels.len();
    let [c, s, _] = shape;
    let per = c * s * s;
    let mut feats = Vec::with_capacity(n * FEATURES);
    let mut correct = 0usize;
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        let xb =
            Tensor::<4>::from_data(TensorData::new(x[start * per..end * per].to_vec(), [end - start, c, s, s]), device);
        let f = model.features(xb);
        let pred: Vec<i64> = model
            .head
            .forward(f.clone())
            .argmax(1)
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        correct += pred.iter().zip(&labels[start..end]).filter(|(p, l)| p == l).count();
        feats.extend(read_f32(f)?);
    }
    let m = DMatrix::from_row_iterator(n, FEATURES, feats.into_iter().map(f64::from));
    Ok((m, correct as f64 / n.max(1) as f64))
}

pub fn default_cache(source: &DataSource, size: usize) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let tag: String = format!("{source:?}").chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    home.join(".cache/jit-engine").join(format!("classifier-{tag}-{size}.mpk"))
}

/// The classifier cached at `path`, or one trained on `split` for `epochs` and cached there
/// (written to a temporary file, then renamed over it). A file the user `given` that is not a
/// classifier for these images is refused, never replaced; the default cache is retrained.
pub fn load_or_train(path: &Path, given: bool, split: &Split, epochs: usize, device: &Device) -> Result<Classifier> {
    let d = &split.data;
    let fresh = Classifier::new(d.channels() * d.size() * d.size(), d.class_names().len(), device);
    if path.is_file() {
        match fresh.clone().try_load_file(path) {
            Ok(m) => {
                eprintln!("classifier: cached {}", path.display());
                return Ok(m);
            }
            Err(e) if given => anyhow::bail!(
                "{} is not a classifier for {}×{}×{} images of {} classes ({e:?}); it is left as it is: pass another --classifier path",
                path.display(),
                d.channels(),
                d.size(),
                d.size(),
                d.class_names().len()
            ),
            Err(e) => eprintln!("classifier cache {} unusable ({e:?}); retraining", path.display()),
        }
    }
    let model = train_classifier(split, epochs, device)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).ok();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let saved = model
        .clone()
        .save_file(&tmp)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(anyhow::Error::from));
    if let Err(e) = saved {
        std::fs::remove_file(&tmp).ok();
        anyhow::bail!("cannot cache the classifier at {}: {e}", path.display());
    }
    Ok(model)
}
