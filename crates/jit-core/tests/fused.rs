//! The op layer on the CPU (`jit_core::ops` on burn's Flex, with the kernels of
//! `jit_core::fused`) against its reference bodies (`ops::reference`, op by op under autodiff),
//! on the same inputs: values on Flex (kernels on the values), gradients on its autodiff device
//! without and with gradient checkpointing (tracked operations whose backward passes run the
//! gradient kernels). Every comparison runs once per kernel variant this CPU can run (baseline,
//! AVX2, AVX-512: `fused::cpu::isa`), forced; the reference runs with the kernels turned off.

mod common;

use std::sync::{Mutex, MutexGuard};

use burn::backend::Dispatch;
use burn::module::Module;
use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor};
use common::{from_prim, prim as p, rel_l2};
use jit_core::JitConfig;
use jit_core::fused::cpu::isa;
use jit_core::model::norm::RMS_EPS;
use jit_core::model::rope::Rope;
use jit_core::ops::{self, reference};

/// (kernels on values, tracked kernels, tracked kernels with gradient checkpointing, the
/// reference: tracked tensor ops with the kernels off).
fn devices() -> [Device; 4] {
    let flex = Device::flex();
    [flex.clone(), flex.clone().autodiff(), flex.clone().autodiff().gradient_checkpointing(), flex.autodiff()]
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    common::to_vec(t.without_autodiff())
}

/// One random tensor, copied onto each device.
fn random<const D: usize>(shape: [usize; D], std: f64, seed: u64) -> [Tensor<D>; 4] {
    let host: Vec<f32> = jit_core::rng::PortableRng::new(seed)
        .normals(shape.iter().product())
        .into_iter()
        .map(|v| v * std as f32)
        .collect();
    devices().map(|d| Tensor::from_data(burn::tensor::TensorData::new(host.clone(), shape), &d))
}

