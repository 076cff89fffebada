//! Exponential moving average of the weights: `ema ← decay·ema + (1 − decay)·θ` after every
//! optimizer step (the reference keeps two, decays 0.9999 and 0.9996, and samples with the first);
//! training updates both in AdamW's step ([`crate::adamw`]).

use burn::module::Module;

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
}
