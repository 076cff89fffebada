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
        let steps = vec![0; Flat::of(model).len()];
        Self { m: zeros.clone(), v: zeros, steps }
    }

    /// One AdamW step of `model` at learning rate `lr` on `grads`, with both EMA updates
    /// towards the new weights; returns the new model (parameter ids and autodiff settings
    /// kept).
    pub fn step(
        &mut self,
        config: &OptimConfig,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
        (ema1, ema2): (&mut Ema<M>, &mut Ema<M>),
    ) -> M {
        let mut params = Params { grads: &mut grads, out: Vec::new() };
        model.visit(&mut params);
        let params = params.out;
        let [m, v, e1, e2] = [&self.m, &self.v, &ema1.model, &ema2.model].map(Flat::of);
        assert!(
            [m.len(), v.len(), e1.len(), e2.len(), self.steps.len()].iter().all(|&n| n == params.len()),
            "AdamW: the moments, the EMAs and the model have the same parameters"
        );
        let mut state: Vec<Option<[Tensor<1>; 4]>> =
            m.into_iter().zip(v).zip(e1).zip(e2).map(|(((m, v), e1), e2)| Some([m, v, e1, e2])).collect();
        let mut updated: Vec<Option<[Tensor<1>; 5]>> = vec![None; params.len()];

        // Parameters with a gradient, grouped by what sets their factors: step count and decay.
        let mut groups: Vec<((u64, bool), Vec<usize>)> = Vec::new();
        for (i, p) in params.iter().enumerate().filter(|(_, p)| p.grad.is_some()) {
            let key = (self.steps[i] + 1, p.decays);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let decays = (ema1.decay, ema2.decay);
        for ((step, decayed), members) in groups {
            let wd = if decayed { config.weight_decay } else { 0.0 };
            let factors = AdamWEmaFactors::new(lr, wd, (config.beta1, config.beta2), config.epsilon, step, decays);
            let (values, grads) = members
                .iter()
                .map(|&i| (params[i].value.clone(), params[i].grad.clone().expect("grouped with a gradient")))
                .unzip();
            let states = members.iter().map(|&i| state[i].take().expect("each parameter once")).collect();
            for (&i, out) in members.iter().zip(ops::adamw_ema(values, grads, states, factors)) {
                updated[i] = Some(out);
                self.steps[i] = step;
            }
        }
        // The rest keep their value and moments; their EMAs still move.
        let (d1, d2) = decays;
        let blend = |e: Tensor<1>, theta: &Tensor<1>, d: f64| e.mul_scalar(d).add(theta.clone().mul_scalar(1.0 - d));
        for (i, p) in params.iter().enumerate() {
            if let Some([m, v, e1, e2]) = state[i].take() {
                updated[i] = Some([p.value.clone(), m, v, blend(e1, &p.value, d1), blend(e2, &p.value, d2)]);
            }
        }

        let mut lists: [Vec<Tensor<1>>; 5] = Default::default();
        for out in updated {
            for (list, t) in lists.iter_mut().zip(out.expect("every parameter updated")) {
                list.push(t);
            }
        }
        let [theta, m, v, e1, e2] = lists;
        self.m = self.m.clone().map(&mut Replace(m.into_iter()));
        self.v = self.v.clone().map(&mut Replace(v.into_iter()));
        ema1.model = ema1.model.clone().map(&mut Replace(e1.into_iter()));
        ema2.model = ema2.model.clone().map(&mut Replace(e2.into_iter()));
        model.map(&mut Replace(theta.into_iter()))
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

/// One parameter of the model in a step.
struct Param1 {
    /// Its value, flat and off the autodiff graph.
    value: Tensor<1>,
    /// Its gradient, flat, if it has one this step.
    grad: Option<Tensor<1>>,
    /// Whether weight decay applies (matrices, not 1-D parameters such as biases and gains).
    decays: bool,
}

/// Collects the model's parameters with their gradients, in visiting order.
struct Params<'a> {
    grads: &'a mut GradientsParams,
    out: Vec<Param1>,
}

impl ModuleVisitor for Params<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id: ParamId = param.id;
        let grad = self.grads.remove::<D>(id).map(|g| g.reshape([-1]));
        let value = param.val().without_autodiff().reshape([-1]);
        self.out.push(Param1 { value, grad, decays: D >= 2 });
    }
}

/// Every float parameter of a module, flat and off the autodiff graph, in visiting order.
struct Flat(Vec<Tensor<1>>);

impl Flat {
    fn of<M: Module>(module: &M) -> Vec<Tensor<1>> {
        let mut flat = Flat(Vec::new());
        module.visit(&mut flat);
        flat.0
    }
}

impl ModuleVisitor for Flat {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().without_autodiff().reshape([-1]));
    }
}

/// Sets each parameter to zeros of its shape.
struct Zeros;

impl ModuleMapper for Zeros {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| t.zeros_like())
    }
}

/// Sets each parameter to the next of a list of flat values, in visiting order, keeping its id
/// and, for a parameter on the autodiff graph, its gradient and checkpointing settings.
struct Replace(std::vec::IntoIter<Tensor<1>>);

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let value = self.0.next().expect("one value per parameter");
        param.map(|old| {
            let new = value.reshape(old.dims());
            if !old.is_autodiff() {
                return new;
            }
            let mut new = Tensor::from_inner(new);
            if let Some(strategy) = old.gradient_checkpointing_strategy() {
                new = new.with_gradient_checkpointing_strategy(strategy);
            }
            if old.is_require_grad() { new.require_grad() } else { new }
        })
    }
}
