//! Mixed precision (`Jit::with_matmul_dtype`): linear layers in f16/bf16 with f32 weights give
//! the f32 network's outputs, loss and training step within the formats' precision, on the
//! CPU backend (which has both types) and, for f16, on wgpu where the adapter has shader-f16
//! (the browser module's f16 path).

mod common;

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use jit_core::objective::{StepNoise, loss};
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use jit_core::{DiffusionConfig, Jit, JitConfig, TrainState};

fn config() -> JitConfig {
    JitConfig {
        input_size: 16,
        patch_size: 4,
        in_channels: 3,
        hidden_size: 64,
        depth: 3,
        num_heads: 4,
        mlp_ratio: 4.0,
        num_classes: 5,
        bottleneck_dim: 16,
        in_context_len: 4,
        in_context_start: 1,
        attn_drop: 0.0,
        proj_drop: 0.0,
    }
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    jit_core::host::read_f32(t).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A network with non-zero output layers (the reference zero-initialises them, which would make
/// every output 0 in any precision).
fn trained_like(device: &Device) -> Jit {
    device.seed(3);
    let mut net = Jit::new(&config(), device).unwrap();
    let mut rng = PortableRng::new(9);
    let mut fill = |l: &mut burn::nn::Linear| {
        let [i, o] = l.weight.val().dims();
        let w = rng.noise([1, 1, i, o], 0.05, device).reshape([i, o]);
        l.weight = burn::module::Param::from_tensor(w);
    };
    fill(&mut net.final_layer.linear);
    fill(&mut net.final_layer.adaLN_modulation);
    for b in &mut net.blocks {
        fill(&mut b.adaLN_modulation);
    }
    net
}

#[test]
fn half_precision_linears_match_f32_within_their_precision() {
    let device = Device::flex();
    let net = trained_like(&device);
    let b = 4;
    let x = PortableRng::new(1).noise([b, 3, 16, 16], 1.0, &device);
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.1f32, 0.4, 0.7, 0.95], [b]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 4, 5], [b]), &device);
    let reference = to_vec(net.forward(x.clone(), t.clone(), y.clone()));
    for (dtype, tolerance) in [(FloatDType::BF16, 3e-2), (FloatDType::F16, 4e-3)] {
        if !device.supports_dtype(dtype) {
            eprintln!("SKIP {dtype:?}: not supported on this backend");
            continue;
        }
        let mixed = net.clone().with_matmul_dtype(Some(dtype));
        let out = to_vec(mixed.forward(x.clone(), t.clone(), y.clone()));
        let err = rel_l2(&out, &reference);
        eprintln!("{dtype:?} linears: output rel L2 {err:.2e}");
        assert!(err < tolerance, "{dtype:?}: {err}");
        assert!(err > 0.0, "{dtype:?} must actually compute in lower precision");
        // Weights stored in the products' type for sampling: the same values as cast each pass.
        let stored = net.clone().for_sampling(Some(dtype));
        assert_eq!(stored.blocks[0].attn.qkv.weight.val().dtype(), dtype.into(), "{dtype:?}: stored weights");
        assert_eq!(to_vec(stored.forward(x.clone(), t.clone(), y.clone())), out, "{dtype:?}: for_sampling");
        // The objective and its gradients run too, in f32 around the half-precision products.
        let draw = StepNoise { t: t.clone(), noise: x.clone().mul_scalar(0.5), labels: y.clone() };
        let l_mixed: f32 = loss(&mixed, &DiffusionConfig::default(), x.clone().tanh(), draw).into_scalar();
        let draw = StepNoise { t: t.clone(), noise: x.clone().mul_scalar(0.5), labels: y.clone() };
        let l_f32: f32 = loss(&net, &DiffusionConfig::default(), x.clone().tanh(), draw).into_scalar();
        assert!(((l_mixed - l_f32) / l_f32).abs() < tolerance as f32, "loss {l_mixed} vs {l_f32}");
    }
}

#[test]
fn f16_linears_on_wgpu_match_f32_where_the_adapter_has_shader_f16() {
    // The browser's `precision: "auto"` path: WGSL with f16 products on a WebGPU adapter.
    let device = common::wgpu_device();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: this wgpu adapter has no shader-f16 (the browser falls back to f32 there)");
        return;
    }
    let net = trained_like(&device);
    let x = PortableRng::new(1).noise([2, 3, 16, 16], 1.0, &device);
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.2f32, 0.9], [2]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 5], [2]), &device);
    let reference = to_vec(net.clone().forward(x.clone(), t.clone(), y.clone()));
    let half = to_vec(net.with_matmul_dtype(Some(FloatDType::F16)).forward(x, t, y));
    let err = rel_l2(&half, &reference);
    eprintln!("wgpu f16 linears: output rel L2 {err:.2e}");
    assert!(err < 4e-3 && err > 0.0, "f16 on wgpu: rel L2 {err}");
}