fn assert_close(what: &str, ours: &[f32], reference: &[f32], tol: f64) {
    assert!(ours.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let err = rel_l2(ours, reference);
    assert!(err <= tol, "{what}: rel. L2 {err:e} > {tol:e}");
}

/// One test at a time: the kernel variants are forced, the kernels turned off for the reference
/// and their runs counted process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `f()` and whether it ran a kernel ([`ops::kernels_run`]).
fn ran_kernels<R>(f: impl FnOnce() -> R) -> (R, bool) {
    let before = ops::kernels_run();
    let out = f();
    (out, ops::kernels_run() > before)
}

/// `f()` with the kernels turned off: the reference bodies.
fn on_reference<R>(f: impl FnOnce() -> R) -> R {
    struct On;
    impl Drop for On {
        fn drop(&mut self) {
            ops::set_enabled(true);
        }
    }
    let _on = On;
    ops::set_enabled(false);
    f()
}

/// Lifts the forced kernel level when dropped, also when a check fails.
struct Unforce;

impl Drop for Unforce {
    fn drop(&mut self) {
        isa::force(None).expect("no cap is a valid cap");
    }
}

/// Runs `f(level name)` once per kernel variant this CPU can run, each forced.
fn each_level(f: impl Fn(&str)) {
    let _one = one_at_a_time();
    let _unforce = Unforce;
    for level in isa::Level::available() {
        isa::force(Some(level.name())).expect("a level this CPU has");
        f(level.name());
    }
}

/// Runs `op` on the four devices with gradients of `Σ out·r` (fixed random `r`) for every
/// input, and checks that values and gradients agree with the reference, for every kernel
/// variant.
fn check<const D: usize, const O: usize, const N: usize>(
    what: &str,
    inputs: [[Tensor<D>; 4]; N],
    op: impl Fn(&[Tensor<D>; N]) -> Tensor<O>,
) {
    each_level(|level| check_once(&format!("{what} [{level} kernels]"), &inputs, &op));
}

fn check_once<const D: usize, const O: usize, const N: usize>(
    what: &str,
    inputs: &[[Tensor<D>; 4]; N],
    op: &impl Fn(&[Tensor<D>; N]) -> Tensor<O>,
) {
    let [on_values, ..] = devices();
    let pick = |k: usize, grad: bool| -> [Tensor<D>; N] {
        std::array::from_fn(|i| if grad { inputs[i][k].clone().require_grad() } else { inputs[i][k].clone() })
    };
    let (fused_values, took_values) = ran_kernels(|| op(&pick(0, false)));
    let (ad_in, ckpt_in, ref_in) = (pick(1, true), pick(2, true), pick(3, true));
    let (ad_out, took_ad) = ran_kernels(|| op(&ad_in));
    let (ckpt_out, took_ckpt) = ran_kernels(|| op(&ckpt_in));
    let (ref_out, took_ref) = ran_kernels(|| on_reference(|| op(&ref_in)));
    assert!(took_values && took_ad && took_ckpt, "{what}: kernels not taken ({took_values}, {took_ad}, {took_ckpt})");
    assert!(!took_ref, "{what}: the reference took the kernels");
    let r = Tensor::<O>::random(ref_out.dims(), Distribution::Normal(0.0, 1.0), &on_values);
    let loss = |out: Tensor<O>| {
        let device = out.device();
        out.mul(r.clone().to_device(&device)).sum()
    };
    let reference_values = values(ref_out.clone());
    assert_close(&format!("{what} (values)"), &values(fused_values), &reference_values, 2e-6);
    assert_close(&format!("{what} (autodiff values)"), &values(ad_out.clone()), &reference_values, 2e-6);
    assert_close(&format!("{what} (checkpointed values)"), &values(ckpt_out.clone()), &reference_values, 2e-6);
    let ref_grads = loss(ref_out).backward();
    for (tracked, out, path) in [(&ad_in, ad_out, "autodiff"), (&ckpt_in, ckpt_out, "checkpointed")] {
        let grads = loss(out).backward();
        for i in 0..N {
            let (ours, theirs) = match (tracked[i].grad(&grads), ref_in[i].grad(&ref_grads)) {
                (Some(a), Some(b)) => (a, b),
                (None, None) => continue,
                (a, b) => panic!("{what}: gradient {i} exists on one path only ({} vs {})", a.is_some(), b.is_some()),
            };
            assert_eq!(ours.dims(), theirs.dims(), "{what}: gradient {i} shape");
            let (ours, theirs) = (common::to_vec(ours), common::to_vec(theirs));
            assert_close(&format!("{what} ({path} gradient {i})"), &ours, &theirs, 2e-5);
        }
    }
}

#[test]
fn the_kernels_are_taken_for_f32_tensors_under_every_checkpoint_strategy() {
    let _one = one_at_a_time();
    let [a, b, c, _] = random([2, 3, 8], 1.0, 1);
    for (t, on) in [(a.clone(), "Flex"), (b.require_grad(), "autodiff"), (c.require_grad(), "checkpointing")] {
        assert!(ran_kernels(|| ops::silu(t.clone())).1, "{on}: the kernel not taken");
    }
    assert!(!ran_kernels(|| ops::silu(a.clone().cast(FloatDType::F16))).1, "f16 takes the reference");
    assert!(!ran_kernels(|| on_reference(|| ops::silu(a.clone()))).1, "turned off, the reference");
}

#[test]
fn attention_matches_in_values_and_gradients() {
    // Head widths with a kernel (16, 32, 64; 72, 13 and 40 tokens are not multiples of the
    // score blocks, nor 13 of the four-row blocks). Head width 8 has none: the Flex methods
    // run the reference bodies, backward passes included.
    for (heads, hd, tokens) in [(4, 16, 72), (3, 32, 13), (2, 64, 40)] {
        let shape = [2, heads, tokens, hd];
        let qkv = [random(shape, 1.5, 12), random(shape, 1.5, 13), random(shape, 1.0, 14)];
        check(&format!("attention, head width {hd}"), qkv, |[q, k, v]| {
            ops::attention(q.clone(), k.clone(), v.clone(), 0.25)
        });
    }
    let _one = one_at_a_time();
    let [q, k, v] = [12, 13, 14].map(|seed| random([2, 2, 5, 8], 1.0, seed)[0].clone());
    let (out, took) = ran_kernels(|| ops::attention(q.clone(), k.clone(), v.clone(), 0.25));
    let reference = on_reference(|| ops::attention(q, k, v, 0.25));
    assert!(!took, "head width 8 has no kernel");
    assert_close("attention, head width 8", &values(out), &values(reference), 1e-6);
}

#[test]
fn linear_layers_match_in_values_and_gradients() {
    // Widths that are not multiples of gemm's tiles; the second shape is large enough for the
    // product to split over threads and for the bias gradient to sum several chunks of rows.
    for (batch, tokens, d_in, d_out) in [(2, 7, 37, 53), (4, 150, 96, 130)] {
        let rows = batch * tokens;
        let (x, w, b) = (random([rows, d_in], 1.0, 16), random([d_in, d_out], 0.3, 17), random([1, d_out], 0.5, 18));
        for with_bias in [true, false] {
            check(
                &format!("linear {rows}×{d_in}→{d_out}, bias {with_bias}"),
                [x.clone(), w.clone(), b.clone()],
                |[x, w, b]| {
                    let bias = with_bias.then(|| b.clone().reshape([d_out]));
                    ops::linear(x.clone().reshape([batch, tokens, d_in]), w.clone(), bias).reshape([rows, d_out])
                },
            );
        }
    }
}

/// Parameters of several shapes with gradients, moments (the second positive) and two EMAs.
fn adamw_inputs(shapes: &[usize], seed: u64) -> (Vec<Tensor<1>>, Vec<Tensor<1>>, Vec<[Tensor<1>; 4]>) {
    let one = |n: usize, k: u64| random([n], 1.0, seed + 10 * n as u64 + k)[0].clone();
    let params = shapes.iter().map(|&n| one(n, 1)).collect();
    let grads = shapes.iter().map(|&n| one(n, 2).mul_scalar(0.01)).collect();
    let state = shapes
        .iter()
        .map(|&n| [one(n, 3).mul_scalar(0.01), one(n, 4).mul_scalar(1e-4).abs(), one(n, 5), one(n, 6)])
        .collect();
    (params, grads, state)
}

#[test]
fn adamw_with_both_emas_rounds_as_the_tensor_ops_do() {
    let (params, grads, state) = adamw_inputs(&[1000, 7, 1, 4099], 30);
    for factors in [
        ops::AdamWEmaFactors::new(1e-3, 0.0, (0.9, 0.95), 1e-8, 1, (0.9999, 0.9996)),
        ops::AdamWEmaFactors::new(2e-4, 0.05, (0.9, 0.999), 1e-6, 37, (0.5, 0.25)),
    ] {
        let step = || -> Vec<Vec<f32>> {
            ops::adamw_ema(params.clone(), grads.clone(), state.clone(), factors)
                .into_iter()
                .flatten()
                .map(values)
                .collect()
        };
        each_level(|level| {
            let (ours, took) = ran_kernels(step);
            assert!(took, "the kernel not taken");
            let reference = on_reference(step);
            assert_eq!(ours.len(), 5 * params.len());
            for (k, (a, b)) in ours.iter().zip(&reference).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "parameter {}, output {} (θ, m, v, ema1, ema2), {level} kernels, {factors:?}",
                    k / 5,
                    k % 5
                );
            }
        });
    }
}

