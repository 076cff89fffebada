//! Operations over lists of tensors: AdamW with both EMAs over every parameter, and the count of
//! non-finite values over every gradient. burn 0.22.1's
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
    /// [`reference::adamw_ema`]: per parameter `[θ, grad, m, v, ema1, ema2]` (f32, one shape
    /// each), `factors` `[14]` ([`AdamWEmaFactors::values`], on the device, where the kernels
    /// read them) → per parameter `[θ, m, v, ema1, ema2]`.
    fn adamw_ema(slots: Vec<[FloatTensor<Self>; 6]>, factors: FloatTensor<Self>) -> Vec<[FloatTensor<Self>; 5]>;

    /// [`reference::non_finite`]: how many values of `values` (f32, at least one tensor) are
    /// NaN or ±∞, as a `[1]` f32 tensor.
    fn non_finite(values: Vec<FloatTensor<Self>>) -> FloatTensor<Self>;
}

/// One parameter's `[θ, grad, m, v, ema1, ema2]` as `B`'s primitives.
type Slot<B> = [FloatTensor<B>; 6];

/// Every slot and the factors as `B`'s primitives, or the slots back.
type OnBackend<B> = Result<(Vec<Slot<B>>, FloatTensor<B>), Vec<[Tensor<1>; 6]>>;

/// Every tensor as `B`'s primitive, if all are f32 on `B`'s device and off the autodiff graph;
/// else the slots back. The tensors are moved, not cloned, so that a parameter's memory held
/// by nothing else can be updated in place.
fn on<B: Backend>(slots: Vec<[Tensor<1>; 6]>, factors: &Tensor<1>) -> OnBackend<B>
where
    burn::backend::DispatchTensor: burn::backend::DispatchKindConversion<B>,
{
    let Ok(factors) = factors.clone().try_into_primitive::<B>() else { return Err(slots) };
    let device = slots[0][0].device();
    let fits = |t: &Tensor<1>| t.dtype() == DType::F32 && !t.is_autodiff() && t.device() == device;
    if !slots.iter().flatten().all(fits) {
        return Err(slots);
    }
    let primitive = |t: Tensor<1>| t.try_into_primitive::<B>().expect("on the factors' backend and device");
    Ok((slots.into_iter().map(|slot| slot.map(primitive)).collect(), factors))
}

/// [`ListOps::non_finite`] on whichever backend the tensors are on (at least one tensor).
pub(super) fn non_finite(values: Vec<Tensor<1>>) -> Tensor<1> {
    let device = values[0].device();
    let fits = |t: &Tensor<1>| t.dtype() == DType::F32 && !t.is_autodiff() && t.device() == device;
    macro_rules! run_on {
        ($b:ty) => {
            if values.iter().all(fits) && values[0].clone().try_into_primitive::<$b>().is_ok() {
                let prims = values.into_iter().map(|t| t.try_into_primitive::<$b>().expect("on one backend")).collect();
                return Tensor::from_primitive::<$b>(<$b as ListOps>::non_finite(prims));
            }
        };
    }
    if enabled() {
        #[cfg(feature = "flex")]
        run_on!(burn::backend::Flex);
        #[cfg(feature = "wgpu")]
        run_on!(burn::backend::Cube);
    }
    reference::non_finite(&values)
}

/// [`ListOps::adamw_ema`] on whichever backend the tensors are on (at least one parameter).
pub(super) fn adamw_ema(slots: Vec<[Tensor<1>; 6]>, step: &AdamWEmaFactors) -> Vec<[Tensor<1>; 5]> {
    let factors = Tensor::<1>::from_floats(step.values(), &slots[0][0].device());
    #[cfg_attr(not(any(feature = "flex", feature = "wgpu")), allow(unused_mut))] // no kernels in such a build
    let mut slots = slots;
    macro_rules! run_on {
        ($b:ty) => {
            match on::<$b>(slots, &factors) {
                Ok((prims, factors)) => {
                    return <$b as ListOps>::adamw_ema(prims, factors)
                        .into_iter()
                        .map(|out| out.map(Tensor::from_primitive::<$b>))
                        .collect();
                }
                Err(back) => slots = back,
            }
        };
    }
    if enabled() {
        #[cfg(feature = "flex")]
        run_on!(burn::backend::Flex);
        #[cfg(feature = "wgpu")]
        run_on!(burn::backend::Cube);
    }
    let slots = slots.into_iter().map(|slot| slot.map(Tensor::into_dispatch)).collect();
    reference::adamw_ema::<burn::backend::Dispatch>(slots, step)
        .into_iter()
        .map(|out| out.map(Tensor::from_dispatch))
        .collect()
}
