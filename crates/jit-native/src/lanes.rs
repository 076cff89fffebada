//! Data-parallel work on the CPU: sampling and training split the *batch* over the cores.
//!
//! Flex splits every tensor operation over all cores and joins them again before the next one.
//! A JiT step is a few hundred such operations on mid-sized tensors, so the cores spend much of
//! it waiting for each other and for the calling thread. [`CpuLanes`] instead gives each core
//! its own part of the images on a single-thread pool, where every operation runs without
//! forking. No operation of the network mixes images, so each lane samples its images as the
//! whole batch would (its own ODE from start to end, joined only at the end), and a split
//! training step sums the parts' gradients into one optimizer step (docs/cpu.md has the timings).

use std::sync::mpsc;

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor};
use jit_core::sampler::{Sampling, Step};
use jit_core::train_state::{PartJob, Shard};
use jit_core::{DiffusionConfig, Jit, JitConfig, JitError, MemoryLimit, Network, SamplerConfig, TrainState};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// The fewest images a training part gets: every part adds a set of gradients to sum on the
/// calling thread, which has to stay small next to the part's own work. (Measured on 2 cores
/// only, where batches of 32 split in two.)
const MIN_TRAINING_PART: usize = 4;

/// One single-thread pool per core of the CPU backend.
pub struct CpuLanes {
    /// One pool per lane; empty when work is not split.
    pools: Vec<ThreadPool>,
}

impl CpuLanes {
    /// One lane per thread of rayon's pool on the CPU backend (Flex, `device` without
    /// autodiff); on a GPU none (one device, one queue: nothing to gain).
    pub fn new(device: &Device) -> Self {
        Self::with_lanes(if *device == Device::flex() { rayon::current_num_threads() } else { 1 })
    }

    /// Up to `lanes` lanes (fewer when the operating system refuses threads).
    pub fn with_lanes(lanes: usize) -> Self {
        let pools = if lanes < 2 {
            Vec::new()
        } else {
            (0..lanes)
                .map_while(|i| {
                    ThreadPoolBuilder::new().num_threads(1).thread_name(move |_| format!("jit-lane-{i}")).build().ok()
                })
                .collect()
        };
        Self { pools }
    }

    /// The parts a batch of `batch` images is cut into: one per lane, at most `parts` (and one
    /// per image), as equal as can be.
    pub fn sizes(&self, batch: usize, parts: usize) -> Vec<usize> {
        let lanes = self.pools.len().min(parts).min(batch).max(1);
        (0..lanes).map(|i| batch / lanes + usize::from(i < batch % lanes)).collect()
    }

    /// Runs each job on its own lane, all at once; the results in order.
    fn run<T: Send>(&self, jobs: Vec<impl FnOnce() -> T + Send>) -> Vec<T> {
        self.run_while(jobs, || {})
    }

