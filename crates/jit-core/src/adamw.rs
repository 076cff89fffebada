//! AdamW and both EMA updates as one step over every parameter ([`crate::ops::adamw_ema`]: on a
//! GPU many parameters per launch, as PyTorch's fused multi-tensor AdamW). The moments are kept
//! as two copies of the network's shape, so they save and load as weight copies do.
//!
//! The maths is burn's AdamW's (and the reference's `torch.optim.AdamW`): per parameter, its own
//! step count for the bias corrections, decoupled weight decay on matrices only, and a parameter
//! without a gradient this step left as it is (its EMAs still move towards it).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Bytes, Tensor, TensorData};

use crate::ema::Ema;
use crate::error::JitError;
use crate::ops::{self, AdamWEmaFactors};
use crate::optim::OptimConfig;

/// AdamW's state for a network `M`.
#[derive(Debug, Clone)]
pub struct AdamW<M> {
    /// First moments, one per parameter, in a copy of the network (off the autodiff graph).
    pub m: M,
    /// Second moments.
    pub v: M,
    /// Steps each parameter has taken, in visiting order (its bias correction's `t`).
    pub steps: Vec<u64>,
}

impl<M: Module> AdamW<M> {
    /// Fresh state for `model`: zero moments (the first step's moments come out as burn's
    /// AdamW starts them), no steps taken.
    pub fn new(model: &M) -> Self {
        let zeros = model.valid().map(&mut Zeros);
        let mut params = Shapes(Vec::new());
        model.visit(&mut params);
        let steps = vec![0; params.0.len()];
        Self { m: zeros.clone(), v: zeros, steps }
    }

