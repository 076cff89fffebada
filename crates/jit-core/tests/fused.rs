//! The fused CPU operations (`jit_core::fused`) against the tensor-op path they replace, on the
//! same inputs: values on burn's Flex device (kernels on the values), gradients on its autodiff
//! device (custom autodiff operations), and the reference on the autodiff device with gradient
//! checkpointing, which the fused operations leave to the tensor ops. Every comparison runs once
//! per kernel variant this CPU can run (baseline, AVX2, AVX-512: `fused::cpu::isa`), forced.

mod common;

use std::sync::Mutex;

use burn::module::{Module, Param, ParamId};
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::{Device, Distribution, Int, Tensor};
use common::rel_l2;
use jit_core::JitConfig;
use jit_core::fused;
use jit_core::fused::cpu::isa;
use jit_core::model::MatmulDtype;
use jit_core::model::norm::RmsNorm;
use jit_core::model::rope::Rope;

/// (kernels on values, kernels as autodiff ops, tensor ops).
fn devices() -> [Device; 3] {
    let flex = Device::flex();
    [flex.clone(), flex.clone().autodiff(), flex.autodiff().gradient_checkpointing()]
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    common::to_vec(t.without_autodiff())
}

/// One random tensor, copied onto each device.
fn random<const D: usize>(shape: [usize; D], std: f64, seed: u64) -> [Tensor<D>; 3] {
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

/// One test at a time forces the kernel variants (the level is process-wide).
static LEVELS: Mutex<()> = Mutex::new(());

/// Lifts the forced kernel level when dropped, also when a check fails.
struct Unforce;

impl Drop for Unforce {
    fn drop(&mut self) {
        isa::force(None).expect("no cap is a valid cap");
    }
}

/// Runs `f(level name)` once per kernel variant this CPU can run, each forced.
fn each_level(f: impl Fn(&str)) {
    let _one = LEVELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _unforce = Unforce;
    for level in isa::Level::available() {
        isa::force(Some(level.name())).expect("a level this CPU has");
        f(level.name());
    }
}

/// Runs `op` on the three devices with gradients of `Σ out·r` (fixed random `r`) for every
/// input, and checks that values and gradients agree with the tensor ops, for every kernel
/// variant.
fn check<const D: usize, const O: usize, const N: usize>(
    what: &str,
    inputs: [[Tensor<D>; 3]; N],
    op: impl Fn(&[Tensor<D>; N]) -> Tensor<O>,
) {
    each_level(|level| check_once(&format!("{what} [{level} kernels]"), &inputs, &op));
}

fn check_once<const D: usize, const O: usize, const N: usize>(
    what: &str,
    inputs: &[[Tensor<D>; 3]; N],
    op: &impl Fn(&[Tensor<D>; N]) -> Tensor<O>,
) {
    let [on_values, on_autodiff, reference] = devices();
    let pick = |k: usize, grad: bool| -> [Tensor<D>; N] {
        std::array::from_fn(|i| if grad { inputs[i][k].clone().require_grad() } else { inputs[i][k].clone() })
    };
    let fused_values = op(&pick(0, false));
    let (ad_in, ref_in) = (pick(1, true), pick(2, true));
    let (ad_out, ref_out) = (op(&ad_in), op(&ref_in));
    assert!(fused::runs_fused(&fused_values) && fused::runs_fused(&ad_out), "{what}: kernels not taken");
    assert!(!fused::runs_fused(&ref_out), "{what}: the reference took the kernels");
    let r = Tensor::<O>::random(ref_out.dims(), Distribution::Normal(0.0, 1.0), &on_values);
    let loss = |out: Tensor<O>, device: &Device| out.mul(r.clone().to_device(device)).sum();
    let reference_values = values(ref_out.clone());
    assert_close(&format!("{what} (values)"), &values(fused_values), &reference_values, 2e-6);
    assert_close(&format!("{what} (autodiff values)"), &values(ad_out.clone()), &reference_values, 2e-6);
    let (ad_grads, ref_grads) = (loss(ad_out, &on_autodiff).backward(), loss(ref_out, &reference).backward());
    for i in 0..N {
        let (ours, theirs) = match (ad_in[i].grad(&ad_grads), ref_in[i].grad(&ref_grads)) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => continue,
            (a, b) => panic!("{what}: gradient {i} exists on one path only ({} vs {})", a.is_some(), b.is_some()),
        };
        assert_eq!(ours.dims(), theirs.dims(), "{what}: gradient {i} shape");
        let (ours, theirs) = (common::to_vec(ours), common::to_vec(theirs));
        assert_close(&format!("{what} (gradient {i})"), &ours, &theirs, 2e-5);
    }
}

