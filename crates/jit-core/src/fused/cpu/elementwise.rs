//! Element-wise and row-wise kernels: a softmax row, the CFG mix, AdamW with both EMAs, SiLU and
//! SwiGLU's gate (and its gradient).

use super::math::{exp, max_of, silu, sum_by};
use super::rows::{for_rows, new_rows};

/// `softmax(scale·row)` in place (`scale > 0`): attention's probabilities.
#[inline(always)]
pub(super) fn softmax_row(row: &mut [f32], scale: f32) {
    let max = max_of(row);
    row.iter_mut().for_each(|v| *v = exp((*v - max) * scale));
    let inv = 1.0 / sum_by(row, |v| v);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Classifier-free guidance: from velocities `v` `[2B, …]` (conditional half first, then the
/// unconditional half), `v_u + scale·(v_c − v_u)` `[B, …]`.
pub fn cfg_mix(v: &[f32], scale: f32) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [f32], cond: &[f32], uncond: &[f32], scale: f32) {
            for ((o, &c), &u) in out.iter_mut().zip(cond).zip(uncond) {
                *o = u + scale * (c - u);
            }
        }
    }
    let half = v.len() / 2;
    let (cond, uncond) = v.split_at(half);
    new_rows(half, 1, &|first, rows| {
        let at = first..first + rows.len();
        kernel(rows, &cond[at.clone()], &uncond[at], scale)
    })
}

/// One parameter's values that an AdamW + EMA step updates in place.
pub struct AdamWEmaValues<'a> {
    /// The parameter θ.
    pub param: &'a mut [f32],
    /// AdamW's first moment.
    pub m: &'a mut [f32],
    /// AdamW's second moment.
    pub v: &'a mut [f32],
    /// The first EMA.
    pub ema1: &'a mut [f32],
    /// The second EMA.
    pub ema2: &'a mut [f32],
}

/// One AdamW step and both EMA updates in place, in burn's AdamW's order of operations (each
/// product rounded as its separate tensor ops round it), on the gradient times `s`: `factors` =
/// `[lr, 1 − lr·wd, β₁, 1 − β₁, β₂, 1 − β₂, 1 − β₁ᵗ, 1 − β₂ᵗ, ε, d₁, 1 − d₁, d₂, 1 − d₂, s]`
/// (`jit_core::ops::reference::adamw_ema_one` is the reference).
pub fn adamw_ema(values: AdamWEmaValues<'_>, grad: &[f32], factors: &[f32; 14]) {
    multiversion! {
        fn kernel(param: &mut [f32], m: &mut [f32], v: &mut [f32], ema1: &mut [f32], ema2: &mut [f32], grad: &[f32], factors: &[f32; 14]) {
            let [lr, decay, b1, rb1, b2, rb2, c1, c2, eps, d1, r1, d2, r2, s] = *factors;
            let state = m.iter_mut().zip(v.iter_mut()).zip(ema1.iter_mut()).zip(ema2.iter_mut());
            for ((p, &g), (((m, v), e1), e2)) in param.iter_mut().zip(grad).zip(state) {
                let g = g * s;
                *m = *m * b1 + g * rb1;
                *v = *v * b2 + g * g * rb2;
                let delta = (*m / c1) / ((*v / c2).sqrt() + eps);
                *p = *p * decay - delta * lr;
                *e1 = *e1 * d1 + *p * r1;
                *e2 = *e2 * d2 + *p * r2;
            }
        }
    }
    let AdamWEmaValues { param, m, v, ema1, ema2 } = values;
    let len = param.len();
    assert!(
        [grad.len(), m.len(), v.len(), ema1.len(), ema2.len()].iter().all(|&l| l == len),
        "adamw_ema: one gradient, moment and EMA value per parameter value"
    );
    kernel(param, m, v, ema1, ema2, grad, factors)
}

/// How many of `values` are NaN or ±∞.
pub fn non_finite(values: &[f32]) -> usize {
    values.iter().filter(|v| !v.is_finite()).count()
}

