//! The whole state of a training run — the network, AdamW, both EMAs, the step and the seed —
//! and the one training loop body every front end uses: [`TrainState::apply`] for any loss
//! (the toy MLP, the eval classifier) and [`TrainState::train_step`] for the diffusion
//! objective. A JiT training state saves to and restores from one checkpoint file
//! ([`TrainState::to_checkpoint`], [`TrainState::from_checkpoint`]), so a run resumes exactly.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, FloatDType, Int, Tensor};

use crate::adamw::AdamW;
use crate::checkpoint::{self, CheckpointMeta, StoreDtype, WeightCopy};
use crate::config::{DiffusionConfig, MemoryLimit};
use crate::ema::Ema;
use crate::error::JitError;
use crate::loss_scale::{LossScale, gradients_finite};
use crate::model::Jit;
use crate::network::Network;
use crate::objective::{StepNoise, draw_noise_shard, loss};
use crate::optim::OptimConfig;
use crate::state_dict;

/// Weight copies holding AdamW's first and second moments in a training checkpoint.
const ADAMW_M: &str = "adamw_m";
const ADAMW_V: &str = "adamw_v";
/// Blob holding AdamW's step count of each parameter (JSON, visiting order).
const ADAMW_STEPS_BLOB: &str = "adamw_steps";
/// Blob holding the loss scale (JSON), in checkpoints of runs with f16 products.
const LOSS_SCALE_BLOB: &str = "loss_scale";
/// Blob holding burn's AdamW record in checkpoints of earlier versions.
const OPTIMIZER_BLOB: &str = "optimizer";
/// Blob holding the parameter ids (burn's AdamW record is keyed by them) beside it.
const PARAM_IDS_BLOB: &str = "param_ids";

/// A network in training with its optimizer and two EMAs.
pub struct TrainState<M> {
    /// The trained network (on an autodiff device).
    pub model: M,
    /// AdamW state.
    pub adamw: AdamW<M>,
    /// EMA with the first decay (used for sampling).
    pub ema1: Ema<M>,
    /// EMA with the second decay.
    pub ema2: Ema<M>,
    /// Optimiser settings (learning-rate schedule, EMA decays).
    pub optim_config: OptimConfig,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Base seed; diffusion step s draws its noise after `device.seed(seed + s)`.
    pub seed: u64,
    /// Dynamic loss scaling of [`Self::train_step`] and its variants (f16 products; see
    /// [`TrainState::set_matmul_dtype`]), `None` without.
    pub loss_scale: Option<LossScale>,
}

impl<M: Module> TrainState<M> {
    /// Starts training `model` (moved to the autodiff version of its device) at step 0.
    pub fn new(model: M, optim_config: OptimConfig, seed: u64) -> Self {
        let device = model.devices()[0].clone();
        let model = model.to_device(&device.autodiff()).train();
        let adamw = AdamW::new(&model);
        let ema1 = Ema::new(&model, optim_config.ema_decays.0);
        let ema2 = Ema::new(&model, optim_config.ema_decays.1);
        Self { model, adamw, ema1, ema2, optim_config, step: 0, seed, loss_scale: None }
    }

    /// The device training runs on (autodiff).
    pub fn device(&self) -> Device {
        self.model.devices()[0].clone()
    }

    /// The learning rate of the next step for `batch` images per step.
    pub fn lr(&self, batch: usize) -> f64 {
        self.optim_config.lr_at(self.step, batch)
    }

    /// One optimizer step on `loss` (computed from `self.model` on a batch of `batch`):
    /// backward, AdamW at the scheduled rate with both EMAs, step + 1.
    pub fn apply(&mut self, loss: Tensor<1>, batch: usize) {
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.apply_gradients(grads, batch);
    }

    /// [`Self::apply`] with the gradients already computed.
    pub fn apply_gradients(&mut self, grads: GradientsParams, batch: usize) {
        self.apply_scaled(grads, batch, 1.0);
    }

    /// [`Self::apply_gradients`] on gradients to be multiplied by `grad_scale` first.
    fn apply_scaled(&mut self, grads: GradientsParams, batch: usize, grad_scale: f32) {
        let lr = self.lr(batch);
        let emas = (&mut self.ema1, &mut self.ema2);
        self.adamw.step(&self.optim_config, lr, &mut self.model, grads, grad_scale, emas);
        self.step += 1;
    }
}

