//! The training objective (the reference's `Denoiser.forward`) and the conversions between
//! what the network predicts (x, ε or v) and the three spaces, shared with the sampler.
//!
//! With `z = t·x + (1−t)·ε` (t = 1 is clean data):
//! - x-pred: `v̂ = (x̂ − z)/max(1−t, t_eps)`, `ε̂ = (z − t·x̂)/max(1−t, t_eps)`;
//! - ε-pred: `x̂ = (z − (1−t)·ε̂)/max(t, t_eps)`, `v̂ = (z − ε̂)/max(t, t_eps)`;
//! - v-pred: `x̂ = z + (1−t)·v̂`, `ε̂ = z − t·v̂`.
//!
//! The loss is `mean((target − pred)²)` in the chosen space, with the velocity target
//! `v = (x − z)/max(1−t, t_eps)` exactly as the reference computes it.

use burn::tensor::{Device, Distribution, Int, Tensor, activation::sigmoid};

use crate::config::{DiffusionConfig, Target};
use crate::network::Network;

/// A network output read in the three spaces.
pub struct Prediction {
    out: Tensor<4>,
    z: Tensor<4>,
    t: Tensor<4>,
    target: Target,
    t_eps: f64,
}

impl Prediction {
    /// Wraps the network output `out` for noisy input `z` at times `t` `[B]`.
    pub fn new(out: Tensor<4>, z: Tensor<4>, t: Tensor<1>, target: Target, t_eps: f64) -> Self {
        let t = t.reshape([-1, 1, 1, 1]);
        Self { out, z, t, target, t_eps }
    }

    fn one_minus_t(&self) -> Tensor<4> {
        self.t.clone().neg().add_scalar(1.0)
    }

    /// The clean-image estimate x̂.
    pub fn x(&self) -> Tensor<4> {
        match self.target {
            Target::X => self.out.clone(),
            Target::Eps => {
                self.z.clone().sub(self.one_minus_t().mul(self.out.clone())).div(self.t.clone().clamp_min(self.t_eps))
            }
            Target::V => self.z.clone().add(self.one_minus_t().mul(self.out.clone())),
        }
    }

    /// The noise estimate ε̂.
    pub fn eps(&self) -> Tensor<4> {
        match self.target {
            Target::X => {
                self.z.clone().sub(self.t.clone().mul(self.out.clone())).div(self.one_minus_t().clamp_min(self.t_eps))
            }
            Target::Eps => self.out.clone(),
            Target::V => self.z.clone().sub(self.t.clone().mul(self.out.clone())),
        }
    }

    /// The velocity estimate v̂ = dz/dt.
    pub fn v(&self) -> Tensor<4> {
        match self.target {
            Target::X => self.out.clone().sub(self.z.clone()).div(self.one_minus_t().clamp_min(self.t_eps)),
            Target::Eps => self.z.clone().sub(self.out.clone()).div(self.t.clone().clamp_min(self.t_eps)),
            Target::V => self.out.clone(),
        }
    }

    /// The estimate in `space`.
    pub fn in_space(&self, space: Target) -> Tensor<4> {
        match space {
            Target::X => self.x(),
            Target::Eps => self.eps(),
            Target::V => self.v(),
        }
    }
}

/// The random draws of one training step, explicit so that tests (and the golden vectors) can
/// fix them: `t` `[B]`, `noise` ε `[B, C, H, W]` (already scaled by `noise_scale`) and the labels
/// actually fed to the network (some replaced by the null class).
pub struct StepNoise {
    /// Times in (0, 1).
    pub t: Tensor<1>,
    /// ε, scaled.
    pub noise: Tensor<4>,
    /// Labels after dropout.
    pub labels: Tensor<1, Int>,
}

impl StepNoise {
    /// The draws of consecutive parts of the batch, `sizes` images each (summing to B).
    pub fn split(self, sizes: &[usize]) -> Vec<StepNoise> {
        let t = self.t.split_with_sizes(sizes.to_vec(), 0);
        let noise = self.noise.split_with_sizes(sizes.to_vec(), 0);
        let labels = self.labels.split_with_sizes(sizes.to_vec(), 0);
        t.into_iter().zip(noise).zip(labels).map(|((t, noise), labels)| StepNoise { t, noise, labels }).collect()
    }
}

/// Draws t ~ logit-normal(P_mean, P_std), ε ~ N(0, noise_scale²) and label dropout on `device`'s
/// generator (seed it with `Device::seed` for reproducible training).
pub fn draw_noise(
    cfg: &DiffusionConfig,
    num_classes: usize,
    x: &Tensor<4>,
    labels: Tensor<1, Int>,
    device: &Device,
) -> StepNoise {
    draw_noise_shard(cfg, num_classes, x.dims(), 0, labels, device)
}

/// [`draw_noise`] for images `offset..offset + b` (b: the length of `labels`) of a global batch
/// of shape `global` `[B, C, H, W]`: the draws of the whole batch are made, in the same order
/// as for one process, and this part kept. So a data-parallel rank gets exactly the noise, t and
/// label dropout its images would get in one process training on the whole batch.
pub fn draw_noise_shard(
    cfg: &DiffusionConfig,
    num_classes: usize,
    global: [usize; 4],
    offset: usize,
    labels: Tensor<1, Int>,
    device: &Device,
) -> StepNoise {
    let [b] = labels.dims();
    let whole = global[0];
    assert!(offset + b <= whole, "images {offset}..{} are not in a batch of {whole}", offset + b);
    let part = offset..offset + b;
    let t = sigmoid(Tensor::<1>::random([whole], Distribution::Normal(cfg.p_mean, cfg.p_std), device));
    let noise = Tensor::<4>::random(global, Distribution::Normal(0.0, cfg.noise_scale), device);
    let (t, noise) = if b == whole { (t, noise) } else { (t.slice(part.clone()), noise.slice(part.clone())) };
    let labels = if cfg.label_drop_prob > 0.0 {
        let u = Tensor::<1>::random([whole], Distribution::Uniform(0.0, 1.0), device);
        let u = if b == whole { u } else { u.slice(part) };
        labels.mask_fill(u.lower_elem(cfg.label_drop_prob), num_classes as i64)
    } else {
        labels
    };
    StepNoise { t, noise, labels }
}

/// The training loss for clean images `x` `[B, C, H, W]` in [-1, 1] under the given draws:
/// `z = t·x + (1−t)·ε`, prediction from `net(z, t, y')`, mean squared error in `cfg.loss` space.
/// Returns a one-element tensor.
pub fn loss<N: Network>(net: &N, cfg: &DiffusionConfig, x: Tensor<4>, draw: StepNoise) -> Tensor<1> {
    let StepNoise { t, noise, labels } = draw;
    let t4 = t.clone().reshape([-1, 1, 1, 1]);
    let z = t4.clone().mul(x.clone()).add(t4.clone().neg().add_scalar(1.0).mul(noise.clone()));
    let out = net.predict(z.clone(), t.clone(), labels);
    let pred = Prediction::new(out, z.clone(), t, cfg.prediction, cfg.t_eps);
    let target = match cfg.loss {
        Target::X => x,
        Target::Eps => noise,
        Target::V => x.sub(z).div(t4.neg().add_scalar(1.0).clamp_min(cfg.t_eps)),
    };
    target.sub(pred.in_space(cfg.loss)).square().mean()
}
