//! ODE sampling (the reference's `Denoiser.generate`): from `z₀ = noise_scale·ε` at t = 0 to the
//! image at t = 1 over `linspace(0, 1, steps + 1)`, Heun for every step but the last, which is
//! Euler (Euler throughout with [`Method::Euler`]).
//!
//! Guidance: `v = v_uncond + s·(v_cond − v_uncond)` with `s = cfg` where `low < t < high`
//! (`low == 0`: no lower bound) and 1 elsewhere. Where `s == 1` the unconditional pass is skipped
//! (the reference runs it anyway); where it is needed, both passes share one batched forward.
//!
//! [`Sampling`] is a step-by-step state machine so that front ends (including async browser
//! code) drive the loop, show previews and cancel; [`sample`] runs it to the end.

use std::ops::Range;

use burn::tensor::{Device, Int, Tensor};

use crate::config::{DiffusionConfig, JitConfig, Method, SamplerConfig};
use crate::error::JitError;
use crate::network::Network;
use crate::objective::Prediction;
use crate::rng::PortableRng;

/// The initial noise `z₀ = noise_scale · N(0, I)` `[images.len(), C, H, W]` of `images` (their
/// indices in a batch) from `seed`, drawn with [`PortableRng`]: identical on every backend,
/// natively and in the browser, and an image's noise is the same whichever part of its batch it
/// is drawn with (the browser splits a batch over workers).
pub fn initial_noise(
    config: &JitConfig,
    diffusion: &DiffusionConfig,
    images: Range<usize>,
    seed: u64,
    device: &Device,
) -> Tensor<4> {
    let per_image = (config.in_channels * config.input_size * config.input_size) as u64;
    let shape = [images.len(), config.in_channels, config.input_size, config.input_size];
    PortableRng::new(seed).noise_from(images.start as u64 * per_image, shape, diffusion.noise_scale, device)
}

/// The time grid `linspace(0, 1, steps + 1)` as f32 values, as torch computes it.
pub fn timesteps(steps: usize) -> Vec<f32> {
    let step = 1.0f32 / steps as f32;
    let half = steps.div_ceil(2);
    (0..=steps).map(|i| if i < half { i as f32 * step } else { 1.0 - (steps - i) as f32 * step }).collect()
}

/// Guided velocity and clean-image estimate at time `t` for state `z`.
pub fn guided_velocity<N: Network>(
    net: &N,
    diffusion: &DiffusionConfig,
    sampler: &SamplerConfig,
    z: Tensor<4>,
    t: f32,
    labels: Tensor<1, Int>,
) -> (Tensor<4>, Tensor<4>) {
    let [b, ..] = z.dims();
    let device = z.device();
    let scale = sampler.scale_at(t as f64);
    let v = if scale == 1.0 {
        let tt = Tensor::<1>::full([b], t, &device);
        let out = net.predict(z.clone(), tt.clone(), labels);
        Prediction::new(out, z.clone(), tt, diffusion.prediction, diffusion.t_eps).v()
    } else {
        let tt = Tensor::<1>::full([2 * b], t, &device);
        let null = labels.clone().full_like(net.null_class() as i64);
        let zz = Tensor::cat(vec![z.clone(), z.clone()], 0);
        let out = net.predict(zz.clone(), tt.clone(), Tensor::cat(vec![labels, null], 0));
        let v = Prediction::new(out, zz, tt, diffusion.prediction, diffusion.t_eps).v();
        crate::ops::cfg_mix(v, scale)
    };
    let x_hat = z.add(v.clone().mul_scalar(1.0 - t as f64));
    (v, x_hat)
}

/// One finished step of a [`Sampling`] run.
pub struct Step {
    /// Step index, 0-based.
    pub index: usize,
    /// Total number of steps.
    pub total: usize,
    /// The network's clean-image estimate x̂ `[B, C, H, W]` at the start of this step.
    pub x_hat: Tensor<4>,
}

/// A sampling run in progress; call [`Sampling::step`] until it returns `None`, then
/// [`Sampling::finish`].
pub struct Sampling<'a, N: Network> {
    net: &'a N,
    diffusion: DiffusionConfig,
    sampler: SamplerConfig,
    labels: Tensor<1, Int>,
    z: Tensor<4>,
    grid: Vec<f32>,
    index: usize,
    /// Heun's first half of step `index` when its second evaluation is still to come:
    /// the velocity at `t`, the Euler point at `t_next` and x̂ at `t`.
    half: Option<(Tensor<4>, Tensor<4>, Tensor<4>)>,
}

