//! Optimiser settings: AdamW as the reference sets it up (β 0.9/0.95, no weight decay on 1-D
//! parameters and biases), `lr = blr·batch/256` with linear warm-up then constant or cosine,
//! and the decays of the two EMAs; [`crate::adamw`] takes the steps.

use serde::{Deserialize, Serialize};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Keep the peak rate (the reference's default).
    #[default]
    Constant,
    /// Half-cosine from the peak to `min_lr` at the last step.
    Cosine,
}

/// Optimiser settings; defaults are the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Base rate; the peak is `blr · batch / 256` unless `lr` is set.
    pub blr: f64,
    /// Absolute peak rate, overriding `blr`.
    pub lr: Option<f64>,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub epsilon: f64,
    /// Decoupled weight decay (never applied to 1-D parameters or biases).
    pub weight_decay: f64,
    /// Linear warm-up length in optimizer steps.
    pub warmup_steps: u64,
    /// Total steps (used by the cosine schedule).
    pub total_steps: u64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// EMA decays; the first is the one used for sampling.
    pub ema_decays: (f64, f64),
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            blr: 5e-5,
            lr: None,
            min_lr: 0.0,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            total_steps: 1,
            schedule: Schedule::Constant,
            ema_decays: (0.9999, 0.9996),
        }
    }
}

impl OptimConfig {
    /// Peak learning rate for `batch` images per step.
    pub fn peak_lr(&self, batch: usize) -> f64 {
        self.lr.unwrap_or(self.blr * batch as f64 / 256.0)
    }

    /// The rate for (0-based) optimizer step `step`: linear warm-up from 0, then constant or
    /// cosine, as the reference's `adjust_learning_rate` (in steps instead of epochs).
    pub fn lr_at(&self, step: u64, batch: usize) -> f64 {
        let peak = self.peak_lr(batch);
        if step < self.warmup_steps {
            return peak * step as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => peak,
            Schedule::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr + (peak - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