#[test]
fn the_guidance_mix_matches() {
    check("cfg_mix", [random([6, 3, 4, 4], 1.0, 15)], |[v]| ops::cfg_mix(v.clone(), 2.9));
}

#[test]
fn silu_and_the_swiglu_gate_match() {
    check("silu", [random([4, 40], 3.0, 3)], |[c]| ops::silu(c.clone()));
    check("silu_gate", [random([2, 9, 2 * 37], 2.0, 4)], |[h]| ops::silu_gate(h.clone()));
}

#[test]
fn rms_norm_modulate_matches_in_values_and_gradients() {
    let (d, tokens) = (24, 70);
    let x = random([3, tokens, d], 1.5, 5);
    // The adaLN output [3, 6·D] as a block's, shift and scale at chunks 3 and 4 (its gradient
    // zero at the other four).
    let m = random([3, 6 * d], 1.0, 6);
    let gain = random([d], 0.5, 8);
    check(
        "rms_norm_modulate",
        [x.map(|t| t.reshape([3 * tokens, d])), gain.map(|g| g.reshape([1, d])), m],
        |[x, g, m]| {
            let gain = g.clone().reshape([d]).add_scalar(1.0);
            ops::rms_norm_modulate(x.clone().reshape([3, tokens, d]), gain, m.clone(), 3, RMS_EPS)
        },
    );
}