/// In place: `x ← SiLU(x)`.
pub fn silu_inplace(x: &mut [f32]) {
    multiversion! {
        fn kernel(xs: &mut [f32]) {
            xs.iter_mut().for_each(|v| *v = silu(*v));
        }
    }
    for_rows(x, 1, &|_, xs| kernel(xs));
}

/// SwiGLU's gate: rows of `2·hidden` values `(x1, x2)` → rows of `hidden` values `SiLU(x1)·x2`,
/// with `bias` (`2·hidden` values: the `w12` layer's, when `h` is its product without it) added
/// to each row first.
pub fn silu_gate(h: &[f32], hidden: usize, bias: Option<&[f32]>) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [f32], h: &[f32], hidden: usize, bias: Option<&[f32]>) {
            for (o, x) in out.chunks_exact_mut(hidden).zip(h.chunks_exact(2 * hidden)) {
                let (x1, x2) = x.split_at(hidden);
                match bias {
                    None => {
                        for ((o, &a), &b) in o.iter_mut().zip(x1).zip(x2) {
                            *o = silu(a) * b;
                        }
                    }
                    Some(bias) => {
                        let (b1, b2) = bias.split_at(hidden);
                        for ((((o, &a), &b), &ba), &bb) in o.iter_mut().zip(x1).zip(x2).zip(b1).zip(b2) {
                            *o = silu(a + ba) * (b + bb);
                        }
                    }
                }
            }
        }
    }
    // Every output value is written (the contract of `new_rows`): whole rows only.
    assert_eq!(h.len() % (2 * hidden).max(1), 0, "silu_gate: rows of 2·hidden values");
    assert!(bias.is_none_or(|b| b.len() == 2 * hidden), "silu_gate: a bias of 2·hidden values");
    new_rows(h.len() / 2, hidden, &|first, rows| kernel(rows, &h[first * 2 * hidden..], hidden, bias))
}

/// Gradient of [`silu_gate`] with respect to `h` (rows of `2·hidden`), from the output gradient
/// `g` (rows of `hidden`): `(g·x2·SiLU'(x1), g·SiLU(x1))`, `SiLU'(a) = σ(a)·(1 + a·(1 − σ(a)))`.
pub fn silu_gate_backward(h: &[f32], g: &[f32], hidden: usize) -> Vec<f32> {
    multiversion! {
        fn kernel(out: &mut [f32], h: &[f32], g: &[f32], hidden: usize) {
            let rows = out.chunks_exact_mut(2 * hidden).zip(h.chunks_exact(2 * hidden)).zip(g.chunks_exact(hidden));
            for ((o, x), g) in rows {
                let (d1, d2) = o.split_at_mut(hidden);
                let (x1, x2) = x.split_at(hidden);
                for ((((d1, d2), &a), &b), &g) in d1.iter_mut().zip(d2).zip(x1).zip(x2).zip(g) {
                    let sig = 1.0 / (1.0 + exp(-a));
                    *d1 = g * b * sig * (1.0 + a * (1.0 - sig));
                    *d2 = g * a * sig;
                }
            }
        }
    }
    assert!(
        h.len().is_multiple_of((2 * hidden).max(1)) && g.len() * 2 == h.len(),
        "silu_gate_backward: rows of 2·hidden and hidden values"
    );
    new_rows(h.len(), 2 * hidden, &|first, rows| kernel(rows, &h[first * 2 * hidden..], &g[first * hidden..], hidden))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_follow_the_definition() {
        let mut x: Vec<f32> = (0..3 * 70).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7).collect();
        let orig = x.clone();
        x.chunks_mut(70).for_each(|row| softmax_row(row, 0.25));
        for (row, o) in x.chunks(70).zip(orig.chunks(70)) {
            let z: f64 = o.iter().map(|&v| (0.25 * v as f64).exp()).sum();
            for (&p, &v) in row.iter().zip(o) {
                assert!((p as f64 - (0.25 * v as f64).exp() / z).abs() < 1e-7);
            }
        }
    }
}