#[test]
fn the_kernels_are_taken_for_f32_flex_tensors_only() {
    let [a, b, c] = random([2, 3], 1.0, 1);
    assert!(fused::runs_fused(&a) && fused::runs_fused(&b));
    assert!(!fused::runs_fused(&c), "gradient checkpointing takes the tensor ops");
    assert!(!fused::runs_fused(&a.cast(burn::tensor::FloatDType::F16)), "f16 takes the tensor ops");
}

#[test]
fn softmax_matches_in_values_and_gradients() {
    // Rows of 72 (64 image + 8 in-context tokens), large logits.
    check("softmax", [random([2, 3, 72, 72], 6.0, 2)], |[s]| fused::softmax(s.clone(), 0.25));
}

#[test]
fn attention_matches_in_values_and_gradients() {
    // Head widths with a kernel (16, 32, 64; 72, 13 and 40 tokens are not multiples of the
    // score blocks, nor 13 of the four-row blocks) and without one (8, which takes the tensor
    // ops everywhere).
    for (heads, hd, tokens) in [(4, 16, 72), (3, 32, 13), (2, 64, 40), (2, 8, 5)] {
        let shape = [2, heads, tokens, hd];
        let qkv = [random(shape, 1.5, 12), random(shape, 1.5, 13), random(shape, 1.0, 14)];
        check(&format!("attention, head width {hd}"), qkv, |[q, k, v]| {
            fused::attention(q.clone(), k.clone(), v.clone(), 0.25, &DropoutConfig::new(0.0).init())
        });
    }
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
                    let layer = Linear {
                        weight: Param::initialized(ParamId::new(), w.clone()),
                        bias: with_bias.then(|| Param::initialized(ParamId::new(), b.clone().reshape([d_out]))),
                    };
                    fused::linear(&layer, x.clone().reshape([batch, tokens, d_in])).reshape([rows, d_out])
                },
            );
        }
    }
}

#[test]
fn the_ema_update_rounds_as_the_tensor_ops_do() {
    let [ema, _, ema_ref] = random([3, 1000], 1.0, 19);
    let [theta, _, theta_ref] = random([3, 1000], 1.0, 20);
    each_level(|level| {
        for decay in [0.9999, 0.9996, 0.5] {
            let ours = values(fused::ema_blend(ema.clone(), theta.clone(), decay));
            let reference = values(fused::ema_blend(ema_ref.clone(), theta_ref.clone(), decay));
            assert!(fused::runs_fused(&ema) && !fused::runs_fused(&ema_ref));
            assert_eq!(ours, reference, "decay {decay}, {level} kernels");
        }
    });
}

#[test]
fn the_guidance_mix_matches() {
    check("cfg_mix", [random([6, 3, 4, 4], 1.0, 15)], |[v]| fused::cfg_mix(v.clone(), 2.9));
}

#[test]
fn silu_and_the_swiglu_gate_match() {
    check("silu", [random([4, 40], 3.0, 3)], |[c]| fused::silu(c.clone()));
    check("silu_gate", [random([2, 9, 2 * 37], 2.0, 4)], |[h]| fused::silu_gate(h.clone()));
}

