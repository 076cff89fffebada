//! Configuration: the network ([`JitConfig`]), the training objective ([`DiffusionConfig`]) and
//! sampler defaults ([`SamplerConfig`]). All are plain serde structs so that a checkpoint can
//! carry them as JSON.

use serde::{Deserialize, Serialize};

use crate::error::JitError;
use crate::ops::{self, AttentionKernels};

/// The JiT network, with the reference's field names (`model_jit.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JitConfig {
    /// Image side H = W in pixels.
    pub input_size: usize,
    /// Patch side p in pixels; `input_size` must be divisible by it.
    pub patch_size: usize,
    /// Image channels C (3 for RGB, 1 for grayscale).
    pub in_channels: usize,
    /// Transformer width D.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; `hidden_size / num_heads` must be even (for RoPE) and divisible by 4 pairs.
    pub num_heads: usize,
    /// SwiGLU width factor (4.0 in every preset).
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Number of classes K; label K is the "null" class used for classifier-free guidance.
    pub num_classes: usize,
    /// Width B of the bottleneck patch embedding.
    pub bottleneck_dim: usize,
    /// Number L of in-context class tokens (0 disables them).
    #[serde(default)]
    pub in_context_len: usize,
    /// Block index S at which the in-context tokens are prepended.
    #[serde(default)]
    pub in_context_start: usize,
    /// Dropout on attention probabilities in the middle half of the blocks (training only).
    #[serde(default)]
    pub attn_drop: f64,
    /// Dropout after the attention and MLP projections in the middle half of the blocks.
    #[serde(default)]
    pub proj_drop: f64,
}

fn default_mlp_ratio() -> f64 {
    4.0
}

/// Upper bounds of [`JitConfig`] sizes: far above every preset (JiT-H at 1024 px), low enough
/// that no size product overflows and no hostile file can ask for absurd allocations.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Image side in pixels.
    pub input_size: usize,
    /// Image channels.
    pub in_channels: usize,
    /// Width D (also heads and bottleneck).
    pub hidden_size: usize,
    /// Blocks.
    pub depth: usize,
    /// Classes.
    pub num_classes: usize,
    /// Image plus in-context tokens.
    pub tokens: usize,
}

/// The bounds every config is checked against.
pub const BOUNDS: Bounds =
    Bounds { input_size: 4096, in_channels: 4, hidden_size: 8192, depth: 256, num_classes: 100_000, tokens: 16_384 };

/// Memory a model may ask for before it is built, in bytes: [`DEFAULT_MEMORY_LIMIT`] unless a
/// front end raises it (`--max-memory` in `jit-native`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit(pub u64);

/// 16 GiB natively, 2 GiB where `usize` is 32 bits (wasm32).
pub const DEFAULT_MEMORY_LIMIT: MemoryLimit = MemoryLimit(if usize::BITS >= 64 { 16 << 30 } else { 2 << 30 });

impl Default for MemoryLimit {
    fn default() -> Self {
        DEFAULT_MEMORY_LIMIT
    }
}

impl MemoryLimit {
    /// Refuses `config` when a forward pass of `batch` images would need more than the limit.
    pub fn check(self, config: &JitConfig, batch: usize) -> Result<(), JitError> {
        config.validate()?;
        self.check_bytes(format!("sampling this model in batches of {batch}"), config.forward_bytes(batch.max(1)))
    }

    /// Refuses `config` when a training step on `batch` images would need more than the limit.
    pub fn check_training(self, config: &JitConfig, batch: usize) -> Result<(), JitError> {
        config.validate()?;
        self.check_bytes(format!("training this model in batches of {batch}"), config.train_bytes(batch.max(1)))
    }

    /// Into how many parts (at most `wanted`, at most one per image) a training step of `batch`
    /// images may be split (`TrainState::train_step_in_parts`): every part beyond the first
    /// holds one more set of gradients (4 bytes per parameter), and the step has to stay within
    /// the limit. 1 when even the whole step does not fit ([`Self::check_training`] refuses it).
    pub fn training_parts(self, config: &JitConfig, batch: usize, wanted: usize) -> usize {
        let (step, gradients) = (config.train_bytes(batch.max(1)), 4 * config.param_count());
        let fits = |parts: usize| step.saturating_add(gradients.saturating_mul(parts as u64 - 1)) <= self.0;
        (1..=wanted.min(batch).max(1)).rev().find(|&parts| fits(parts)).unwrap_or(1)
    }