    /// One AdamW step of `model` at learning rate `lr` on `grads` times `grad_scale` (1, or the
    /// loss scale's inverse), with both EMA updates towards the new weights, in place
    /// (parameter ids and autodiff settings kept). The old
    /// values are moved out of the modules first, so each launch's inputs are freed as it ends:
    /// the step holds at most one launch's new values beside the old ones.
    pub fn step(
        &mut self,
        config: &OptimConfig,
        lr: f64,
        model: &mut M,
        mut grads: GradientsParams,
        grad_scale: f32,
        (ema1, ema2): (&mut Ema<M>, &mut Ema<M>),
    ) {
        let params = take(model, Some(&mut grads));
        let [m, v, e1, e2] = [&mut self.m, &mut self.v, &mut ema1.model, &mut ema2.model].map(|m| take(m, None));
        let n = params.len();
        assert!(
            [m.len(), v.len(), e1.len(), e2.len(), self.steps.len()].iter().all(|&k| k == n),
            "AdamW: the moments, the EMAs and the model have the same parameters"
        );
        let (mut values, mut grads): (Vec<_>, Vec<_>) =
            params.iter().map(|p| (Some(p.value.clone()), p.grad.clone())).unzip();
        let contexts: Vec<Context> = params.into_iter().map(|p| p.context).collect();
        let mut state: Vec<Option<[Tensor<1>; 4]>> = m
            .into_iter()
            .zip(v)
            .zip(e1)
            .zip(e2)
            .map(|(((m, v), e1), e2)| Some([m.value, v.value, e1.value, e2.value]))
            .collect();
        let mut updated: Vec<Option<[Tensor<1>; 5]>> = vec![None; n];

        // Parameters with a gradient, grouped by what sets their factors: step count and decay.
        let mut groups: Vec<((u64, bool), Vec<usize>)> = Vec::new();
        for i in (0..n).filter(|&i| grads[i].is_some()) {
            let key = (self.steps[i].saturating_add(1), contexts[i].decays);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let decays = (ema1.decay, ema2.decay);
        for ((step, decayed), members) in groups {
            let wd = if decayed { config.weight_decay } else { 0.0 };
            let factors = AdamWEmaFactors::new(lr, wd, (config.beta1, config.beta2), config.epsilon, step, decays)
                .with_grad_scale(grad_scale);
            let once = "each parameter in one group";
            let group_values = members.iter().map(|&i| values[i].take().expect(once)).collect();
            let group_grads = members.iter().map(|&i| grads[i].take().expect(once)).collect();
            let states = members.iter().map(|&i| state[i].take().expect(once)).collect();
            for (&i, out) in members.iter().zip(ops::adamw_ema(group_values, group_grads, states, factors)) {
                updated[i] = Some(out);
                self.steps[i] = step;
            }
        }
        // The rest keep their value and moments; their EMAs still move.
        let (d1, d2) = decays;
        let blend = |e: Tensor<1>, theta: &Tensor<1>, d: f64| e.mul_scalar(d).add(theta.clone().mul_scalar(1.0 - d));
        for i in 0..n {
            if let (Some([m, v, e1, e2]), Some(value)) = (state[i].take(), values[i].take()) {
                let (e1, e2) = (blend(e1, &value, d1), blend(e2, &value, d2));
                updated[i] = Some([value, m, v, e1, e2]);
            }
        }

        let mut lists: [Vec<Tensor<1>>; 5] = Default::default();
        for out in updated {
            for (list, t) in lists.iter_mut().zip(out.expect("every parameter updated")) {
                list.push(t);
            }
        }
        let [theta, m, v, e1, e2] = lists;
        put(model, theta, &contexts);
        let state_contexts: Vec<Context> = contexts.iter().map(|c| Context { autodiff: None, ..c.clone() }).collect();
        for (module, values) in [(&mut self.m, m), (&mut self.v, v), (&mut ema1.model, e1), (&mut ema2.model, e2)] {
            put(module, values, &state_contexts);
        }
    }
}

impl<M: Module> AdamW<M> {
    /// The state saved by burn's `ModuleOptimizer` (AdamW) in `record` (its burnpack bytes, the
    /// `optimizer` blob of checkpoints written before this type), for `model` whose parameters
    /// carry the ids the record was saved with. A parameter without saved state starts afresh,
    /// as burn's would.
    pub fn from_burn_record(model: &M, record: &[u8]) -> Result<Self, JitError> {
        let corrupt = |e: &dyn std::fmt::Debug| JitError::BadMetadata(format!("corrupt optimizer state: {e:?}"));
        let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(record.to_vec())).map_err(|e| corrupt(&e))?;
        let scalars = reader.scalars().clone();
        let mut tensors = std::collections::HashMap::new();
        for tensor in reader.into_tensors().map_err(|e| corrupt(&e))? {
            let (name, dtype, shape, _, bytes) = tensor.into_parts().map_err(|e| corrupt(&e))?;
            tensors.insert(name, TensorData::from_bytes(bytes, shape, dtype));
        }
        let mut params = Shapes(Vec::new());
        model.visit(&mut params);
        let device = model.devices().first().cloned().unwrap_or_default();
        let (mut m, mut v, mut steps) = (Vec::new(), Vec::new(), Vec::new());
        for (id, shape) in params.0 {
            let id = id.val();
            let len: usize = shape.iter().product();
            let time = scalars.get(&format!("{id}.momentum.time"));
            let mut moment = |k: usize| -> Result<Tensor<1>, JitError> {
                let name = format!("{id}.momentum.moment_{k}");
                let Some(data) = tensors.remove(&name) else {
                    return Ok(Tensor::zeros([len], &device));
                };
                if data.shape().to_vec() != shape || data.dtype() != burn::tensor::DType::F32 {
                    return Err(corrupt(&format!(
                        "{name} is {:?} {:?}, its parameter f32 {shape:?}",
                        data.dtype(),
                        data.shape()
                    )));
                }
                let values = data.try_to_vec::<f32>().map_err(|e| corrupt(&e))?;
                if values.iter().any(|x| !x.is_finite()) {
                    return Err(JitError::NonFinite(format!("the optimizer state {name}")));
                }
                Ok(Tensor::from_floats(values.as_slice(), &device))
            };
            m.push(moment(1)?);
            v.push(moment(2)?);
            steps.push(match time {
                Some(t) => u64::try_from(*t).map_err(|e| corrupt(&e))?,
                None => 0,
            });
        }
        let zeros = model.valid().map(&mut Zeros);
        Ok(Self { m: zeros.clone().map(&mut Replace(m.into_iter())), v: zeros.map(&mut Replace(v.into_iter())), steps })
    }
}