#[test]
fn rms_norm_modulate_matches_in_values_and_gradients() {
    let (d, tokens) = (24, 70);
    let x = random([3, tokens, d], 1.5, 5);
    let (shift, scale) = (random([3, 6 * d], 1.0, 6), random([3, 6 * d], 1.0, 7));
    let gain = random([d], 0.5, 8);
    // Shift and scale as the blocks make them: strided chunks of the adaLN output.
    let (shift, scale): ([Tensor<2>; 3], [Tensor<2>; 3]) = (shift, scale);
    check(
        "rms_norm_modulate",
        [x.map(|t| t.reshape([3 * tokens, d])), gain.map(|g| g.reshape([1, d])), shift, scale],
        |[x, g, sh, sc]| {
            let device = x.device();
            let mut norm = RmsNorm::new(d, &device);
            norm.weight = Param::initialized(ParamId::new(), g.clone().reshape([d]).add_scalar(1.0));
            let sh = sh.clone().narrow(1, 2 * d, d).unsqueeze_dim::<3>(1);
            let sc = sc.clone().narrow(1, 4 * d, d).unsqueeze_dim::<3>(1);
            fused::rms_norm_modulate(&norm, x.clone().reshape([3, tokens, d]), sh, sc)
        },
    );
}

#[test]
fn qk_norm_and_rope_match_in_values_and_gradients() {
    // 2 images, 4 prefix + 3×3 tokens, 3 heads of 8 channels.
    let (heads, hd, grid, prefix) = (3, 8, 3, 4);
    let tokens = prefix + grid * grid;
    let qkv = random([2 * tokens, 3 * heads * hd], 1.0, 9);
    let gains = random([2, hd], 0.4, 10);
    for part in 0..3 {
        check(&format!("qkv_heads part {part}"), [qkv.clone(), gains.clone()], |[qkv, g]| {
            let device = qkv.device();
            let norm = |i: usize| {
                let mut n = RmsNorm::new(hd, &device);
                n.weight = Param::initialized(ParamId::new(), g.clone().narrow(0, i, 1).reshape([hd]).add_scalar(1.0));
                n
            };
            let rope = Rope::new(hd, grid, prefix, &device);
            let (q, k, v) =
                fused::qkv_heads(qkv.clone().reshape([2, tokens, 3 * heads * hd]), heads, &norm(0), &norm(1), &rope);
            [q, k, v][part].clone()
        });
    }
}

#[test]
fn attention_from_qkv_matches_in_values_and_gradients() {
    // Training's one operation from the qkv projection: 2 images, prefix + grid² tokens (13 and
    // 72: not and a multiple of the four-row blocks), head widths 16, 32 and 64.
    for (heads, hd, grid, prefix) in [(3, 16, 3, 4), (2, 32, 8, 8), (1, 64, 3, 4)] {
        let tokens = prefix + grid * grid;
        let qkv = random([2 * tokens, 3 * heads * hd], 1.0, 21);
        let gains = random([2, hd], 0.4, 22);
        check(&format!("qkv_attention, head width {hd}"), [qkv, gains], |[qkv, g]| {
            let device = qkv.device();
            let norm = |i: usize| {
                let mut n = RmsNorm::new(hd, &device);
                n.weight = Param::initialized(ParamId::new(), g.clone().narrow(0, i, 1).reshape([hd]).add_scalar(1.0));
                n
            };
            let rope = Rope::new(hd, grid, prefix, &device);
            let qkv = qkv.clone().reshape([2, tokens, 3 * heads * hd]);
            let drop = DropoutConfig::new(0.0).init();
            fused::qkv_attention(qkv, heads, (&norm(0), &norm(1)), &rope, 0.3, &drop).reshape([2 * tokens, heads * hd])
        });
    }
}