/// The gradient computation of one part of a batch (see [`TrainState::train_step_in_parts`]):
/// returns the part's share of the loss and its gradients.
pub type PartJob = Box<dyn FnOnce() -> (Tensor<1>, GradientsParams) + Send>;

impl<M: Module + Network + Send + 'static> TrainState<M> {
    /// One diffusion training step on clean images `x` `[B, C, H, W]` in [-1, 1] with labels
    /// `[B]`: seeded draws of t, ε and label dropout, the loss of `diffusion`, then [`Self::apply`].
    /// Returns the loss (one element, not yet read back).
    pub fn train_step(&mut self, diffusion: &DiffusionConfig, x: Tensor<4>, labels: Tensor<1, Int>) -> Tensor<1> {
        let [batch, ..] = x.dims();
        self.train_step_in_parts(diffusion, x, labels, &[batch], |jobs| jobs.into_iter().map(|job| job()).collect())
    }

    /// [`Self::train_step`] with the batch cut into consecutive parts of `sizes` images (summing
    /// to B). The draws are made for the whole batch as in `train_step`; each part's loss,
    /// weighted by its share of the batch, and its gradients are one [`PartJob`], which `run`
    /// executes (on other threads if it likes: each job has its own copy of the parameters and
    /// its own autodiff graph) and returns in order. Their gradients are summed into one
    /// optimizer step, so the step is `train_step`'s up to rounding. Only for networks without
    /// dropout, whose masks would otherwise be drawn in an order that depends on the threads.
    pub fn train_step_in_parts(
        &mut self,
        diffusion: &DiffusionConfig,
        x: Tensor<4>,
        labels: Tensor<1, Int>,
        sizes: &[usize],
        run: impl FnOnce(Vec<PartJob>) -> Vec<(Tensor<1>, GradientsParams)>,
    ) -> Tensor<1> {
        let shard = Shard::whole(x.dims()[0]);
        self.train_step_sharded(diffusion, x, labels, sizes, shard, run, |_, grads, loss| (grads, loss))
    }

    /// One data-parallel step: `x` `[b, C, H, W]` and `labels` `[b]` are images
    /// `shard.offset..shard.offset + b` of a global batch of `shard.global`, which other
    /// processes hold the rest of. Each image gets the draws it would get in one process
    /// training on the whole batch ([`draw_noise_shard`]); the local parts (`sizes`, run by
    /// `run` as in [`Self::train_step_in_parts`]) weigh their losses by their share of the
    /// global batch; `reduce` turns this process's summed gradients and loss into the global
    /// ones (an all-reduce sum over the processes); then every process takes the same AdamW
    /// and EMA step at the global batch's learning rate. Under loss scaling the losses are
    /// scaled for the backward pass and the gradients unscaled in the AdamW step; a step whose
    /// gradients are not finite changes no weight, moment or EMA (the step count still moves
    /// on, as the data does). Returns the global loss (unscaled).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_sharded(
        &mut self,
        diffusion: &DiffusionConfig,
        x: Tensor<4>,
        labels: Tensor<1, Int>,
        sizes: &[usize],
        shard: Shard,
        run: impl FnOnce(Vec<PartJob>) -> Vec<(Tensor<1>, GradientsParams)>,
        reduce: impl FnOnce(&M, GradientsParams, Tensor<1>) -> (GradientsParams, Tensor<1>),
    ) -> Tensor<1> {
        let device = self.device();
        let [_, c, h, w] = x.dims();
        let labels = labels.to_device(&device);
        device.seed(self.seed.wrapping_add(self.step));
        let global = [shard.global, c, h, w];
        let draw = draw_noise_shard(diffusion, self.model.null_class(), global, shard.offset, labels, &device);
        self.train_step_drawn(diffusion, x, draw, sizes, shard.global, run, reduce)
    }

    /// [`Self::train_step_sharded`] with this process's draws given (`draw`, for `x`'s images)
    /// and the global batch's size `global`.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_drawn(
        &mut self,
        diffusion: &DiffusionConfig,
        x: Tensor<4>,
        draw: StepNoise,
        sizes: &[usize],
        global: usize,
        run: impl FnOnce(Vec<PartJob>) -> Vec<(Tensor<1>, GradientsParams)>,
        reduce: impl FnOnce(&M, GradientsParams, Tensor<1>) -> (GradientsParams, Tensor<1>),
    ) -> Tensor<1> {
        let device = self.device();
        let batch = x.dims()[0];
        assert_eq!(sizes.iter().sum::<usize>(), batch, "parts must cover the batch");
        let x = x.to_device(&device);
        let scale = self.loss_scale.map_or(1.0, |s| s.scale);
        // The loss the backward pass starts from.
        let scaled = move |loss: &Tensor<1>| if scale == 1.0 { loss.clone() } else { loss.clone().mul_scalar(scale) };
        let (grads, loss) = if sizes.len() <= 1 {
            let mut loss = loss(&self.model, diffusion, x, draw);
            if batch != global {
                loss = loss.mul_scalar(batch as f64 / global as f64);
            }
            (GradientsParams::from_grads(scaled(&loss).backward(), &self.model), loss.without_autodiff())
        } else {
            let jobs = x
                .split_with_sizes(sizes.to_vec(), 0)
                .into_iter()
                .zip(draw.split(sizes))
                .zip(sizes)
                .map(|((x, draw), &part)| {
                    // A fork has the same parameter ids and values, as new leaves of its own graph.
                    let model = self.model.clone().fork(&device);
                    let diffusion = diffusion.clone();
                    let share = part as f64 / global as f64;
                    Box::new(move || {
                        let loss = loss(&model, &diffusion, x, draw).mul_scalar(share);
                        let grads = GradientsParams::from_grads(scaled(&loss).backward(), &model);
                        (loss.without_autodiff(), grads)
                    }) as PartJob
                })
                .collect();
            let (losses, grads): (Vec<_>, Vec<_>) = run(jobs).into_iter().unzip();
            let loss = losses.into_iter().reduce(|a, b| a.add(b)).expect("at least two parts");
            (sum_gradients(&self.model, grads), loss)
        };
        let (grads, loss) = reduce(&self.model, grads, loss);
        let take = match &mut self.loss_scale {
            Some(s) => s.update(gradients_finite(&self.model, &grads)),
            None => true,
        };
        if take {
            self.apply_scaled(grads, global, 1.0 / scale);
        } else {
            self.step += 1;
        }
        loss
    }
}

