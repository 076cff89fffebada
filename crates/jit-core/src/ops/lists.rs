//! Operations over lists of tensors: AdamW with both EMAs over every parameter. burn 0.22.1's
//! `backend_extension` routes single tensors only, so [`ListOps`] is routed here by hand, with
//! burn's public primitive conversions (`Tensor::try_into_primitive`): to the CPU kernels on
//! Flex, to `shaders/` on the cubecl backend (under burn's `fusion`, one custom operation in its
//! stream, [`super::fusion`]), and to the reference body anywhere else.

use burn::backend::Backend;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Tensor};

use super::{AdamWEmaFactors, enabled, reference};

/// A backend's operations over lists of tensors (never differentiated: on tensors off the
/// autodiff graph).
pub(super) trait ListOps: Backend {
    /// [`reference::adamw_ema`]: `[params, grads, m, v, ema1, ema2]` (f32, one shape per
    /// parameter), `factors` `[13]` ([`AdamWEmaFactors::values`], on the device, where the
    /// kernels read them) → `[params, m, v, ema1, ema2]`.
    fn adamw_ema(lists: [Vec<FloatTensor<Self>>; 6], factors: FloatTensor<Self>) -> [Vec<FloatTensor<Self>>; 5];
}

/// Every tensor as `B`'s primitive, if all are f32 on `B` and off the autodiff graph.
fn on<B: Backend>(ts: &[&Tensor<1>]) -> Option<Vec<FloatTensor<B>>>
where
    burn::backend::DispatchTensor: burn::backend::DispatchKindConversion<B>,
{
    ts.iter()
        .map(|t| {
            if t.dtype() != DType::F32 || t.is_autodiff() {
                return None;
            }
            (*t).clone().try_into_primitive::<B>().ok()
        })
        .collect()
}

/// [`ListOps::adamw_ema`] on whichever backend the tensors are on (the lists non-empty).
pub(super) fn adamw_ema(lists: [Vec<Tensor<1>>; 6], step: &AdamWEmaFactors) -> [Vec<Tensor<1>>; 5] {
    let lens = lists.each_ref().map(Vec::len);
    let factors = Tensor::<1>::from_floats(step.values(), &lists[0][0].device());
    let all: Vec<&Tensor<1>> = lists.iter().flatten().chain([&factors]).collect();
    macro_rules! run_on {
        ($b:ty) => {
            if let Some(mut prims) = on::<$b>(&all) {
                let factors = prims.pop().expect("the factors come last");
                let mut prims = prims.into_iter();
                let lists = lens.map(|n| prims.by_ref().take(n).collect());
                return <$b as ListOps>::adamw_ema(lists, factors)
                    .map(|list| list.into_iter().map(Tensor::from_primitive::<$b>).collect());
            }
        };
    }
    if enabled() {
        #[cfg(feature = "flex")]
        run_on!(burn::backend::Flex);
        #[cfg(feature = "wgpu")]
        run_on!(burn::backend::Cube);
    }
    let lists = lists.map(|list| list.into_iter().map(Tensor::into_dispatch).collect());
    reference::adamw_ema::<burn::backend::Dispatch>(lists, step)
        .map(|list| list.into_iter().map(Tensor::from_dispatch).collect())
}