#[test]
fn a_mixed_precision_training_step_keeps_f32_weights_and_follows_the_f32_step() {
    let device = Device::flex();
    if !device.supports_dtype(FloatDType::BF16) {
        eprintln!("SKIP: no bf16 on this backend");
        return;
    }
    training_step_follows_f32(&device, FloatDType::BF16);
}

/// The same on wgpu in f16, through the kernels of `shaders/` (qk-norm + RoPE and its backward
/// on f16 `qkv`, attention's softmax on f16 scores).
#[test]
fn an_f16_training_step_on_wgpu_follows_the_f32_step() {
    let device = common::wgpu_device();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: this wgpu adapter has no shader-f16");
        return;
    }
    training_step_follows_f32(&device, FloatDType::F16);
}

/// One training step with `dtype` products from the same weights and draws as an f32 step: the
/// master weights stay f32, the loss, the weights and the EMA follow the f32 step's.
fn training_step_follows_f32(device: &Device, dtype: FloatDType) {
    let device = device.clone();
    // Same initial weights and the same draws for both runs (explicit, not from the device RNG,
    // which other tests running in parallel also seed).
    let net0 = trained_like(&device);
    let step = |dtype| {
        let mut state = TrainState::new(
            net0.clone().with_matmul_dtype(dtype),
            OptimConfig { lr: Some(1e-3), ..OptimConfig::default() },
            5,
        );
        let (x, draw) = step_draws(&state.device());
        let l = loss(&state.model, &DiffusionConfig::default(), x, draw);
        let value: f32 = l.clone().without_autodiff().into_scalar();
        state.apply(l, 4);
        let w = state.model.blocks[0].attn.qkv.weight.val();
        assert_eq!(w.dtype(), burn::tensor::DType::F32, "master weights stay f32");
        (value, to_vec(w.without_autodiff()), to_vec(state.ema1.model.blocks[0].attn.qkv.weight.val()))
    };
    let (l32, w32, e32) = step(None);
    let (l16, w16, e16) = step(Some(dtype));
    assert!(l16.is_finite() && ((l16 - l32) / l32).abs() < 3e-2, "loss {l16} vs {l32}");
    // One AdamW step moves each weight by about lr; the two runs move them alike.
    let moved: f64 = w32.iter().zip(&w16).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / w32.len() as f64;
    assert!(moved < 5e-4, "mean weight difference after one step {moved}");
    assert!(rel_l2(&e16, &e32) < 1e-3);
}

/// f16 training at the paper's scale: the loss's gradient at each output value is about
/// 1/(B·C·H·W), which f16 products round to zero or a few bits without loss scaling. A step on
/// 4 images weighed as 4 of a 16 384-image batch (the share of one value in JiT-B/16's 256²
/// batches of 64) follows the f32 step with the loss scale on, and not without it.
fn loss_scaling_keeps_small_f16_gradients(device: &Device) {
    let global = 4 * 4096;
    let net0 = trained_like(device);
    // ε = 1 makes AdamW's first update g/(|g| + 1) ≈ g for such small gradients: the weights'
    // change after one step compares the gradients.
    let optim = OptimConfig { lr: Some(1.0), epsilon: 1.0, ..OptimConfig::default() };
    let change = |dtype: Option<FloatDType>, scaling: bool| {
        let mut state = TrainState::new(net0.clone(), optim.clone(), 5);
        state.set_matmul_dtype(dtype);
        assert_eq!(state.loss_scale.is_some(), dtype == Some(FloatDType::F16), "f16 scales its losses");
        if !scaling {
            state.loss_scale = None;
        }
        let weights = |s: &TrainState<Jit>| {
            let b = &s.model.blocks[0];
            [b.attn.qkv.weight.val(), b.mlp.w12.weight.val()].map(|w| to_vec(w.without_autodiff()))
        };
        let before = weights(&state);
        let (x, draw) = step_draws(&state.device());
        let loss = state.train_step_drawn(
            &DiffusionConfig::default(),
            x,
            draw,
            &[4],
            global,
            |jobs| jobs.into_iter().map(|job| job()).collect(),
            |_, grads, loss| (grads, loss),
        );
        assert!(loss.into_scalar::<f32>().is_finite());
        let after = weights(&state);
        before.iter().zip(&after).map(|(b, a)| a.iter().zip(b).map(|(a, b)| a - b).collect()).collect::<Vec<Vec<f32>>>()
    };
    let f32_change = change(None, false);
    let errors =
        |changes: Vec<Vec<f32>>| -> Vec<f64> { changes.iter().zip(&f32_change).map(|(a, b)| rel_l2(a, b)).collect() };
    let scaled = errors(change(Some(FloatDType::F16), true));
    let unscaled = errors(change(Some(FloatDType::F16), false));
    println!("f16 gradients of qkv, w12 against f32: {scaled:?} with loss scaling, {unscaled:?} without");
    assert!(scaled.iter().all(|&e| e < 1e-2), "with loss scaling: {scaled:?}");
    assert!(unscaled.iter().all(|&e| e > 0.1), "without loss scaling f16 should lose these gradients: {unscaled:?}");
}