#[test]
fn gated_residual_matches_in_values_and_gradients() {
    // The gate: chunk 5 of a block's adaLN output [3, 6·D].
    let (d, tokens) = (24, 70);
    let inputs = [random([3 * tokens, d], 1.0, 9), random([3, 6 * d], 1.0, 10), random([3 * tokens, d], 1.5, 11)];
    check("gated_residual", inputs, |[x, m, y]| {
        let (x, y) = (x.clone().reshape([3, tokens, d]), y.clone().reshape([3, tokens, d]));
        ops::gated_residual(x, m.clone(), 5, y)
    });
}

/// The qk-norm gains `[hd]` from rows of `g` `[2, hd]`, and the RoPE tables.
fn norms_and_rope(
    g: &Tensor<2>,
    hd: usize,
    grid: usize,
    prefix: usize,
) -> ((Tensor<1>, Tensor<1>), (Tensor<2>, Tensor<2>)) {
    let gain = |i: usize| g.clone().narrow(0, i, 1).reshape([hd]).add_scalar(1.0);
    let rope = Rope::new(hd, grid, prefix, &g.device());
    ((gain(0), gain(1)), rope.tables())
}

#[test]
fn qk_norm_and_rope_match_in_values_and_gradients() {
    // 2 images, 4 prefix + 3×3 tokens, 3 heads of 16 channels (and of 8: no kernel, the
    // reference bodies).
    for (heads, hd) in [(3, 16), (3, 8)] {
        let (grid, prefix) = (3, 4);
        let tokens = prefix + grid * grid;
        let qkv = random([2 * tokens, 3 * heads * hd], 1.0, 9);
        let gains = random([2, hd], 0.4, 10);
        for part in 0..3 {
            let what = format!("qkv_heads part {part}, head width {hd}");
            let op = |[qkv, g]: &[Tensor<2>; 2]| {
                let (norms, rope) = norms_and_rope(g, hd, grid, prefix);
                let (q, k, v) =
                    ops::qkv_heads(qkv.clone().reshape([2, tokens, 3 * heads * hd]), norms, rope, heads, RMS_EPS);
                [q, k, v][part].clone()
            };
            if hd == 16 {
                check(&what, [qkv.clone(), gains.clone()], op);
            } else {
                let _one = one_at_a_time();
                let inputs = [qkv[0].clone(), gains[0].clone()];
                let (out, took) = ran_kernels(|| op(&inputs));
                assert!(!took, "{what}: no kernel for this width");
                assert_close(&what, &values(out), &values(on_reference(|| op(&inputs))), 1e-6);
            }
        }
    }
}