/// Each parameter's id and shape, in visiting order.
struct Shapes(Vec<(ParamId, Vec<usize>)>);

impl ModuleVisitor for Shapes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, param.shape().to_vec()));
    }
}

/// A parameter's value moved out of its module by [`take`].
struct Taken {
    /// The value, flat and off the autodiff graph.
    value: Tensor<1>,
    /// Its gradient, flat, if it has one this step (when taken with gradients).
    grad: Option<Tensor<1>>,
    /// What [`put`] restores.
    context: Context,
}

/// What a parameter keeps when its value is replaced.
#[derive(Debug, Clone)]
struct Context {
    /// Its shape.
    dims: Vec<usize>,
    /// Whether it is on the autodiff graph, and then its checkpointing strategy and whether it
    /// requires a gradient.
    autodiff: Option<(Option<burn::tensor::GradientCheckpointingStrategy>, bool)>,
    /// Whether weight decay applies (matrices, not 1-D parameters such as biases and gains).
    decays: bool,
}

/// Moves every parameter's value out of `module` (leaving empty placeholders), with its
/// gradient from `grads` where given, in visiting order.
fn take<M: Module>(module: &mut M, grads: Option<&mut GradientsParams>) -> Vec<Taken> {
    let mut take = Take { grads, out: Vec::new() };
    *module = module.clone().map(&mut take);
    take.out
}

struct Take<'a> {
    grads: Option<&'a mut GradientsParams>,
    out: Vec<Taken>,
}

impl ModuleMapper for Take<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id: ParamId = param.id;
        let grad = self.grads.as_mut().and_then(|g| g.remove::<D>(id)).map(|g| g.reshape([-1]));
        param.map(|value| {
            let autodiff =
                value.is_autodiff().then(|| (value.gradient_checkpointing_strategy(), value.is_require_grad()));
            let context = Context { dims: value.dims().to_vec(), autodiff, decays: D >= 2 };
            let placeholder = Tensor::<D>::empty([0; D], &value.device());
            self.out.push(Taken { value: value.without_autodiff().reshape([-1]), grad, context });
            placeholder
        })
    }
}

/// Puts flat `values` into the placeholders [`take`] left in `module`, in visiting order, each
/// with its parameter's `contexts` entry (shape, autodiff settings).
fn put<M: Module>(module: &mut M, values: Vec<Tensor<1>>, contexts: &[Context]) {
    assert_eq!(values.len(), contexts.len(), "one value per parameter");
    let mut put = Put { values: values.into_iter().zip(contexts.iter()) };
    *module = module.clone().map(&mut put);
}

struct Put<'a> {
    values: std::iter::Zip<std::vec::IntoIter<Tensor<1>>, std::slice::Iter<'a, Context>>,
}

impl ModuleMapper for Put<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (value, context) = self.values.next().expect("one value per parameter");
        let dims: [usize; D] = context.dims.clone().try_into().expect("the parameter's rank");
        param.map(|_placeholder| {
            let value = value.reshape(dims);
            let Some((strategy, require_grad)) = context.autodiff else { return value };
            let mut value = Tensor::from_inner(value);
            if let Some(strategy) = strategy {
                value = value.with_gradient_checkpointing_strategy(strategy);
            }
            if require_grad { value.require_grad() } else { value }
        })
    }
}

/// Sets each parameter to zeros of its shape.
struct Zeros;

impl ModuleMapper for Zeros {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.zeros_like())
    }
}

/// Sets each parameter (off the autodiff graph) to the next of a list of flat values, in
/// visiting order, keeping its id.
struct Replace(std::vec::IntoIter<Tensor<1>>);

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let value = self.0.next().expect("one value per parameter");
        param.map(|old| value.reshape(old.dims()))
    }
}
