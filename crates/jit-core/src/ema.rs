//! Exponential moving average of the weights: `ema ← decay·ema + (1 − decay)·θ` after every
//! optimizer step (the reference keeps two, decays 0.9999 and 0.9996, and samples with the first).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// An EMA copy of a network, kept off the autodiff graph.
#[derive(Debug, Clone)]
pub struct Ema<M> {
    /// Decay per update, e.g. 0.9999.
    pub decay: f64,
    /// The averaged network (plain, non-autodiff device).
    pub model: M,
}

impl<M: Module> Ema<M> {
    /// Starts the average at the current weights of `model`.
    pub fn new(model: &M, decay: f64) -> Self {
        Self { decay, model: model.valid() }
    }

    /// Moves both averages towards `model`'s current weights, each parameter's two updates in
    /// one pass ([`crate::ops::ema_pair`]: one kernel per parameter on a GPU).
    pub fn update_pair(first: &mut Self, second: &mut Self, model: &M) {
        let theta = Collect::of(model);
        let seconds = Collect::of(&second.model);
        let mut blend = Blend {
            theta: theta.into_iter(),
            second: seconds.into_iter(),
            decays: (first.decay, second.decay),
            updated: Vec::new(),
        };
        first.model = first.model.clone().map(&mut blend);
        second.model = second.model.clone().map(&mut Replace(blend.updated.into_iter()));
    }
}

/// Every float parameter of a module, off the autodiff graph and flattened, in visiting order.
struct Collect(Vec<Tensor<1>>);

impl Collect {
    fn of<M: Module>(module: &M) -> Vec<Tensor<1>> {
        let mut collect = Collect(Vec::new());
        module.visit(&mut collect);
        collect.0
    }
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().without_autodiff().reshape([-1]));
    }
}

/// Maps the first EMA's parameters to their update, keeping the second's for [`Replace`].
struct Blend {
    theta: std::vec::IntoIter<Tensor<1>>,
    second: std::vec::IntoIter<Tensor<1>>,
    decays: (f64, f64),
    updated: Vec<Tensor<1>>,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let same = "the EMAs and the model have the same parameters";
        let theta = self.theta.next().expect(same);
        let second = self.second.next().expect(same);
        let decays = self.decays;
        let updated = &mut self.updated;
        param.map(|ema| {
            let shape = ema.dims();
            let (a, b) = crate::ops::ema_pair((ema, second.reshape(shape)), theta.reshape(shape), decays);
            updated.push(b.reshape([-1]));
            a
        })
    }
}

/// Sets each parameter to the next of a list of values (flattened, in visiting order).
struct Replace(std::vec::IntoIter<Tensor<1>>);

impl ModuleMapper for Replace {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let value = self.0.next().expect("one value per parameter");
        param.map(|old| value.reshape(old.dims()))
    }
}