#[test]
fn attention_from_qkv_matches_in_values_and_gradients() {
    // 2 images, prefix + grid² tokens (13 and 72: not and a multiple of the four-row blocks),
    // head widths 16, 32 and 64.
    for (heads, hd, grid, prefix) in [(3, 16, 3, 4), (2, 32, 8, 8), (1, 64, 3, 4)] {
        let tokens = prefix + grid * grid;
        let d3 = 3 * heads * hd;
        let inputs = [random([2 * tokens, d3], 1.0, 21), random([2, hd], 0.4, 22)];
        check(&format!("qkv_attention, head width {hd}"), inputs, |[qkv, g]| {
            let (norms, rope) = norms_and_rope(g, hd, grid, prefix);
            let qkv = qkv.clone().reshape([2, tokens, d3]);
            ops::qkv_attention(qkv, norms, rope, heads, 0.3, RMS_EPS).reshape([2 * tokens, heads * hd])
        });
    }
}

#[test]
fn the_layers_feeding_attention_and_the_gate_match_in_values_and_gradients() {
    // On the CPU the `qkv` and `w12` products are taken without their biases, which the
    // attention and the SwiGLU gate add as they read the rows.
    let (heads, hd, grid, prefix) = (2, 16, 3, 4);
    let (tokens, d) = (prefix + grid * grid, heads * hd);
    let inputs = [
        random([2 * tokens, d], 1.0, 31),
        random([d, 3 * d], 0.3, 32),
        random([1, 3 * d], 0.5, 33),
        random([2, hd], 0.4, 34),
    ];
    check("attention_from_input", inputs, |[x, w, b, g]| {
        let (norms, rope) = norms_and_rope(g, hd, grid, prefix);
        let layer = (w.clone(), b.clone().reshape([3 * d]));
        let out = ops::attention_from_input(x.clone().reshape([2, tokens, d]), layer, norms, rope, heads, 0.3, RMS_EPS);
        out.reshape([2 * tokens, d])
    });
    let hidden = 24;
    let inputs = [random([2 * tokens, d], 1.0, 35), random([d, 2 * hidden], 0.3, 36), random([1, 2 * hidden], 0.5, 37)];
    check("swiglu_hidden", inputs, |[x, w, b]| {
        let out = ops::swiglu_hidden(x.clone().reshape([2, tokens, d]), w.clone(), b.clone().reshape([2 * hidden]));
        out.reshape([2 * tokens, hidden])
    });
}

/// `Σ f(inputs)·g`'s gradients by burn's autodiff of the reference forward pass, on Flex.
fn reference_gradients<const N: usize>(
    inputs: &[Tensor<3>; N],
    g: &Tensor<3>,
    f: impl Fn([Tensor<3>; N]) -> Tensor<3>,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let tracked = inputs.clone().map(|t| Tensor::from_data(t.into_data(), &device).require_grad());
    let grads = f(tracked.clone()).mul(g.clone().to_device(&device)).sum().backward();
    tracked.iter().map(|t| common::to_vec(t.grad(&grads).expect("a gradient"))).collect()
}

type Prim = burn::backend::tensor::FloatTensor<Dispatch>;

fn t3(t: Prim) -> Tensor<3> {
    from_prim(t)
}

/// A primitive's values (of any rank).
fn vals(t: Prim) -> Vec<f32> {
    use burn::backend::TensorMetadata;
    use burn::backend::ops::FloatTensorOps;
    let n = t.shape().num_elements();
    common::to_vec(Tensor::<1>::from_dispatch(Dispatch::float_reshape(t, burn::tensor::Shape::from(vec![n]))))
}

