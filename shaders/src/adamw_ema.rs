//! One AdamW step and both EMA updates over many parameters in one launch (multi-tensor, as
//! PyTorch's fused AdamW): each unit takes one value of one parameter,
//! ```text
//! g ← s·g (s: 1, or the loss scale's inverse)
//! m ← β₁·m + (1 − β₁)·g            v ← β₂·v + (1 − β₂)·g²
//! θ ← θ·(1 − lr·wd) − lr · (m / c₁) / (√(v / c₂) + ε)      c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ
//! e₁ ← e₁·d₁ + θ·(1 − d₁)          e₂ ← e₂·d₂ + θ·(1 − d₂)
//! ```
//! in burn's AdamW's order of operations. The parameters of one launch lie end to end in one
//! index space (`starts`). A parameter whose θ, moments and EMAs are held by nothing else (the
//! training step moves them out of the model) is updated where it lies, as PyTorch's fused AdamW
//! updates in place: six bindings (those five and the gradient); any other binds six inputs
//! and five new outputs. A launch takes as many parameters as the adapter's storage bindings
//! allow ([`adamw_ema`] splits the list).

use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::{buffer, contiguous, elementwise_grid, empty_like};

/// The inputs and outputs of one parameter's step, one sequence entry each.
type Values<F> = Sequence<Box<[F]>>;

/// One value's step: the new θ, moments and EMAs.
#[derive(CubeType)]
struct Updated<F: Float> {
    theta: F,
    m: F,
    v: F,
    ema1: F,
    ema2: F,
}

/// The step of one value `theta` with gradient `g`, moments `m`, `v` and EMAs `e1`, `e2`;
/// `factors` as [`adamw_ema`] takes them.
#[cube]
fn update<F: Float>(theta: F, g: F, m: F, v: F, e1: F, e2: F, factors: &[f32]) -> Updated<F> {
    let g = g * F::cast_from(factors[13]);
    let m1 = m * F::cast_from(factors[2]) + g * F::cast_from(factors[3]);
    let v1 = v * F::cast_from(factors[4]) + g * g * F::cast_from(factors[5]);
    let m_hat = m1 / F::cast_from(factors[6]);
    let v_hat = v1 / F::cast_from(factors[7]);
    let delta = m_hat / (v_hat.sqrt() + F::cast_from(factors[8]));
    let theta = theta * F::cast_from(factors[1]) - delta * F::cast_from(factors[0]);
    Updated::<F> {
        theta,
        m: m1,
        v: v1,
        ema1: e1 * F::cast_from(factors[9]) + theta * F::cast_from(factors[10]),
        ema2: e2 * F::cast_from(factors[11]) + theta * F::cast_from(factors[12]),
    }
}

/// The step of value `j` of parameter `k` (`k` known at compile time: a sequence index).
#[cube]
#[allow(clippy::too_many_arguments)] // the six values' sequences, the place, the factors
fn step_at<F: Float>(
    param: &Values<F>,
    grad: &Values<F>,
    m: &Values<F>,
    v: &Values<F>,
    ema1: &Values<F>,
    ema2: &Values<F>,
    #[comptime] k: usize,
    j: usize,
    factors: &[f32],
) -> Updated<F> {
    let (p, g) = (param.index(k)[j], grad.index(k)[j]);
    update::<F>(p, g, m.index(k)[j], v.index(k)[j], ema1.index(k)[j], ema2.index(k)[j], factors)
}