/// Where one process's images sit in the global batch of a data-parallel step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Index of this process's first image in the global batch.
    pub offset: usize,
    /// Images in the global batch (over all processes).
    pub global: usize,
}

impl Shard {
    /// The whole batch of `batch` images in one process.
    pub fn whole(batch: usize) -> Self {
        Self { offset: 0, global: batch }
    }
}

/// The sum of gradient sets of `model`'s parameters (a parameter missing from a set counts as
/// zero there).
pub fn sum_gradients<M: Module>(model: &M, parts: Vec<GradientsParams>) -> GradientsParams {
    struct Sum {
        parts: Vec<GradientsParams>,
        out: GradientsParams,
    }
    impl ModuleVisitor for Sum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let id: ParamId = param.id;
            let sum = self.parts.iter_mut().filter_map(|g| g.remove::<D>(id)).reduce(|a, b| a.add(b));
            if let Some(sum) = sum {
                self.out.register(id, sum);
            }
        }
    }
    let mut sum = Sum { parts, out: GradientsParams::new() };
    model.visit(&mut sum);
    sum.out
}

impl TrainState<Jit> {
    /// Products in `dtype` (`None`: f32) for the network and both EMAs. f16 turns dynamic loss
    /// scaling on (a scale restored from a checkpoint carries on); another type turns it off.
    pub fn set_matmul_dtype(&mut self, dtype: Option<FloatDType>) {
        self.model = self.model.clone().with_matmul_dtype(dtype);
        self.ema1.model = self.ema1.model.clone().with_matmul_dtype(dtype);
        self.ema2.model = self.ema2.model.clone().with_matmul_dtype(dtype);
        self.loss_scale = match dtype {
            Some(FloatDType::F16) => Some(self.loss_scale.unwrap_or_default()),
            _ => None,
        };
    }

    /// The whole state as one checkpoint file (f32 weights of `net`, `ema1`, `ema2`, AdamW's
    /// moments as two more copies and its step counts, the loss scale if any); `meta.step` is
    /// set to the current step.
    /// Fails with [`JitError::NonFinite`] when any weight copy holds NaN or ∞, so such weights
    /// never replace a good checkpoint.
    pub fn to_checkpoint(&self, meta: &CheckpointMeta) -> Result<Vec<u8>, JitError> {
        let mut meta = meta.clone();
        meta.step = self.step;
        let json = |e: serde_json::Error| JitError::Backend(e.to_string());
        let steps = serde_json::to_vec(&self.adamw.steps).map_err(json)?;
        let scale = self.loss_scale.as_ref().map(serde_json::to_vec).transpose().map_err(json)?;
        let mut blobs = vec![(ADAMW_STEPS_BLOB, &steps[..])];
        if let Some(scale) = &scale {
            blobs.push((LOSS_SCALE_BLOB, &scale[..]));
        }
        checkpoint::save_with_blobs(
            &meta,
            &[
                (WeightCopy::Net.prefix(), &self.model),
                (WeightCopy::Ema1.prefix(), &self.ema1.model),
                (WeightCopy::Ema2.prefix(), &self.ema2.model),
                (ADAMW_M, &self.adamw.m),
                (ADAMW_V, &self.adamw.v),
            ],
            StoreDtype::F32,
            &blobs,
        )
    }