#[test]
fn the_reference_backward_passes_are_the_gradients_of_the_reference_forward_passes() {
    let r = |shape: [usize; 3], seed| random(shape, 1.0, seed)[0].clone();
    let close = |what: &str, ours: Prim, theirs: &[f32]| assert_close(what, &vals(ours), theirs, 1e-5);

    // RMSNorm + modulate: x [2, 5, 8], gain [8], shift and scale chunks 1 and 2 of an adaLN
    // output [2, 4·8] (seen as [1, 2, 32]).
    let [x, w, m] = [r([2, 5, 8], 1), r([1, 1, 8], 2), r([1, 2, 32], 3)];
    let g = r([2, 5, 8], 5);
    let m2 = |m: Tensor<3>| p(m.reshape([2, 32]));
    let want = reference_gradients(&[x.clone(), w.clone(), m.clone()], &g, |[x, w, m]| {
        t3(reference::rms_norm_modulate::<Dispatch>(p(x), p(w), m2(m), 1, RMS_EPS))
    });
    let (dx, dw, dm) = reference::rms_norm_modulate_backward::<Dispatch>(p(x), p(w), m2(m), 1, p(g), RMS_EPS);
    close("rms_norm_modulate dx", dx, &want[0]);
    close("rms_norm_modulate dweight", dw, &want[1]);
    close("rms_norm_modulate dmodulation", dm, &want[2]);

    // The gated residual's gradients, the gate chunk 2 of an adaLN output [2, 3·8] (seen as
    // [1, 2, 24]).
    let [x, m, y] = [r([2, 5, 8], 14), r([1, 2, 24], 15), r([2, 5, 8], 16)];
    let g = r([2, 5, 8], 17);
    let want = reference_gradients(&[x.clone(), m.clone(), y.clone()], &g, |[x, m, y]| {
        t3(reference::gated_residual::<Dispatch>(p(x), p(m.reshape([2, 24])), 2, p(y)))
    });
    let (dm, dy) = reference::gated_residual_backward::<Dispatch>(p(m.reshape([2, 24])), 2, p(g), p(y));
    close("gated_residual dmodulation", dm, &want[1]);
    close("gated_residual dy", dy, &want[2]);

    // qk-norm + RoPE: 2 images of 1 + 2×2 tokens, 2 heads of 8; the output [3, 2, 2, 5, 8]
    // seen as [3, 4, 40].
    let (heads, hd, tokens) = (2, 8, 5);
    let rope = Rope::new(hd, 2, 1, &Device::flex());
    let [qkv, qw, kw] = [r([2, tokens, 3 * heads * hd], 6), r([1, 1, hd], 7), r([1, 1, hd], 8)];
    let g = r([3, 2 * heads, tokens * hd], 9);
    let forward = |[qkv, qw, kw]: [Tensor<3>; 3]| {
        let (cos, sin) = (rope.cos.clone().to_device(&qkv.device()), rope.sin_signed.clone().to_device(&qkv.device()));
        let out = reference::qkv_heads::<Dispatch>(p(qkv), p(qw), p(kw), p(cos), p(sin), heads, RMS_EPS);
        Tensor::<5>::from_dispatch(out).reshape([3, 2 * heads, tokens * hd])
    };
    let want = reference_gradients(&[qkv.clone(), qw.clone(), kw.clone()], &g, forward);
    let g5 = g.reshape([3, 2, heads, tokens, hd]);
    let part = |i: usize| p(g5.clone().narrow(0, i, 1).squeeze_dim::<4>(0));
    let (cos, sin) = (p(rope.cos.clone()), p(rope.sin_signed.clone()));
    let grads = [part(0), part(1), part(2)];
    let (dqkv, dqw, dkw) =
        reference::qkv_heads_backward::<Dispatch>(p(qkv), p(qw), p(kw), cos, sin, grads, heads, RMS_EPS);
    close("qkv_heads dqkv", dqkv, &want[0]);
    close("qkv_heads dq_weight", dqw, &want[1]);
    close("qkv_heads dk_weight", dkw, &want[2]);

    // Attention: q, k, v [2, 2, 5, 8] (seen as [4, 5, 8]), output [2, 5, 16].
    let [q, k, v] = [r([4, 5, 8], 10), r([4, 5, 8], 11), r([4, 5, 8], 12)];
    let g = r([2, 5, 16], 13);
    let heads4 = |t: Tensor<3>| p(t.reshape([2, 2, 5, 8]));
    let want = reference_gradients(&[q.clone(), k.clone(), v.clone()], &g, |[q, k, v]| {
        t3(reference::head_attention::<Dispatch>(heads4(q), heads4(k), heads4(v), 0.3).0)
    });
    let probs = reference::head_attention::<Dispatch>(heads4(q.clone()), heads4(k.clone()), heads4(v.clone()), 0.3).1;
    let (dq, dk, dv) =
        reference::head_attention_backward::<Dispatch>(heads4(q), heads4(k), heads4(v), probs, p(g), 0.3);
    close("attention dq", dq, &want[0]);
    close("attention dk", dk, &want[1]);
    close("attention dv", dv, &want[2]);

    // SwiGLU's gate: h [2, 5, 12] → [2, 5, 6].
    let h = r([2, 5, 12], 14);
    let g = r([2, 5, 6], 15);
    let inputs = [h.clone()];
    let want = reference_gradients(&inputs, &g, |[h]| t3(reference::silu_gate::<Dispatch>(p(h))));
    close("silu_gate dh", reference::silu_gate_backward::<Dispatch>(p(h), p(g)), &want[0]);

    // A linear layer: x [2, 5, 7], weight [7, 6] (seen as [1, 7, 6]), bias [6] ([1, 1, 6]).
    let [x, w, b] = [r([2, 5, 7], 16), r([1, 7, 6], 17), r([1, 1, 6], 18)];
    let g = r([2, 5, 6], 19);
    let want = reference_gradients(&[x.clone(), w.clone(), b.clone()], &g, |[x, w, b]| {
        t3(reference::linear_layer::<Dispatch>(p(x), p(w.reshape([7, 6])), p(b.reshape([6]))))
    });
    let (dx, dw) = reference::linear_layer_backward::<Dispatch>(p(x), p(w.reshape([7, 6])), p(g.clone()));
    let db = reference::bias_grad::<Dispatch>(p(g));
    close("linear dx", dx, &want[0]);
    close("linear dweight", dw, &want[1]);
    close("linear dbias", db, &want[2]);

    // Its weight gradient split over chunks of rows: 2 × 4096 rows, 4 chunks.
    assert_eq!(reference::row_chunks(8192), 4);
    let [x, w, b] = [r([2, 4096, 3], 20), r([1, 3, 2], 21), r([1, 1, 2], 22)];
    let g = r([2, 4096, 2], 23);
    let want = reference_gradients(&[x.clone(), w.clone(), b], &g, |[x, w, b]| {
        t3(reference::linear_layer::<Dispatch>(p(x), p(w.reshape([3, 2])), p(b.reshape([2]))))
    });
    let (dx, dw) = reference::linear_layer_backward::<Dispatch>(p(x), p(w.reshape([3, 2])), p(g));
    close("split linear dx", dx, &want[0]);
    close("split linear dweight", dw, &want[1]);
}

