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

    /// Moves the average towards `model`'s current weights.
    pub fn update(&mut self, model: &M) {
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        let mut blend = Blend { source: collect.0.into_iter(), decay: self.decay };
        self.model = self.model.clone().map(&mut blend);
    }
}

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().without_autodiff().reshape([-1]));
    }
}

struct Blend {
    source: std::vec::IntoIter<Tensor<1>>,
    decay: f64,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let source = self.source.next().expect("EMA and model have the same parameters");
        let decay = self.decay;
        param.map(|ema| {
            let theta = source.reshape(ema.dims());
            crate::ops::ema_blend(ema, theta, decay)
        })
    }
}