/// What one network evaluation ([`Sampling::advance`]) did.
#[allow(clippy::large_enum_variant)] // one value per network evaluation, moved once: no box
pub enum Progress {
    /// Heun's first evaluation of a step; the step finishes with the next call.
    Half,
    /// A finished step.
    Step(Step),
}

impl<'a, N: Network> Sampling<'a, N> {
    /// Starts from noise `z0` `[B, C, H, W]` (already scaled by `noise_scale`) with class
    /// `labels` `[B]` (the null class K gives unconditional samples).
    pub fn new(
        net: &'a N,
        diffusion: &DiffusionConfig,
        sampler: &SamplerConfig,
        z0: Tensor<4>,
        labels: Tensor<1, Int>,
    ) -> Result<Self, JitError> {
        sampler.validate()?;
        let [b, ..] = z0.dims();
        let t = Tensor::<1>::zeros([b], &z0.device());
        net.check_inputs(&z0, &t, &labels)?;
        Ok(Self {
            net,
            diffusion: diffusion.clone(),
            sampler: sampler.clone(),
            labels,
            z: z0,
            grid: timesteps(sampler.steps),
            index: 0,
            half: None,
        })
    }

    /// Total steps.
    pub fn total(&self) -> usize {
        self.sampler.steps
    }

    /// Advances one ODE step (one or two network evaluations); `None` when done.
    pub fn step(&mut self) -> Option<Step> {
        loop {
            match self.advance()? {
                Progress::Half => continue,
                Progress::Step(step) => return Some(step),
            }
        }
    }

    /// Runs one network evaluation (one guided forward pass, both CFG halves in one batch);
    /// `None` when done. A Heun step takes two calls, the last step and Euler steps one, so a
    /// caller that checks for cancellation between calls stops within one evaluation.
    pub fn advance(&mut self) -> Option<Progress> {
        let steps = self.sampler.steps;
        if self.index >= steps {
            return None;
        }
        let (t, t_next) = (self.grid[self.index], self.grid[self.index + 1]);
        let dt = (t_next - t) as f64;
        let (net, d, s) = (self.net, &self.diffusion, &self.sampler);
        let (v, x_hat) = match self.half.take() {
            Some((v, z_euler, x_hat)) => {
                let (v_next, _) = guided_velocity(net, d, s, z_euler, t_next, self.labels.clone());
                (v.add(v_next).mul_scalar(0.5), x_hat)
            }
            None => {
                let (v, x_hat) = guided_velocity(net, d, s, self.z.clone(), t, self.labels.clone());
                if s.method == Method::Heun && self.index + 1 < steps {
                    let z_euler = self.z.clone().add(v.clone().mul_scalar(dt));
                    self.half = Some((v, z_euler, x_hat));
                    return Some(Progress::Half);
                }
                (v, x_hat)
            }
        };
        self.z = self.z.clone().add(v.mul_scalar(dt));
        let step = Step { index: self.index, total: steps, x_hat };
        self.index += 1;
        Some(Progress::Step(step))
    }

    /// Waits until the device has run the work queued so far, by reading back one number of
    /// the state: a browser caller yields here and checks for cancellation between
    /// evaluations, instead of queueing them all at once.
    pub async fn wait(&self) -> Result<(), JitError> {
        let probe = self.half.as_ref().map_or(&self.z, |(_, z_euler, _)| z_euler);
        let one = probe.clone().slice([0..1, 0..1, 0..1, 0..1]);
        one.into_data_async().await.map(|_| ()).map_err(|e| JitError::Backend(format!("{e:?}")))
    }

    /// The current state (the image once all steps ran), `[B, C, H, W]` in about [-1, 1].
    pub fn finish(self) -> Tensor<4> {
        self.z
    }
}

/// Runs a whole [`Sampling`]; `on_step(step)` returns `false` to cancel
/// ([`JitError::Cancelled`]).
pub fn sample<N: Network>(
    net: &N,
    diffusion: &DiffusionConfig,
    sampler: &SamplerConfig,
    z0: Tensor<4>,
    labels: Tensor<1, Int>,
    mut on_step: impl FnMut(&Step) -> bool,
) -> Result<Tensor<4>, JitError> {
    let mut run = Sampling::new(net, diffusion, sampler, z0, labels)?;
    while let Some(step) = run.step() {
        if !on_step(&step) {
            return Err(JitError::Cancelled);
        }
    }
    Ok(run.finish())
}