#[test]
fn row_chunks_divide_the_rows_into_long_enough_chunks() {
    for rows in [1, 100, 2048, 4095, 4096, 6144, 12288, 16384, 18432, 1 << 20, 3 * 4096 + 2] {
        let c = reference::row_chunks(rows);
        assert!(c.is_power_of_two() && c <= 16 && rows % c == 0, "{rows} rows: {c} chunks");
        assert!(c == 1 || rows / c >= 2048, "{rows} rows: chunks of {}", rows / c);
    }
    assert_eq!(reference::row_chunks(16384), 8, "a B/16 batch of 64 is split");
    assert_eq!(reference::row_chunks(1 << 20), 16);
    assert_eq!(reference::row_chunks(4095), 1);
}

/// Attention with f16 inputs (the products in f16, the softmax in f32) against f32, in values
/// and in the backward pass.
#[test]
fn attention_in_f16_follows_f32() {
    use burn::backend::TensorMetadata;
    use burn::backend::ops::FloatTensorOps;
    let r = |seed| random([2, 2, 6, 8], 1.0, seed)[0].clone();
    let (q, k, v, g) = (r(1), r(2), r(3), random([2, 6, 16], 1.0, 4)[0].clone());
    let half = |t: &Tensor<4>| p(t.clone().cast(FloatDType::F16));
    let (out32, probs32) = reference::head_attention::<Dispatch>(p(q.clone()), p(k.clone()), p(v.clone()), 0.35);
    let (out16, probs16) = reference::head_attention::<Dispatch>(half(&q), half(&k), half(&v), 0.35);
    assert_eq!(probs16.dtype(), burn::tensor::DType::F32, "the probabilities stay f32");
    assert_eq!(out16.dtype(), burn::tensor::DType::F16, "the output is in the inputs' type");
    let f32s = |t: Prim| vals(Dispatch::float_cast(t, FloatDType::F32));
    assert_close("f16 attention", &f32s(out16), &vals(out32), 4e-3);
    let g16 = p(g.clone().cast(FloatDType::F16));
    let want =
        reference::head_attention_backward::<Dispatch>(p(q.clone()), p(k.clone()), p(v.clone()), probs32, p(g), 0.35);
    let got = reference::head_attention_backward::<Dispatch>(half(&q), half(&k), half(&v), probs16, g16, 0.35);
    assert_close("f16 attention dq", &f32s(got.0), &vals(want.0), 1e-2);
    assert_close("f16 attention dk", &f32s(got.1), &vals(want.1), 1e-2);
    assert_close("f16 attention dv", &f32s(got.2), &vals(want.2), 1e-2);
}