    /// Refuses `need` bytes for `what` (an output image, a grid, a buffer) over the limit.
    pub fn check_bytes(self, what: impl Into<String>, need: u64) -> Result<(), JitError> {
        if need > self.0 {
            let what = what.into();
            Err(JitError::TooLarge { what, need, limit: self.0 })
        } else {
            Ok(())
        }
    }
}

/// Named model sizes: the paper's presets and small ones for CPU work (which also take patches
/// of 2, 8 and 16: [`JitConfig::preset`]).
pub const PRESETS: &[&str] =
    &["JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32", "JiT-T/4", "JiT-S/4", "JiT-S/8"];

impl JitConfig {
    /// A preset by name (see [`PRESETS`]), for `input_size` pixels, `in_channels` channels and
    /// `num_classes` classes. Paper presets: B (depth 12, D 768, 12 heads, bottleneck 128,
    /// 32 in-context tokens from block 4), L (24, 1024, 16, 128, from 8), H (32, 1280, 16, 256,
    /// from 10); H uses 0.2 projection dropout. The small presets are ours: T (depth 4, D 64,
    /// 4 heads) and S (depth 6, D 192, 6 heads), 8 in-context tokens from block 2.
    pub fn preset(name: &str, input_size: usize, in_channels: usize, num_classes: usize) -> Result<Self, JitError> {
        let config = Self::preset_unchecked(name, input_size, in_channels, num_classes)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Self::preset`] before [`Self::validate`]: for front ends that override some sizes
    /// (`--patch-size`, `--depth` …) and validate the result, so that a preset whose own sizes
    /// do not fit the image (T/4 at 1024 px) can still be the base of one that does.
    pub fn preset_unchecked(
        name: &str,
        input_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<Self, JitError> {
        let norm = name.trim_start_matches("JiT-").trim_start_matches("jit-").to_ascii_uppercase();
        let (size, patch) = norm.split_once('/').ok_or_else(|| JitError::UnknownPreset(name.to_string()))?;
        let patch_size: usize = patch.parse().map_err(|_| JitError::UnknownPreset(name.to_string()))?;
        let (depth, hidden_size, num_heads, bottleneck_dim, l, s, proj_drop) = match (size, patch_size) {
            ("B", 16 | 32) => (12, 768, 12, 128, 32, 4, 0.0),
            ("L", 16 | 32) => (24, 1024, 16, 128, 32, 8, 0.0),
            ("H", 16 | 32) => (32, 1280, 16, 256, 32, 10, 0.2),
            ("T", 2 | 4 | 8 | 16) => (4, 64, 4, 16, 8, 2, 0.0),
            ("S", 2 | 4 | 8 | 16) => (6, 192, 6, 32, 8, 2, 0.0),
            _ => return Err(JitError::UnknownPreset(name.to_string())),
        };
        let config = Self {
            input_size,
            patch_size,
            in_channels,
            hidden_size,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            num_classes,
            bottleneck_dim,
            in_context_len: l,
            in_context_start: s,
            attn_drop: 0.0,
            proj_drop,
        };
        Ok(config)
    }

    /// Checks that the sizes fit together and stay within [`BOUNDS`]; every constructor path
    /// (presets, checkpoint metadata, imports, the browser) calls this before allocating. Sizes
    /// are checked one by one first, so no product below can overflow.
    pub fn validate(&self) -> Result<(), JitError> {
        let bad = |why: String| Err(JitError::InvalidConfig(why));
        let b = &BOUNDS;
        for (field, value, max) in [
            ("input_size", self.input_size, b.input_size),
            ("patch_size", self.patch_size, b.input_size),
            ("in_channels", self.in_channels, b.in_channels),
            ("hidden_size", self.hidden_size, b.hidden_size),
            ("depth", self.depth, b.depth),
            ("num_heads", self.num_heads, b.hidden_size),
            ("num_classes", self.num_classes, b.num_classes),
            ("bottleneck_dim", self.bottleneck_dim, b.hidden_size),
            ("in_context_len", self.in_context_len, b.tokens),
            ("in_context_start", self.in_context_start, b.depth),
        ] {
            if value > max {
                return bad(format!("{field} = {value} is over the limit of {max}"));
            }
        }
        if self.patch_size == 0 || self.input_size == 0 || !self.input_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "input_size {} must be a positive multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.depth == 0 || self.bottleneck_dim == 0 {
            return bad("in_channels, num_classes, depth and bottleneck_dim must be positive".into());
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!("hidden_size {} must be divisible by num_heads {}", self.hidden_size, self.num_heads));
        }
        if !self.head_dim().is_multiple_of(4) {
            return bad(format!("head_dim {} must be divisible by 4 (2-D RoPE)", self.head_dim()));
        }
        if !self.hidden_size.is_multiple_of(4) {
            return bad(format!("hidden_size {} must be divisible by 4 (2-D sin-cos)", self.hidden_size));
        }
        if self.in_context_len > 0 && self.in_context_start >= self.depth {
            return bad(format!("in_context_start {} must be below depth {}", self.in_context_start, self.depth));
        }
        if self.num_patches() + self.in_context_len > b.tokens {
            return bad(format!(
                "{} image tokens + {} in-context tokens is over the limit of {} tokens",
                self.num_patches(),
                self.in_context_len,
                b.tokens
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0 && self.mlp_ratio <= 16.0) || self.mlp_hidden() == 0 {
            return bad(format!("mlp_ratio {} must be in (0, 16] and give a non-empty MLP", self.mlp_ratio));
        }
        for (field, p) in [("attn_drop", self.attn_drop), ("proj_drop", self.proj_drop)] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("{field} {p} must be in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Trainable and fixed parameters of the network (computed from the sizes, without building
    /// it; matches `Jit::num_params`). Call on a validated config.
    pub fn param_count(&self) -> u64 {
        let (d, c, p, k) =
            (self.hidden_size as u64, self.in_channels as u64, self.patch_size as u64, self.num_classes as u64);
        let (bn, h, freq) = (self.bottleneck_dim as u64, self.mlp_hidden() as u64, 256u64);
        let linear = |i: u64, o: u64| i * o + o;
        let embed = c * p * p * bn + linear(bn, d);
        let t_embed = linear(freq, d) + linear(d, d);
        let y_embed = (k + 1) * d;
        let pos = self.num_patches() as u64 * d + self.in_context_len as u64 * d;
        let block = d
            + linear(d, 3 * d)
            + 2 * (d / self.num_heads as u64)
            + linear(d, d)
            + d
            + 2 * linear(d, h)
            + linear(h, d)
            + linear(d, 6 * d);
        let head = d + linear(d, 2 * d) + linear(d, p * p * c);
        embed + t_embed + y_embed + pos + self.depth as u64 * block + head
    }

    /// Floating-point operations of one forward pass over `images` images (2 per multiply-add
    /// of the matrix products: embeddings, every block's linears and attention, the head);
    /// a training step costs about 3× this (forward, then backward through inputs and weights).
    pub fn forward_flops(&self, images: usize) -> f64 {
        let (d, h, n) = (self.hidden_size as f64, self.mlp_hidden() as f64, self.num_patches() as f64);
        let (c, p, bn, l) =
            (self.in_channels as f64, self.patch_size as f64, self.bottleneck_dim as f64, self.in_context_len as f64);
        let per_token = 3.0 * d * d + d * d + 2.0 * d * h + h * d;
        let attention = |t: f64| 2.0 * t * t * d;
        let mut macs = n * (c * p * p * bn + bn * d) + 256.0 * d + d * d + n * d * p * p * c + d * 2.0 * d;
        for i in 0..self.depth {
            let t = if l > 0.0 && i >= self.in_context_start { n + l } else { n };
            macs += t * per_token + attention(t) + d * 6.0 * d;
        }
        2.0 * macs * images as f64
    }

    /// Bytes of the largest activations of one block for `batch` images, roughly, all f32:
    /// tokens × (4·D + 2·max(MLP width, 3·D)), plus attention's scores and probabilities
    /// 2·heads·T² where attention runs as products (the default, and the CPU's kernels), or its
    /// log-sum-exps heads·T with [`AttentionKernels::Flash`] (as [`ops::attention_kernels`] is
    /// set when the estimate is made).
    pub fn block_activation_bytes(&self, batch: usize) -> u64 {
        let tokens = (self.num_patches() + self.in_context_len) as u128;
        let (b, d, heads) = (batch as u128, self.hidden_size as u128, self.num_heads as u128);
        let wide = (self.mlp_hidden() as u128).max(3 * d);
        let attention = match ops::attention_kernels() {
            AttentionKernels::Products => 2 * tokens * tokens,
            AttentionKernels::Flash => tokens,
        };
        let bytes = 4 * (b * tokens * (4 * d + 2 * wide) + b * heads * attention);
        bytes.min(u64::MAX as u128) as u64
    }

    /// Bytes a forward pass of `batch` images needs at its peak: f32 weights plus one block's
    /// activations. Used to refuse models and batches that cannot fit before anything is
    /// allocated.
    pub fn forward_bytes(&self, batch: usize) -> u64 {
        (4 * self.param_count()).saturating_add(self.block_activation_bytes(batch))
    }

    /// Bytes a training step of `batch` images needs, roughly: weights, gradients, two AdamW
    /// moments and two EMAs (6 f32 copies) plus every block's activations kept for backward.
    pub fn train_bytes(&self, batch: usize) -> u64 {
        (24 * self.param_count()).saturating_add(self.block_activation_bytes(batch).saturating_mul(self.depth as u64))
    }

    /// Patches per side, H / p.
    pub fn grid_size(&self) -> usize {
        self.input_size / self.patch_size
    }
    /// Image tokens N = (H/p)².
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }
    /// Per-head width D / heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Values per patch token, p·p·C.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_channels
    }
    /// SwiGLU hidden width, `int(int(D·mlp_ratio)·2/3)` as in the reference.
    pub fn mlp_hidden(&self) -> usize {
        let h = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        (h as f64 * 2.0 / 3.0) as usize
    }
    /// Whether block `i` gets dropout: the reference applies it in the middle half only.
    pub fn block_has_dropout(&self, i: usize) -> bool {
        i >= self.depth / 4 && i < self.depth * 3 / 4
    }
}

/// What the network output is interpreted as (the paper's Table 1 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Clean image x (JiT's choice).
    #[default]
    X,
    /// Noise ε.
    #[cfg_attr(feature = "clap", value(alias = "epsilon"))]
    Eps,
    /// Velocity v = x − ε.
    V,
}

impl std::str::FromStr for Target {
    type Err = JitError;
    fn from_str(s: &str) -> Result<Self, JitError> {
        match s.to_ascii_lowercase().as_str() {
            "x" => Ok(Self::X),
            "eps" | "epsilon" | "e" => Ok(Self::Eps),
            "v" => Ok(Self::V),
            _ => Err(JitError::InvalidConfig(format!("unknown target '{s}' (use x, eps or v)"))),
        }
    }
}

/// The training objective (the reference's `Denoiser`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionConfig {
    /// Mean of the logit-normal t distribution.
    pub p_mean: f64,
    /// Std of the logit-normal t distribution.
    pub p_std: f64,
    /// ε ~ N(0, noise_scale²); also the sampler's initial noise scale.
    pub noise_scale: f64,
    /// Lower clamp of 1 − t when dividing by it.
    pub t_eps: f64,
    /// Probability of replacing a label by the null class during training.
    pub label_drop_prob: f64,
    /// What the network predicts.
    #[serde(default)]
    pub prediction: Target,
    /// In which space the loss is measured.
    #[serde(default = "default_loss_space")]
    pub loss: Target,
}

fn default_loss_space() -> Target {
    Target::V
}

impl DiffusionConfig {
    /// Checks that every number is finite and in its range (a zero `t_eps` or noise scale would
    /// divide by zero and silently give NaN images).
    pub fn validate(&self) -> Result<(), JitError> {
        let bad = |why: String| Err(JitError::InvalidConfig(why));
        for (name, v) in
            [("p_mean", self.p_mean), ("p_std", self.p_std), ("noise_scale", self.noise_scale), ("t_eps", self.t_eps)]
        {
            if !v.is_finite() {
                return bad(format!("{name} {v} must be a finite number"));
            }
        }
        if self.p_std < 0.0 || self.noise_scale <= 0.0 || !(self.t_eps > 0.0 && self.t_eps <= 1.0) {
            return bad(format!(
                "p_std {} must be ≥ 0, noise_scale {} > 0 and t_eps {} in (0, 1]",
                self.p_std, self.noise_scale, self.t_eps
            ));
        }
        if !(0.0..=1.0).contains(&self.label_drop_prob) {
            return bad(format!("label_drop_prob {} must be in [0, 1]", self.label_drop_prob));
        }
        Ok(())
    }
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            p_mean: -0.8,
            p_std: 0.8,
            noise_scale: 1.0,
            t_eps: 0.05,
            label_drop_prob: 0.1,
            prediction: Target::X,
            loss: Target::V,
        }
    }
}

/// ODE solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// First order.
    Euler,
    /// Second order (two network evaluations per step); the reference default.
    #[default]
    Heun,
}

impl std::str::FromStr for Method {
    type Err = JitError;
    fn from_str(s: &str) -> Result<Self, JitError> {
        match s.to_ascii_lowercase().as_str() {
            "euler" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            _ => Err(JitError::InvalidConfig(format!("unknown sampler '{s}' (use euler or heun)"))),
        }
    }
}

/// Sampler settings (defaults stored with a checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Solver.
    pub method: Method,
    /// Number of steps over t ∈ [0, 1].
    pub steps: usize,
    /// Classifier-free guidance scale (1 disables guidance).
    pub cfg: f64,
    /// Guidance applies where `low < t < high` (`low == 0` means no lower bound).
    pub interval: (f64, f64),
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self { method: Method::Heun, steps: 50, cfg: 2.9, interval: (0.1, 1.0) }
    }
}

/// What a front end may change of a checkpoint's sampler settings (`None`: keep the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerOverrides {
    pub method: Option<Method>,
    pub steps: Option<usize>,
    pub cfg: Option<f64>,
    pub interval_low: Option<f64>,
    pub interval_high: Option<f64>,
}

impl SamplerConfig {
    /// Most sampler steps accepted (the reference uses 50): bounds the time and the time grid a
    /// file or a flag can ask for.
    pub const MAX_STEPS: usize = 10_000;
    /// The largest guidance scale, either sign: beyond it the velocities overflow into images of
    /// NaN and ∞.
    pub const MAX_CFG: f64 = 1000.0;

    /// Most images one sampling request may ask for.
    pub const MAX_IMAGES: usize = 1 << 20;

    /// These settings with `o` applied, validated: the one place the CLI and the browser turn
    /// their options into a sampler.
    pub fn with(&self, o: SamplerOverrides) -> Result<Self, JitError> {
        let s = Self {
            method: o.method.unwrap_or(self.method),
            steps: o.steps.unwrap_or(self.steps),
            cfg: o.cfg.unwrap_or(self.cfg),
            interval: (o.interval_low.unwrap_or(self.interval.0), o.interval_high.unwrap_or(self.interval.1)),
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks a request to sample images of `labels` with `network`: [`Self::check_labels`], and
    /// both halves of a guided step within the memory `limit`.
    pub fn check_request(network: &JitConfig, labels: &[i64], limit: MemoryLimit) -> Result<(), JitError> {
        Self::check_labels(network, labels)?;
        limit.check(network, 2 * labels.len())
    }

    /// 1 to [`Self::MAX_IMAGES`] labels, each a class of `network` or its null class K.
    pub fn check_labels(network: &JitConfig, labels: &[i64]) -> Result<(), JitError> {
        if labels.is_empty() || labels.len() > Self::MAX_IMAGES {
            return Err(JitError::InvalidConfig(format!(
                "{} images requested: from 1 to {} at a time",
                labels.len(),
                Self::MAX_IMAGES
            )));
        }
        let k = network.num_classes;
        if let Some(&l) = labels.iter().find(|&&l| l < 0 || l as usize > k) {
            return Err(JitError::InvalidConfig(format!(
                "class {l} does not exist (the model has classes 0..{}, and {k} for unconditional samples)",
                k - 1
            )));
        }
        Ok(())
    }

    /// Checks 1 ≤ steps ≤ [`Self::MAX_STEPS`], cfg finite and a sane interval.
    pub fn validate(&self) -> Result<(), JitError> {
        if self.steps == 0 || self.steps > Self::MAX_STEPS {
            return Err(JitError::InvalidConfig(format!(
                "steps {} must be between 1 and {}",
                self.steps,
                Self::MAX_STEPS
            )));
        }
        if !(self.cfg.is_finite() && self.cfg.abs() <= Self::MAX_CFG) {
            return Err(JitError::InvalidConfig(format!(
                "cfg {} must be a number from -{max} to {max} (the paper's are 1 to 3)",
                self.cfg,
                max = Self::MAX_CFG
            )));
        }
        let (lo, hi) = self.interval;
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo > hi {
            return Err(JitError::InvalidConfig(format!(
                "cfg interval ({lo}, {hi}) must satisfy 0 <= low <= high <= 1"
            )));
        }
        Ok(())
    }

    /// The guidance scale at time t: `cfg` inside the interval, else 1.
    pub fn scale_at(&self, t: f64) -> f64 {
        let (lo, hi) = self.interval;
        if t < hi && (lo == 0.0 || t > lo) { self.cfg } else { 1.0 }
    }
}
