//! Configuration: the network ([`JitConfig`]), the training objective ([`DiffusionConfig`]) and
//! sampler defaults ([`SamplerConfig`]). All are plain serde structs so that a checkpoint can
//! carry them as JSON.

use serde::{Deserialize, Serialize};

use crate::error::JitError;

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

/// Named model sizes: the paper's presets and small ones for CPU work.
pub const PRESETS: &[&str] = &[
    "JiT-B/16", "JiT-B/32", "JiT-L/16", "JiT-L/32", "JiT-H/16", "JiT-H/32", "JiT-T/4", "JiT-S/4",
    "JiT-S/8",
];

impl JitConfig {
    /// A preset by name (see [`PRESETS`]), for `input_size` pixels, `in_channels` channels and
    /// `num_classes` classes. Paper presets: B (depth 12, D 768, 12 heads, bottleneck 128,
    /// 32 in-context tokens from block 4), L (24, 1024, 16, 128, from 8), H (32, 1280, 16, 256,
    /// from 10); H uses 0.2 projection dropout. The small presets are ours: T (depth 4, D 64,
    /// 4 heads) and S (depth 6, D 192, 6 heads), 8 in-context tokens from block 2.
    pub fn preset(
        name: &str,
        input_size: usize,
        in_channels: usize,
        num_classes: usize,
    ) -> Result<Self, JitError> {
        let norm = name.trim_start_matches("JiT-").trim_start_matches("jit-").to_ascii_uppercase();
        let (size, patch) = norm
            .split_once('/')
            .ok_or_else(|| JitError::UnknownPreset(name.to_string()))?;
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
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes fit together; every constructor path calls this.
    pub fn validate(&self) -> Result<(), JitError> {
        let bad = |why: String| Err(JitError::InvalidConfig(why));
        if self.patch_size == 0 || self.input_size == 0 || self.input_size % self.patch_size != 0 {
            return bad(format!(
                "input_size {} must be a positive multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.in_channels == 0 || self.num_classes == 0 || self.depth == 0 || self.bottleneck_dim == 0 {
            return bad("in_channels, num_classes, depth and bottleneck_dim must be positive".into());
        }
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return bad(format!(
                "hidden_size {} must be divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.head_dim() % 4 != 0 {
            return bad(format!("head_dim {} must be divisible by 4 (2-D RoPE)", self.head_dim()));
        }
        if self.hidden_size % 4 != 0 {
            return bad(format!("hidden_size {} must be divisible by 4 (2-D sin-cos)", self.hidden_size));
        }
        if self.in_context_len > 0 && self.in_context_start >= self.depth {
            return bad(format!(
                "in_context_start {} must be below depth {}",
                self.in_context_start, self.depth
            ));
        }
        Ok(())
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
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Clean image x (JiT's choice).
    #[default]
    X,
    /// Noise ε.
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

impl SamplerConfig {
    /// Checks steps ≥ 1, cfg finite and a sane interval.
    pub fn validate(&self) -> Result<(), JitError> {
        if self.steps == 0 {
            return Err(JitError::InvalidConfig("steps must be at least 1".into()));
        }
        if !self.cfg.is_finite() {
            return Err(JitError::InvalidConfig("cfg must be a finite number".into()));
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