#[test]
fn the_network_agrees_on_all_paths_in_values_and_gradients() {
    let _one = one_at_a_time();
    let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
    let devices = devices();
    // Random weights everywhere (the reference's zero-initialised adaLN would hide the blocks).
    let nets = devices.each_ref().map(|d| common::randomized(&config, d, 7));
    let x = random([2, 3, 16, 16], 1.0, 11);
    let forward = |k: usize| {
        let d = &devices[k];
        let t = Tensor::<1>::from_floats([0.3, 0.8], d);
        let y = Tensor::<1, Int>::from_ints([1, 7], d);
        nets[k].forward(x[k].clone(), t, y)
    };
    let outputs = [forward(0), forward(1), forward(2), on_reference(|| forward(3))];
    let reference_values = values(outputs[3].clone());
    for (k, path) in ["Flex", "autodiff", "checkpointing"].iter().enumerate() {
        assert_close(&format!("JiT-T/4 forward ({path})"), &values(outputs[k].clone()), &reference_values, 1e-5);
    }
    let as_grads = |net: &jit_core::Jit, out: &Tensor<4>| {
        let grads = out.clone().square().mean().backward();
        jit_core::state_dict::export(&net.clone().map(&mut common::ToGrad { grads: &grads })).unwrap()
    };
    let theirs = as_grads(&nets[3], &outputs[3]);
    for k in [1, 2] {
        let ours = as_grads(&nets[k], &outputs[k]);
        assert_eq!(ours.len(), theirs.len());
        // Most gradients agree to ~1e-7; the qk-norm gains sum many cancelling terms (~1e-4
        // here with these large random weights), so the bound is the golden tests' gradient
        // tolerance.
        for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
            assert_close(&format!("gradient of {name} (path {k})"), &a.data, &b.data, 1e-3);
        }
    }
}

/// The CPU's count of non-finite values equals the reference's (NaN, ±∞, and finite extremes).
#[test]
fn non_finite_counts_as_the_reference_does() {
    let device = Device::flex();
    let values =
        [vec![1.0f32, f32::NAN, 3.0], vec![f32::MAX, -f32::MAX, f32::MIN_POSITIVE], vec![f32::INFINITY; 5], vec![-0.0]];
    let tensors: Vec<Tensor<1>> = values.iter().map(|v| Tensor::from_floats(v.as_slice(), &device)).collect();
    let reference = reference::non_finite(&tensors).into_scalar::<f32>();
    let _one = one_at_a_time();
    let (ours, ran) = ran_kernels(|| ops::non_finite(tensors.clone()).into_scalar::<f32>());
    assert!(ran, "the CPU kernel not taken");
    assert_eq!((ours, reference), (6.0, 6.0));
}
