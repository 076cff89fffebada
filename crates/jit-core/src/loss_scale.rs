//! Dynamic loss scaling for training with f16 products (PyTorch's `GradScaler`, with its
//! defaults). The gradient of the loss at each output value is about `1/(B·C·H·W)`: ≈ 1e-7 for
//! JiT-B/16 at 256² in batches of 64, below f16's smallest normal value (6.1e-5), where the
//! backward pass's f16 products would round most gradients to zero or to a few bits. The loss is
//! multiplied by the scale before the backward pass and the gradients by its inverse in the
//! AdamW step (a power of two: exact). A step whose gradients hold NaN or ∞ (an f16 overflow) is
//! skipped and halves the scale; [`LossScale::GROWTH_INTERVAL`] steps in a row without one
//! double it. bf16 has f32's range and needs none.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The loss scale of a training run and how many steps it has held.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The factor on the loss (a power of two, from 1 to 2²⁴).
    pub scale: f32,
    /// Steps in a row with finite gradients at this scale.
    pub good_steps: u32,
    /// Steps in a row skipped for non-finite gradients.
    pub skipped: u32,
    /// Whether the last step's gradients were not finite at scale 1.
    #[serde(skip)]
    pub at_floor: bool,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: Self::INITIAL, good_steps: 0, skipped: 0, at_floor: false }
    }
}

impl LossScale {
    /// The first scale, 2¹⁶ (`GradScaler`'s `init_scale`).
    pub const INITIAL: f32 = 65536.0;
    /// Finite steps in a row after which the scale doubles (`growth_interval`).
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// The largest scale (f16 gradients at 2²⁴ times their value would overflow anyway).
    pub const MAX: f32 = 16_777_216.0;

    /// Records whether this step's (scaled) gradients are all finite, moves the scale, and
    /// returns whether the step is taken.
    pub fn update(&mut self, finite: bool) -> bool {
        self.at_floor = !finite && self.scale <= 1.0;
        if finite {
            self.skipped = 0;
            self.good_steps = self.good_steps.saturating_add(1);
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(Self::MAX);
                self.good_steps = 0;
            }
        } else {
            self.skipped = self.skipped.saturating_add(1);
            self.good_steps = 0;
            self.scale = (self.scale * 0.5).max(1.0);
        }
        finite
    }

    /// Whether training has diverged rather than overflowed: the last step's gradients were not
    /// finite even with the scale at its floor of 1 (the unscaled gradients themselves).
    pub fn diverged(&self) -> bool {
        self.at_floor
    }

    /// A scale read from a checkpoint, or `None` where it is not a power of two in range or
    /// its counters are out of range.
    pub fn checked(self) -> Option<Self> {
        let power_of_two = self.scale.is_finite() && self.scale >= 1.0 && self.scale.log2().fract() == 0.0;
        (power_of_two && self.scale <= Self::MAX && self.good_steps < Self::GROWTH_INTERVAL).then_some(self)
    }
}

/// Whether every gradient in `grads` of `model`'s parameters is finite: one multi-tensor count
/// of NaN and ±∞ values ([`crate::ops::non_finite`]) and one value read back.
pub fn gradients_finite<M: Module>(model: &M, grads: &GradientsParams) -> bool {
    struct Flat<'a> {
        grads: &'a GradientsParams,
        values: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for Flat<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.values.push(g.reshape([-1]));
            }
        }
    }
    let mut visitor = Flat { grads, values: Vec::new() };
    model.visit(&mut visitor);
    if visitor.values.is_empty() {
        return true;
    }
    crate::ops::non_finite(visitor.values).into_scalar::<f32>() == 0.0
}

#[cfg(test)]
mod tests {
    use super::LossScale;

    #[test]
    fn the_scale_halves_on_overflow_doubles_after_the_interval_and_stays_in_range() {
        let mut s = LossScale::default();
        assert!(!s.update(false), "a step with non-finite gradients is skipped");
        assert_eq!((s.scale, s.skipped), (32768.0, 1));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!((s.scale, s.good_steps, s.skipped), (32768.0, LossScale::GROWTH_INTERVAL - 1, 0));
        s.update(true);
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // An overflow in between starts the count again.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        // Never above 2²⁴, never below 1; at 1 a skipped step means divergence.
        let mut high = LossScale { scale: LossScale::MAX, good_steps: LossScale::GROWTH_INTERVAL - 1, ..s };
        high.update(true);
        assert_eq!(high.scale, LossScale::MAX);
        for _ in 0..15 {
            assert!(!s.diverged());
            s.update(false);
        }
        assert_eq!(s.scale, 1.0);
        assert!(!s.diverged(), "the last step ran at scale 2");
        s.update(false);
        assert_eq!(s.scale, 1.0);
        assert!(s.diverged());
        s.update(true);
        assert!(!s.diverged());
    }

    #[test]
    fn a_saved_scale_is_checked() {
        let ok = LossScale { scale: 1024.0, good_steps: 7, ..LossScale::default() };
        assert_eq!(ok.checked(), Some(ok));
        for scale in [0.0, 0.5, 3.0, f32::NAN, f32::INFINITY, 2.0 * LossScale::MAX] {
            assert_eq!(LossScale { scale, ..ok }.checked(), None, "{scale}");
        }
        assert_eq!(LossScale { good_steps: LossScale::GROWTH_INTERVAL, ..ok }.checked(), None);
    }
}