/// The images and draws of one step of 4 images (explicit, not from the device RNG).
fn step_draws(device: &Device) -> (Tensor<4>, StepNoise) {
    let x = PortableRng::new(2).noise([4, 3, 16, 16], 0.5, device).clamp(-1.0, 1.0);
    let draw = StepNoise {
        t: Tensor::<1>::from_data(TensorData::new(vec![0.2f32, 0.5, 0.8, 0.9], [4]), device),
        noise: PortableRng::new(4).noise([4, 3, 16, 16], 1.0, device),
        labels: Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), device),
    };
    (x, draw)
}

#[test]
fn f16_training_scales_its_losses_on_the_cpu() {
    let device = Device::flex();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: no f16 on this backend");
        return;
    }
    loss_scaling_keeps_small_f16_gradients(&device);
}

#[test]
fn f16_training_scales_its_losses_on_wgpu() {
    let device = common::wgpu_device();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: this wgpu adapter has no shader-f16");
        return;
    }
    loss_scaling_keeps_small_f16_gradients(&device);
}

/// A step whose scaled gradients overflow f16 changes no weight, moment or EMA, halves the
/// scale, and still counts; the scale goes to the checkpoint and back.
#[test]
fn an_overflowing_f16_step_is_skipped_and_the_scale_is_saved() {
    let device = Device::flex();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: no f16 on this backend");
        return;
    }
    let mut state = TrainState::new(trained_like(&device), OptimConfig::default(), 5);
    state.set_matmul_dtype(Some(FloatDType::F16));
    // At 2²⁴ these gradients (≈ 1e-2) overflow f16's 65 504.
    state.loss_scale =
        Some(jit_core::LossScale { scale: jit_core::LossScale::MAX, good_steps: 5, ..jit_core::LossScale::default() });
    let snapshot = |s: &TrainState<Jit>| {
        let w = |net: &Jit| to_vec(net.blocks[0].attn.qkv.weight.val().without_autodiff());
        (w(&s.model), w(&s.ema1.model), w(&s.adamw.m), s.adamw.steps.clone())
    };
    let before = snapshot(&state);
    let (x, draw) = step_draws(&state.device());
    let run = |jobs: Vec<jit_core::train_state::PartJob>| jobs.into_iter().map(|job| job()).collect();
    let loss = state.train_step_drawn(&DiffusionConfig::default(), x, draw, &[2, 2], 4, run, |_, g, l| (g, l));
    assert!(loss.into_scalar::<f32>().is_finite(), "the loss itself is finite");
    assert!(before == snapshot(&state), "a skipped step changes no weight, EMA, moment or AdamW step count");
    let scale = state.loss_scale.expect("still scaling");
    assert_eq!((scale.scale, scale.good_steps, scale.skipped), (jit_core::LossScale::MAX / 2.0, 0, 1));
    assert_eq!(state.step, 1, "the run's step count moves on");
    // Saved with the checkpoint, restored with it.
    let meta = jit_core::checkpoint::CheckpointMeta::new(config(), DiffusionConfig::default(), Default::default());
    let bytes = state.to_checkpoint(&meta).unwrap();
    let limit = jit_core::MemoryLimit::default();
    let (restored, _) = TrainState::from_checkpoint(&bytes, OptimConfig::default(), 5, &device, limit).unwrap();
    assert_eq!(restored.loss_scale, Some(scale));
    // A run without f16 saves none.
    let mut plain = restored;
    plain.set_matmul_dtype(None);
    let bytes = plain.to_checkpoint(&meta).unwrap();
    let (restored, _) = TrainState::from_checkpoint(&bytes, OptimConfig::default(), 5, &device, limit).unwrap();
    assert_eq!(restored.loss_scale, None);
}