/// Writes `u` as value `j` of parameter `k`'s θ, moments and EMAs.
#[cube]
#[allow(clippy::too_many_arguments)] // the five values' sequences, the place, the values
fn store_at<F: Float>(
    param: &mut Values<F>,
    m: &mut Values<F>,
    v: &mut Values<F>,
    ema1: &mut Values<F>,
    ema2: &mut Values<F>,
    #[comptime] k: usize,
    j: usize,
    u: Updated<F>,
) {
    param.index_mut(k)[j] = u.theta;
    m.index_mut(k)[j] = u.m;
    v.index_mut(k)[j] = u.v;
    ema1.index_mut(k)[j] = u.ema1;
    ema2.index_mut(k)[j] = u.ema2;
}

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
    #[unroll]
    for k in 0..comptime!(param.len()) {
        if i >= starts[k] && i < starts[k + 1] {
            let j = i - starts[k];
            let u = step_at::<F>(param, grad, m, v, ema1, ema2, k, j, factors);
            store_at::<F>(param_out, m_out, v_out, ema1_out, ema2_out, k, j, u);
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)] // five values updated in place, the gradient, the layout, the factors
fn adamw_ema_in_place_kernel<F: Float>(
    param: &mut Values<F>,
    grad: &Values<F>,
    m: &mut Values<F>,
    v: &mut Values<F>,
    ema1: &mut Values<F>,
    ema2: &mut Values<F>,
    starts: &Sequence<usize>,
    factors: &[f32],
) {
    let i = ABSOLUTE_POS;
    #[unroll]
    for k in 0..comptime!(grad.len()) {
        if i >= starts[k] && i < starts[k + 1] {
            let j = i - starts[k];
            let u = step_at::<F>(&*param, grad, &*m, &*v, &*ema1, &*ema2, k, j, factors);
            store_at::<F>(param, m, v, ema1, ema2, k, j, u);
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

impl AdamWEmaSlot {
    /// Whether θ, the moments and the EMAs may be written where they lie: row-major, and their
    /// memory held by nothing else (cubecl's handle count).
    fn in_place(&self) -> bool {
        [&self.param, &self.m, &self.v, &self.ema1, &self.ema2].iter().all(|t| t.can_mut() && t.is_contiguous())
    }
}

/// Values of one launch at most: bounds the memory a launch's new tensors hold beside the old
/// ones, which are freed when it ends (five copies of 2²⁴ f32 values, 320 MiB).
const MAX_VALUES_PER_LAUNCH: usize = 1 << 24;

/// Storage bindings one parameter takes: six inputs and five outputs, or, in place, the five
/// values written where they lie and the gradient.
const fn bindings_per_param(in_place: bool) -> usize {
    if in_place { 6 } else { 11 }
}

/// Upper bound on the parameters of one launch, whatever the adapter allows: the kernel is
/// unrolled over them.
const MAX_PARAMS_PER_LAUNCH: usize = 64;

/// How many parameters one launch takes on an adapter with `bindings` storage bindings per
/// shader stage (two of them the factors and the kernel's layout buffer).
pub fn params_per_launch(bindings: usize, in_place: bool) -> usize {
    (bindings.saturating_sub(2) / bindings_per_param(in_place)).clamp(1, MAX_PARAMS_PER_LAUNCH)
}

/// The AdamW + EMA step of every slot; returns `(param, m, v, ema1, ema2)` per slot, in order
/// (the slot's own tensors, updated, where it was [`AdamWEmaSlot::in_place`]). `factors` `[14]`
/// (f32, on the device) = `[lr, 1 − lr·wd, β₁, 1 − β₁, β₂, 1 − β₂, 1 − β₁ᵗ, 1 − β₂ᵗ, ε, d₁,
/// 1 − d₁, d₂, 1 − d₂, s]` (the gradients' factor `s`). Parameters go in launches of as many as the adapter's storage bindings
/// and [`MAX_VALUES_PER_LAUNCH`] allow (a parameter larger than that goes alone), those updated
/// in place apart from the others.
pub fn adamw_ema(slots: Vec<AdamWEmaSlot>, factors: CubeTensor) -> Vec<[CubeTensor; 5]> {
    assert_eq!(factors.meta.shape().num_elements(), 14, "adamw_ema: 14 factors");
    crate::assert_f32("adamw_ema", &[&factors]);
    let factors = contiguous(factors);
    let Some(first) = slots.first() else { return Vec::new() };
    let bindings = first.param.client.properties().hardware.max_bindings as usize;
    let mut out: Vec<Option<[CubeTensor; 5]>> = (0..slots.len()).map(|_| None).collect();
    // Pending launches, out of place and in place: (slot indices, slots, values).
    let mut pending: [(Vec<usize>, Vec<AdamWEmaSlot>, usize); 2] = Default::default();
    let mut flush = |(at, group, _): &mut (Vec<usize>, Vec<AdamWEmaSlot>, usize), in_place: bool| {
        let results = launch(std::mem::take(group), &factors, in_place);
        for (i, r) in std::mem::take(at).into_iter().zip(results) {
            out[i] = Some(r);
        }
    };
    for (i, slot) in slots.into_iter().enumerate() {
        let in_place = slot.in_place();
        let per_launch = params_per_launch(bindings, in_place);
        let len = slot.param.meta.shape().num_elements();
        let p = &mut pending[usize::from(in_place)];
        if !p.1.is_empty() && (p.1.len() == per_launch || p.2 + len > MAX_VALUES_PER_LAUNCH) {
            flush(p, in_place);
            p.2 = 0;
        }
        p.0.push(i);
        p.1.push(slot);
        p.2 += len;
    }
    for (kind, p) in pending.iter_mut().enumerate() {
        if !p.1.is_empty() {
            flush(p, kind == 1);
        }
    }
    out.into_iter().map(|r| r.expect("every slot launched")).collect()
}

/// One launch over `group` (non-empty, within the binding limit; each slot
/// [`AdamWEmaSlot::in_place`] where `in_place`).
fn launch(group: Vec<AdamWEmaSlot>, factors: &CubeTensor, in_place: bool) -> Vec<[CubeTensor; 5]> {
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
    let client = group[0][0].client.clone();
    let (cube_count, cube_dim) = elementwise_grid(&group[0][0], total);
    let seq = |ts: &[[CubeTensor; 6]], i: usize| ts.iter().map(|g| buffer(&g[i])).collect::<SequenceArg<Box<[f32]>>>();
    if in_place {
        // SAFETY: every tensor of parameter k is row-major with `starts[k + 1] − starts[k]`
        // values (checked above); the kernel touches value `i − starts[k]` of parameter k's
        // tensors only for `starts[k] ≤ i < starts[k + 1]`, each by one unit. θ, m, v and the
        // EMAs it writes are held by nothing else (`in_place`: cubecl's handle count), so no
        // other tensor sees them change; they are returned as the updated values.
        unsafe {
            adamw_ema_in_place_kernel::launch_unchecked::<f32>(
                &client,
                cube_count,
                cube_dim,
                seq(&group, 0),
                seq(&group, 1),
                seq(&group, 2),
                seq(&group, 3),
                seq(&group, 4),
                seq(&group, 5),
                starts.into_iter().collect(),
                buffer(factors),
            );
        }
        return group.into_iter().map(|[p, _, m, v, e1, e2]| [p, m, v, e1, e2]).collect();
    }
    let outputs: Vec<[CubeTensor; 6]> = group
        .iter()
        .map(|slot| {
            let [p, g, m, v, e1, e2] = slot;
            let new = |t: &CubeTensor| empty_like(t, t.meta.shape().to_vec());
            [new(p), g.clone(), new(m), new(v), new(e1), new(e2)]
        })
        .collect();
    // SAFETY: every tensor of parameter k is row-major (`contiguous`, `empty_like`) with
    // `starts[k + 1] − starts[k]` values (checked above); the kernel touches value
    // `i − starts[k]` of parameter k's tensors only for `starts[k] ≤ i < starts[k + 1]`.
    unsafe {
        adamw_ema_kernel::launch_unchecked::<f32>(
            &client,
            cube_count,
            cube_dim,
            seq(&group, 0),
            seq(&group, 1),
            seq(&group, 2),
            seq(&group, 3),
            seq(&group, 4),
            seq(&group, 5),
            seq(&outputs, 0),
            seq(&outputs, 2),
            seq(&outputs, 3),
            seq(&outputs, 4),
            seq(&outputs, 5),
            starts.into_iter().collect(),
            buffer(factors),
        );
    }
    outputs.into_iter().map(|[p, _, m, v, e1, e2]| [p, m, v, e1, e2]).collect()
}