    /// Restores a state saved by [`Self::to_checkpoint`] (or by earlier versions, which saved
    /// burn's AdamW record) on `device`, with `seed` and `optim_config` (which may differ from
    /// the saved run's: a new learning rate or schedule applies from here on). Every weight copy
    /// is checked (shapes, finiteness) and the memory `limit` before anything is built.
    pub fn from_checkpoint(
        bytes: &[u8],
        optim_config: OptimConfig,
        seed: u64,
        device: &Device,
        limit: MemoryLimit,
    ) -> Result<(Self, CheckpointMeta), JitError> {
        let load = |copy: &str| checkpoint::load_limited(bytes, copy, device, limit);
        let (net, meta) = load(WeightCopy::Net.prefix())?;
        let (ema1, _) = load(WeightCopy::Ema1.prefix())?;
        let (ema2, _) = load(WeightCopy::Ema2.prefix())?;
        let missing = |what: &str| {
            JitError::BadMetadata(format!(
                "no {what} in this file (is it an exported model, not a training checkpoint?)"
            ))
        };
        let adamw = if meta.copies.iter().any(|c| c == ADAMW_M) {
            let (m, _) = load(ADAMW_M)?;
            let (v, _) = load(ADAMW_V)?;
            // Second moments are sums of squares: a negative one is a damaged file (its step
            // would divide by the root of a negative number).
            let tensors = checkpoint::parse(bytes)?;
            let prefix = format!("{ADAMW_V}.");
            for name in tensors.names().into_iter().filter(|n| n.starts_with(&prefix)) {
                let view = tensors.tensor(name).map_err(|e| JitError::BadMetadata(e.to_string()))?;
                if checkpoint::decode(name, &view)?.data.iter().any(|v| *v < 0.0) {
                    return Err(JitError::BadMetadata(format!("corrupt AdamW state: {name} holds negative values")));
                }
            }
            let steps = checkpoint::blob(bytes, ADAMW_STEPS_BLOB)?.ok_or_else(|| missing("AdamW step counts"))?;
            let steps: Vec<u64> = serde_json::from_slice(&steps)
                .map_err(|e| JitError::BadMetadata(format!("corrupt AdamW step counts: {e}")))?;
            let params = state_dict::param_ids(&net).len();
            if steps.len() != params {
                return Err(JitError::BadMetadata(format!(
                    "corrupt AdamW step counts: {} for {params} parameters",
                    steps.len()
                )));
            }
            AdamW { m, v, steps }
        } else {
            // Burn's AdamW record, keyed by the parameter ids saved beside it.
            let record = checkpoint::blob(bytes, OPTIMIZER_BLOB)?.ok_or_else(|| missing("optimizer state"))?;
            let ids = checkpoint::blob(bytes, PARAM_IDS_BLOB)?.ok_or_else(|| missing("parameter ids"))?;
            let ids: BTreeMap<String, u64> = serde_json::from_slice(&ids)
                .map_err(|e| JitError::BadMetadata(format!("corrupt parameter ids: {e}")))?;
            AdamW::from_burn_record(&state_dict::set_param_ids(net.clone(), &ids), &record)?
        };
        let loss_scale = match checkpoint::blob(bytes, LOSS_SCALE_BLOB)? {
            None => None,
            Some(json) => Some(
                serde_json::from_slice::<LossScale>(&json)
                    .ok()
                    .and_then(LossScale::checked)
                    .ok_or_else(|| JitError::BadMetadata("corrupt loss scale".into()))?,
            ),
        };
        let mut state = Self::new(net, optim_config, seed);
        state.loss_scale = loss_scale;
        state.ema1.model = ema1;
        state.ema2.model = ema2;
        state.adamw = adamw;
        state.step = meta.step;
        Ok((state, meta))
    }
}
