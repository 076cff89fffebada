//! One AdamW step and both EMA updates over many parameters in one launch (multi-tensor, as
//! PyTorch's fused AdamW): each unit takes one value of one parameter,
//! ```text
//! m ← β₁·m + (1 − β₁)·g            v ← β₂·v + (1 − β₂)·g²
//! θ ← θ·(1 − lr·wd) − lr · (m / c₁) / (√(v / c₂) + ε)      c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ
//! e₁ ← e₁·d₁ + θ·(1 − d₁)          e₂ ← e₂·d₂ + θ·(1 − d₂)
//! ```
//! in burn's AdamW's order of operations. The parameters of one launch lie end to end in one
//! index space (`starts`); each binds its six inputs and five outputs, so a launch takes as
//! many parameters as the adapter's storage bindings allow ([`adamw_ema`] splits the list).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

/// The inputs and outputs of one parameter's step, one sequence entry each.
type Values<F> = Sequence<Box<[F]>>;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // six inputs, five outputs, the layout, the factors
fn adamw_ema_kernel<F: Float>(
    param: &Values<F>,
    grad: &Values<F>,
    m: &Values<F>,
    v: &Values<F>,
    ema1: &Values<F>,
    ema2: &Values<F>,
    param_out: &mut Values<F>,
    m_out: &mut Values<F>,
    v_out: &mut Values<F>,
    ema1_out: &mut Values<F>,
    ema2_out: &mut Values<F>,
    starts: &Sequence<usize>,
    factors: &[f32],
) {
    let i = ABSOLUTE_POS;
    let count = comptime!(param.len());
    #[unroll]
    for k in 0..count {
        if i >= starts[k] && i < starts[k + 1] {
            let j = i - starts[k];
            let g = grad.index(k)[j];
            let m1 = m.index(k)[j] * F::cast_from(factors[2]) + g * F::cast_from(factors[3]);
            let v1 = v.index(k)[j] * F::cast_from(factors[4]) + g * g * F::cast_from(factors[5]);
            let m_hat = m1 / F::cast_from(factors[6]);
            let v_hat = v1 / F::cast_from(factors[7]);
            let delta = m_hat / (v_hat.sqrt() + F::cast_from(factors[8]));
            let theta = param.index(k)[j] * F::cast_from(factors[1]) - delta * F::cast_from(factors[0]);
            let e1 = ema1.index(k)[j] * F::cast_from(factors[9]) + theta * F::cast_from(factors[10]);
            let e2 = ema2.index(k)[j] * F::cast_from(factors[11]) + theta * F::cast_from(factors[12]);
            param_out.index_mut(k)[j] = theta;
            m_out.index_mut(k)[j] = m1;
            v_out.index_mut(k)[j] = v1;
            ema1_out.index_mut(k)[j] = e1;
            ema2_out.index_mut(k)[j] = e2;
        }
    }
}

/// One parameter's tensors: the parameter, its gradient, AdamW's two moments and the two EMAs
/// (f32, one size).
pub struct AdamWEmaSlot {
    /// The parameter θ.
    pub param: CubeTensor,
    /// Its gradient.
    pub grad: CubeTensor,
    /// AdamW's first moment.
    pub m: CubeTensor,
    /// AdamW's second moment.
    pub v: CubeTensor,
    /// The first EMA.
    pub ema1: CubeTensor,
    /// The second EMA.
    pub ema2: CubeTensor,
}

/// Values of one launch at most: bounds the memory a launch's new tensors hold beside the old
/// ones, which are freed when it ends (five copies of 2²⁴ f32 values, 320 MiB).
const MAX_VALUES_PER_LAUNCH: usize = 1 << 24;

/// Storage bindings one parameter takes: six inputs and five outputs.
const BINDINGS_PER_PARAM: usize = 11;

/// Upper bound on the parameters of one launch, whatever the adapter allows: the kernel is
/// unrolled over them.
const MAX_PARAMS_PER_LAUNCH: usize = 64;