    /// [`Self::run`], with `meanwhile` on the calling thread while the lanes work (after the
    /// jobs, when there are fewer than two and they ran on the calling thread).
    fn run_while<T: Send>(&self, jobs: Vec<impl FnOnce() -> T + Send>, meanwhile: impl FnOnce()) -> Vec<T> {
        if jobs.len() < 2 {
            let out = jobs.into_iter().map(|job| job()).collect();
            meanwhile();
            return out;
        }
        assert!(jobs.len() <= self.pools.len(), "a lane per job");
        std::thread::scope(|scope| {
            let running: Vec<_> =
                self.pools.iter().zip(jobs).map(|(pool, job)| scope.spawn(move || pool.install(job))).collect();
            meanwhile();
            running
                .into_iter()
                .map(|lane| lane.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }

    /// The sampler ([`Sampling`]) from noise `z0` `[B, C, H, W]` with `labels` `[B]`, one part
    /// of the images per lane, each lane running its part's whole ODE (both CFG halves of its
    /// images, the guidance and the Heun updates) without waiting for the others; the parts
    /// are joined at the end. Split per network evaluation instead, the lanes waited for each
    /// other and for the calling thread's guidance and update twice per step (≈ 9 % of two
    /// cores idle in JiT-S/4 sampling). `on_step` sees every step's x̂ of the whole batch, on the
    /// calling thread, as soon as every lane has finished that step. `max_steps` stops after
    /// that many steps (the state is then the partly denoised batch).
    #[allow(clippy::too_many_arguments)] // `Sampling::new`'s inputs, plus where to stop and what to call per step
    pub fn sample<N: Network + Sync>(
        &self,
        net: &N,
        diffusion: &DiffusionConfig,
        sampler: &SamplerConfig,
        z0: Tensor<4>,
        labels: Tensor<1, Int>,
        max_steps: Option<usize>,
        mut on_step: impl FnMut(&Step),
    ) -> Result<Tensor<4>, JitError> {
        let batch = z0.dims()[0];
        let sizes = self.sizes(batch, batch);
        let steps = max_steps.unwrap_or(usize::MAX);
        // The whole ODE of one part, handing each step's x̂ to `send`.
        let run = |z0: Tensor<4>, labels: Tensor<1, Int>, send: &mut dyn FnMut(Step)| -> Result<Tensor<4>, JitError> {
            let mut sampling = Sampling::new(net, diffusion, sampler, z0, labels)?;
            for _ in 0..steps {
                let Some(step) = sampling.step() else { break };
                send(step);
            }
            Ok(sampling.finish())
        };
        if sizes.len() < 2 {
            // On one lane (and on a GPU) the steps go straight to `on_step`, none queued.
            return run(z0, labels, &mut |step| on_step(&step));
        }
        let (jobs, steps): (Vec<_>, Vec<_>) = z0
            .split_with_sizes(sizes.clone(), 0)
            .into_iter()
            .zip(labels.split_with_sizes(sizes, 0))
            .map(|(z0, labels)| {
                let (tx, rx) = mpsc::channel::<Step>();
                let run = &run;
                (move || run(z0, labels, &mut |step| drop(tx.send(step))), rx)
            })
            .unzip();
        // Step by step, once every lane has sent it (each sends its steps in order; a lane that
        // stopped early, with an error, ends the previews).
        let previews = || {
            while let Ok(parts) = steps.iter().map(|rx| rx.recv()).collect::<Result<Vec<Step>, _>>() {
                let (index, total) = (parts[0].index, parts[0].total);
                on_step(&Step { index, total, x_hat: Tensor::cat(parts.into_iter().map(|p| p.x_hat).collect(), 0) });
            }
        };
        let outs = self.run_while(jobs, previews).into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(outs, 0))
    }

    /// [`TrainState::train_step`] with the batch cut as [`Self::training_sizes`] says, each
    /// part's gradients on its own lane.
    pub fn train_step(
        &self,
        state: &mut TrainState<Jit>,
        diffusion: &DiffusionConfig,
        x: Tensor<4>,
        labels: Tensor<1, Int>,
        limit: MemoryLimit,
    ) -> Tensor<1> {
        let sizes = self.training_sizes(&state.model.config, x.dims()[0], limit);
        state.train_step_in_parts(
            diffusion,
            x,
            labels,
            &sizes,
            |jobs: Vec<PartJob>| -> Vec<(Tensor<1>, GradientsParams)> { self.run(jobs) },
        )
    }

    /// [`Self::train_step`] for one rank of a data-parallel run: `x` are the images of `shard`
    /// in the global batch, cut over the lanes as a whole batch would be; `reduce` sums the
    /// gradients and loss over the ranks (see `TrainState::train_step_sharded`).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_sharded(
        &self,
        state: &mut TrainState<Jit>,
        diffusion: &DiffusionConfig,
        x: Tensor<4>,
        labels: Tensor<1, Int>,
        limit: MemoryLimit,
        shard: Shard,
        reduce: impl FnOnce(&Jit, GradientsParams, Tensor<1>) -> (GradientsParams, Tensor<1>),
    ) -> Tensor<1> {
        let sizes = self.training_sizes(&state.model.config, x.dims()[0], limit);
        state.train_step_sharded(diffusion, x, labels, &sizes, shard, |jobs| self.run(jobs), reduce)
    }

    /// The parts a training batch of `batch` images is cut into: one per lane, as many as the
    /// memory `limit` leaves room for (each part holds its own gradients) and with at least
    /// [`MIN_TRAINING_PART`] images each; a model with dropout takes the batch whole (its masks
    /// would be drawn in an order that depends on the threads).
    pub fn training_sizes(&self, config: &JitConfig, batch: usize, limit: MemoryLimit) -> Vec<usize> {
        if config.attn_drop > 0.0 || config.proj_drop > 0.0 {
            return vec![batch];
        }
        let wanted = self.pools.len().min(batch / MIN_TRAINING_PART);
        self.sizes(batch, limit.training_parts(config, batch, wanted))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use jit_core::host::{HostTensor, labels, read_f32};
    use jit_core::optim::OptimConfig;
    use jit_core::rng::PortableRng;
    use jit_core::{Jit, JitConfig, SamplerConfig, state_dict};

    use super::*;

    /// JiT-T/4 on 16² with every parameter drawn at random (a fresh model's zero-initialised
    /// output layers would hide a mix-up of images).
    fn random_model(device: &Device) -> Jit {
        random_model_of(JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap(), device)
    }

    fn random_model_of(config: JitConfig, device: &Device) -> Jit {
        let net = Jit::new(&config, device).unwrap();
        let mut rng = PortableRng::new(3);
        let values: HashMap<_, _> = state_dict::expected_shapes(&net)
            .into_iter()
            .map(|(key, shape)| {
                let data = rng.normals(shape.iter().product()).into_iter().map(|v| v * 0.3).collect();
                (key, HostTensor { shape, data })
            })
            .collect();
        state_dict::load(net, |key| values.get(key).cloned()).unwrap()
    }

    #[test]
    fn every_image_comes_out_as_the_whole_batch_samples_it() {
        let device = Device::flex();
        let net = random_model(&device);
        let diffusion = DiffusionConfig::default();
        // Three Heun steps with guidance on part of the interval: evaluations with both CFG
        // halves and with the conditional one only.
        let sampler = SamplerConfig { steps: 3, cfg: 2.9, interval: (0.3, 1.0), ..SamplerConfig::default() };
        let batch = 5;
        let z0 = PortableRng::new(1).noise([batch, 3, 16, 16], 1.0, &device);
        let y = labels(&[0, 3, 10, 7, 1], &device);
        let mut whole_steps = Vec::new();
        let whole = CpuLanes::with_lanes(1)
            .sample(&net, &diffusion, &sampler, z0.clone(), y.clone(), None, |s| {
                whole_steps.push((s.index, read_f32(s.x_hat.clone()).unwrap()))
            })
            .unwrap();
        let whole = read_f32(whole).unwrap();
        // Products over fewer rows may take other kernels of `gemm`, which round differently.
        let tolerance = 4e-5 * whole.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        for lanes in [2, 3, 8] {
            let cpu = CpuLanes::with_lanes(lanes);
            assert_eq!(cpu.sizes(batch, batch).len(), lanes.min(batch));
            let mut steps = Vec::new();
            let parts = cpu
                .sample(&net, &diffusion, &sampler, z0.clone(), y.clone(), None, |s| {
                    steps.push((s.index, read_f32(s.x_hat.clone()).unwrap()))
                })
                .unwrap();
            let parts = read_f32(parts).unwrap();
            assert_eq!(parts.len(), whole.len());
            let w = worst(&whole, &parts);
            assert!(
                w <= tolerance,
                "{lanes} lanes: images differ from the whole batch's by {w} (tolerance {tolerance})"
            );
            assert_eq!(steps.len(), whole_steps.len(), "{lanes} lanes: every step is reported");
            for ((i, a), (j, b)) in whole_steps.iter().zip(&steps) {
                assert_eq!(i, j, "steps in order");
                assert!(worst(a, b) <= tolerance, "{lanes} lanes: x̂ of step {i} differs");
            }
        }
        // Stopping early gives the state after that many steps, on lanes too.
        let one = read_f32(
            CpuLanes::with_lanes(2).sample(&net, &diffusion, &sampler, z0.clone(), y.clone(), Some(1), |_| {}).unwrap(),
        )
        .unwrap();
        assert!(worst(&one, &whole) > 1e-2, "one step is not the whole run");
        // The check is meaningful: images differ from each other, so a mix-up would show.
        let image = whole.len() / batch;
        assert!(whole[..image].iter().zip(&whole[image..2 * image]).any(|(a, b)| (a - b).abs() > 1e-3));
    }

    /// Every parameter of `net`, flattened in key order.
    fn all_params(net: &Jit) -> Vec<f32> {
        state_dict::export(net).unwrap().into_values().flat_map(|t| t.data).collect()
    }

    /// One training step of the whole batch and one through `lanes` from the same state:
    /// (loss, weights after the step) of each.
    fn step_both_ways(config: JitConfig, lanes: &CpuLanes) -> [(f32, Vec<f32>); 2] {
        // The draws come from the device's one generator: one such test at a time.
        static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _rng = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let device = Device::flex();
        // ε = 1: AdamW's first update is g/(|g| + 1), so the weights after one step show the
        // gradients (with the default ε it is ±lr·sign(g)).
        let optim = OptimConfig { lr: Some(1.0), epsilon: 1.0, ..OptimConfig::default() };
        let diffusion = DiffusionConfig::default();
        let model = random_model_of(config, &device);
        let x = PortableRng::new(2).noise([8, 3, 16, 16], 0.5, &device);
        let y = labels(&[0, 1, 2, 3, 4, 5, 6, 7], &device);
        let mut whole = TrainState::new(model.clone(), optim.clone(), 9);
        let mut split = TrainState::new(model, optim, 9);
        let a: f32 = whole.train_step(&diffusion, x.clone(), y.clone()).into_scalar();
        let b: f32 = lanes.train_step(&mut split, &diffusion, x, y, MemoryLimit(1 << 30)).into_scalar();
        [(a, all_params(&whole.model)), (b, all_params(&split.model))]
    }

    #[test]
    fn a_training_step_on_lanes_is_the_whole_batch_step() {
        let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
        let lanes = CpuLanes::with_lanes(2);
        assert_eq!(
            lanes.training_sizes(&config, 8, MemoryLimit(1 << 30)),
            [4, 4],
            "the step this test compares is split"
        );
        let [(loss, weights), (lanes_loss, lanes_weights)] = step_both_ways(config, &lanes);
        assert!((loss - lanes_loss).abs() <= 1e-5 * loss.abs(), "loss {loss} vs {lanes_loss} on lanes");
        let worst = weights.iter().zip(&lanes_weights).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "weights after the step differ by {worst}");
    }

    #[test]
    fn a_model_with_dropout_trains_on_the_whole_batch() {
        // Dropout masks drawn on the lanes would depend on the threads' order: the step must be
        // exactly the whole batch's.
        let config = JitConfig { proj_drop: 0.5, ..JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap() };
        let lanes = CpuLanes::with_lanes(2);
        assert_eq!(lanes.training_sizes(&config, 8, MemoryLimit(1 << 30)), [8]);
        let [(loss, weights), (lanes_loss, lanes_weights)] = step_both_ways(config, &lanes);
        assert_eq!(loss, lanes_loss);
        assert_eq!(weights, lanes_weights);
    }

    #[test]
    fn training_parts_have_at_least_four_images_and_fit_the_memory_limit() {
        let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
        let lanes = CpuLanes::with_lanes(3);
        let roomy = MemoryLimit(1 << 30);
        assert_eq!(lanes.training_sizes(&config, 32, roomy), [11, 11, 10]);
        assert_eq!(lanes.training_sizes(&config, 8, roomy), [4, 4]);
        assert_eq!(lanes.training_sizes(&config, 7, roomy), [7]);
        // Room for the step and one more set of gradients: two parts.
        let tight = MemoryLimit(config.train_bytes(32) + 4 * config.param_count());
        assert_eq!(lanes.training_sizes(&config, 32, tight), [16, 16]);
    }
}
