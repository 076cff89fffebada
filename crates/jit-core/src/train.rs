//! Optimisation: AdamW as the reference sets it up (β 0.9/0.95, no weight decay on 1-D
//! parameters and biases), `lr = blr·batch/256` with linear warm-up then constant or cosine, and
//! a [`Trainer`] that runs one step: loss, backward, AdamW, both EMAs.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::DiffusionConfig;
use crate::ema::Ema;
use crate::model::Jit;
use crate::objective::{draw_noise, loss};

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
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

    /// AdamW for `model`: decay on matrices only, none on 1-D parameters (biases, norms).
    pub fn optimizer(&self, model: &Jit) -> ModuleOptimizer {
        let adamw = |wd: f64| {
            AdamWConfig::new()
                .with_beta_1(self.beta1 as f32)
                .with_beta_2(self.beta2 as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay(wd as f32)
        };
        let optim = adamw(self.weight_decay).init();
        if self.weight_decay == 0.0 {
            return optim;
        }
        let mut vectors = VectorParams(Vec::new());
        model.visit(&mut vectors);
        optim.with_group(ParamGroup::from_ids(vectors.0), adamw(0.0).build(), None)
    }
}

struct VectorParams(Vec<ParamId>);

impl ModuleVisitor for VectorParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 1 {
            self.0.push(param.id);
        }
    }
}

/// The model, its optimizer and both EMAs; one [`Trainer::step`] per batch.
pub struct Trainer {
    /// The trained network (on an autodiff device).
    pub model: Jit,
    /// AdamW state.
    pub optim: ModuleOptimizer,
    /// EMA with the first decay (used for sampling).
    pub ema1: Ema,
    /// EMA with the second decay.
    pub ema2: Ema,
    /// Objective settings.
    pub diffusion: DiffusionConfig,
    /// Optimiser settings.
    pub optim_config: OptimConfig,
    /// Optimizer steps taken.
    pub step: u64,
    /// Base seed; step s draws its noise after `device.seed(seed + s)`.
    pub seed: u64,
}

impl Trainer {
    /// Wraps `model` (moved to the autodiff version of its device).
    pub fn new(model: Jit, diffusion: DiffusionConfig, optim_config: OptimConfig, seed: u64) -> Self {
        let device = model.devices()[0].clone();
        let model = model.to_device(&device.clone().autodiff()).train();
        let optim = optim_config.optimizer(&model);
        let ema1 = Ema::new(&model, optim_config.ema_decays.0);
        let ema2 = Ema::new(&model, optim_config.ema_decays.1);
        Self { model, optim, ema1, ema2, diffusion, optim_config, step: 0, seed }
    }

    /// The device training runs on (autodiff).
    pub fn device(&self) -> Device {
        self.model.devices()[0].clone()
    }

    /// One optimizer step on clean images `x` `[B, C, H, W]` in [-1, 1] with labels `[B]`;
    /// returns the loss (one element, not yet read back).
    pub fn step(&mut self, x: Tensor<4>, labels: Tensor<1, Int>) -> Tensor<1> {
        let device = self.device();
        let [batch, ..] = x.dims();
        let x = x.to_device(&device);
        let labels = labels.to_device(&device);
        device.seed(self.seed.wrapping_add(self.step));
        let draw = draw_noise(&self.diffusion, self.model.config.num_classes, &x, labels, &device);
        let loss = loss(&self.model, &self.diffusion, x, draw);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        let lr = self.optim_config.lr_at(self.step, batch);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.ema1.update(&self.model);
        self.ema2.update(&self.model);
        self.step += 1;
        loss.without_autodiff()
    }
}