/// The AdamW + EMA step of every slot; returns `(param, m, v, ema1, ema2)` per slot, in order.
/// `factors` `[13]` (f32, on the device) = `[lr, 1 − lr·wd, β₁, 1 − β₁, β₂, 1 − β₂, 1 − β₁ᵗ,
/// 1 − β₂ᵗ, ε, d₁, 1 − d₁, d₂, 1 − d₂]`. Parameters go in launches of as many as the adapter's storage bindings and
/// [`MAX_VALUES_PER_LAUNCH`] allow (a parameter larger than that goes alone).
pub fn adamw_ema(slots: Vec<AdamWEmaSlot>, factors: CubeTensor) -> Vec<[CubeTensor; 5]> {
    assert_eq!(factors.meta.shape().num_elements(), 13, "adamw_ema: 13 factors");
    crate::assert_f32("adamw_ema", &[&factors]);
    let factors = contiguous(factors);
    let Some(first) = slots.first() else { return Vec::new() };
    let bindings = first.param.client.properties().hardware.max_bindings as usize;
    // Two bindings are the factors and the kernel's layout buffer.
    let per_launch = (bindings.saturating_sub(2) / BINDINGS_PER_PARAM).clamp(1, MAX_PARAMS_PER_LAUNCH);
    let mut out = Vec::with_capacity(slots.len());
    let mut group: Vec<AdamWEmaSlot> = Vec::new();
    let mut values = 0;
    for slot in slots {
        let len = slot.param.meta.shape().num_elements();
        if !group.is_empty() && (group.len() == per_launch || values + len > MAX_VALUES_PER_LAUNCH) {
            out.extend(launch(std::mem::take(&mut group), &factors));
            values = 0;
        }
        values += len;
        group.push(slot);
    }
    out.extend(launch(group, &factors));
    out
}

/// One launch over `group` (non-empty, within the binding limit).
fn launch(group: Vec<AdamWEmaSlot>, factors: &CubeTensor) -> Vec<[CubeTensor; 5]> {
    let mut starts = vec![0usize];
    let group: Vec<[CubeTensor; 6]> = group
        .into_iter()
        .map(|s| {
            let len = s.param.meta.shape().num_elements();
            for (name, t) in [("gradient", &s.grad), ("m", &s.m), ("v", &s.v), ("ema1", &s.ema1), ("ema2", &s.ema2)] {
                assert_eq!(
                    t.meta.shape().num_elements(),
                    len,
                    "adamw_ema: a parameter's {name} differs from it in size"
                );
            }
            starts.push(starts.last().copied().unwrap_or(0) + len);
            [s.param, s.grad, s.m, s.v, s.ema1, s.ema2].map(contiguous)
        })
        .collect();
    let total = *starts.last().unwrap_or(&0);
    let outputs: Vec<[CubeTensor; 5]> = group
        .iter()
        .map(|[p, _, m, v, e1, e2]| [p, m, v, e1, e2].map(|t| empty_like(t, t.meta.shape().to_vec())))
        .collect();
    let client = group[0][0].client.clone();
    let (cube_count, cube_dim) = elementwise_grid(&group[0][0], total);
    let input = |i: usize| group.iter().map(|g| buffer(&g[i])).collect::<SequenceArg<Box<[f32]>>>();
    let output = |i: usize| outputs.iter().map(|o| buffer(&o[i])).collect::<SequenceArg<Box<[f32]>>>();
    // SAFETY: every tensor of parameter k is row-major (`contiguous`, `empty_like`) with
    // `starts[k + 1] − starts[k]` values (checked above); the kernel touches value
    // `i − starts[k]` of parameter k's tensors only for `starts[k] ≤ i < starts[k + 1]`.
    unsafe {
        adamw_ema_kernel::launch_unchecked::<f32>(
            &client,
            cube_count,
            cube_dim,
            input(0),
            input(1),
            input(2),
            input(3),
            input(4),
            input(5),
            output(0),
            output(1),
            output(2),
            output(3),
            output(4),
            starts.into_iter().collect(),
            buffer(factors),
        );
    }
    outputs
}