/// A linear layer with these parameters: `w` `[d_in, d_out]`, `b` `[1, d_out]`.
fn layer(w: &Tensor<2>, b: &Tensor<2>) -> Linear {
    let d_out = w.dims()[1];
    Linear {
        weight: Param::initialized(ParamId::new(), w.clone()),
        bias: Some(Param::initialized(ParamId::new(), b.clone().reshape([d_out]))),
    }
}

#[test]
fn the_layers_feeding_attention_and_the_gate_match_in_values_and_gradients() {
    // Sampling on the CPU takes the `qkv` and `w12` products without their biases and adds them
    // as the attention and the SwiGLU gate read the rows.
    let (heads, hd, grid, prefix) = (2, 16, 3, 4);
    let (tokens, d) = (prefix + grid * grid, heads * hd);
    let inputs = [
        random([2 * tokens, d], 1.0, 31),
        random([d, 3 * d], 0.3, 32),
        random([1, 3 * d], 0.5, 33),
        random([2, hd], 0.4, 34),
    ];
    check("attention_from_input", inputs, |[x, w, b, g]| {
        let device = x.device();
        let norm = |i: usize| {
            let mut n = RmsNorm::new(hd, &device);
            n.weight = Param::initialized(ParamId::new(), g.clone().narrow(0, i, 1).reshape([hd]).add_scalar(1.0));
            n
        };
        let rope = Rope::new(hd, grid, prefix, &device);
        let drop = DropoutConfig::new(0.0).init();
        let x = x.clone().reshape([2, tokens, d]);
        let out = fused::attention_from_input(
            &layer(w, b),
            x,
            MatmulDtype::default(),
            heads,
            (&norm(0), &norm(1)),
            &rope,
            0.3,
            &drop,
        );
        out.reshape([2 * tokens, d])
    });
    let hidden = 24;
    let inputs = [random([2 * tokens, d], 1.0, 35), random([d, 2 * hidden], 0.3, 36), random([1, 2 * hidden], 0.5, 37)];
    check("swiglu_hidden", inputs, |[x, w, b]| {
        let out = fused::swiglu_hidden(&layer(w, b), x.clone().reshape([2, tokens, d]), MatmulDtype::default());
        out.reshape([2 * tokens, hidden])
    });
}

#[test]
fn the_network_agrees_on_all_paths_in_values_and_gradients() {
    let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
    let [on_values, on_autodiff, reference] = devices();
    // Random weights everywhere (the reference's zero-initialised adaLN would hide the blocks).
    let nets = [&on_values, &on_autodiff, &reference].map(|d| common::randomized(&config, d, 7));
    let x = random([2, 3, 16, 16], 1.0, 11);
    let outputs: Vec<Tensor<4>> = (0..3)
        .map(|k| {
            let d = [&on_values, &on_autodiff, &reference][k];
            let t = Tensor::<1>::from_floats([0.3, 0.8], d);
            let y = Tensor::<1, Int>::from_ints([1, 7], d);
            nets[k].forward(x[k].clone(), t, y)
        })
        .collect();
    let reference_values = values(outputs[2].clone());
    assert_close("JiT-T/4 forward", &values(outputs[0].clone()), &reference_values, 1e-5);
    assert_close("JiT-T/4 forward (autodiff)", &values(outputs[1].clone()), &reference_values, 1e-5);
    let grads = [outputs[1].clone().square().mean().backward(), outputs[2].clone().square().mean().backward()];
    let as_grads = |net: &jit_core::Jit, grads| {
        jit_core::state_dict::export(&net.clone().map(&mut common::ToGrad { grads })).unwrap()
    };
    let (ours, theirs) = (as_grads(&nets[1], &grads[0]), as_grads(&nets[2], &grads[1]));
    assert_eq!(ours.len(), theirs.len());
    // Most gradients agree to ~1e-7; the qk-norm gains sum many cancelling terms (~1e-4 here
    // with these large random weights), so the bound is the golden tests' gradient tolerance.
    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
        assert_close(&format!("gradient of {name}"), &a.data, &b.data, 1e-3);
    }
}
