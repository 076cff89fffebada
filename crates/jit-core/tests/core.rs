//! Behaviour of jit-core beyond golden parity: training lowers the loss, EMA arithmetic,
//! checkpoint round trips and errors, cross-backend sampling determinism, objective variants.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use jit_core::TrainState;
use jit_core::checkpoint::{self, CheckpointMeta, StoreDtype};
use jit_core::host::labels as labels_tensor;
use jit_core::objective::StepNoise;
use jit_core::ops::AttentionKernels;
use jit_core::optim::OptimConfig;
use jit_core::rng::PortableRng;
use jit_core::sampler::{Progress, Sampling, initial_noise, sample};
use jit_core::state_dict;
use jit_core::{DiffusionConfig, Jit, JitConfig, JitError, Method, SamplerConfig, Target};

fn tiny(in_context: bool) -> JitConfig {
    JitConfig {
        input_size: 8,
        patch_size: 4,
        in_channels: 1,
        hidden_size: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        num_classes: 3,
        bottleneck_dim: 4,
        in_context_len: if in_context { 2 } else { 0 },
        in_context_start: if in_context { 1 } else { 0 },
        attn_drop: 0.0,
        proj_drop: 0.0,
    }
}

fn batch(config: &JitConfig, n: usize, device: &Device) -> (Tensor<4>, Vec<i64>) {
    // Smooth class-dependent images in [-1, 1].
    let s = config.input_size;
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let class = i % config.num_classes;
        labels.push(class as i64);
        for y in 0..s {
            for x in 0..s {
                let v = match class {
                    0 => (x as f32 / s as f32) * 2.0 - 1.0,
                    1 => (y as f32 / s as f32) * 2.0 - 1.0,
                    _ => {
                        if (x + y) % 2 == 0 {
                            0.8
                        } else {
                            -0.8
                        }
                    }
                };
                data.push(v);
            }
        }
    }
    (Tensor::from_data(TensorData::new(data, [n, 1, s, s]), device), labels)
}

#[test]
fn an_image_gets_the_same_noise_in_any_part_of_its_batch() {
    // The stream skipped to any offset, odd ones (inside a Box–Muller pair) included.
    let whole = PortableRng::new(9).normals(40);
    for skip in 0..9 {
        assert_eq!(PortableRng::new(9).normals_from(skip, 31), whole[skip as usize..][..31], "skip {skip}");
    }
    // Images 2..5 of a batch of 5 drawn on their own (8×8×1: 64 values per image).
    let (config, device) = (tiny(false), Device::flex());
    let diffusion = DiffusionConfig::default();
    let all = to_vec(initial_noise(&config, &diffusion, 0..5, 7, &device));
    let part = initial_noise(&config, &diffusion, 2..5, 7, &device);
    assert_eq!(part.dims(), [3, 1, 8, 8]);
    assert_eq!(to_vec(part), all[2 * 64..]);
}

#[test]
fn training_lowers_the_loss_and_emas_follow_their_formula() {
    let device = Device::flex();
    let config = tiny(true);
    device.seed(7);
    let model = Jit::new(&config, &device).unwrap();
    let optim = OptimConfig { lr: Some(2e-3), ema_decays: (0.9, 0.5), ..OptimConfig::default() };
    let diffusion = DiffusionConfig { label_drop_prob: 0.0, ..DiffusionConfig::default() };
    let mut trainer = TrainState::new(model, optim, 3);
    let (x, labels) = batch(&config, 12, &device);

    // Fixed-draw loss before and after training, so noise does not decide the comparison.
    let eval = |net: &Jit| -> f32 {
        let d = Device::flex();
        let mut rng = PortableRng::new(99);
        let t: Vec<f32> = (0..12).map(|i| 0.1 + 0.8 * i as f32 / 11.0).collect();
        let draw = jit_core::objective::StepNoise {
            t: Tensor::from_data(TensorData::new(t, [12]), &d),
            noise: rng.noise([12, 1, 8, 8], 1.0, &d),
            labels: labels_tensor(&labels, &d),
        };
        jit_core::objective::loss(net, &diffusion, x.clone(), draw).into_scalar()
    };
    let before = eval(&trainer.model.valid());
    let first_param = |net: &Jit| to_vec(net.final_layer.linear.weight.val().without_autodiff());
    let theta0 = first_param(&trainer.model);
    let ema1_0 = first_param(&trainer.ema1.model);
    assert_eq!(theta0, ema1_0, "EMA starts at the weights");

    trainer.train_step(&diffusion, x.clone(), labels_tensor(&labels, &device));
    let theta1 = first_param(&trainer.model);
    let ema1 = first_param(&trainer.ema1.model);
    let ema2 = first_param(&trainer.ema2.model);
    assert_ne!(theta0, theta1, "a step changes the weights");
    for i in 0..theta1.len() {
        let e1 = 0.9 * theta0[i] + 0.1 * theta1[i];
        let e2 = 0.5 * theta0[i] + 0.5 * theta1[i];
        assert!((ema1[i] - e1).abs() < 1e-6 && (ema2[i] - e2).abs() < 1e-6, "EMA formula at {i}");
    }
    for _ in 0..60 {
        trainer.train_step(&diffusion, x.clone(), labels_tensor(&labels, &device));
    }
    let after = eval(&trainer.model.valid());
    println!("loss {before:.4} -> {after:.4}");
    assert!(after < 0.7 * before, "training should lower the loss: {before} -> {after}");
    // The slow EMA lags the weights: it differs from them, and from the fast one.
    let (raw, e1, e2) =
        (first_param(&trainer.model), first_param(&trainer.ema1.model), first_param(&trainer.ema2.model));
    assert!(rel_l2(&e1, &raw) > 1e-4 && rel_l2(&e1, &e2) > 1e-5);
    assert!(rel_l2(&e2, &raw) < rel_l2(&e1, &raw), "decay 0.5 tracks the weights closer than 0.9");
}

fn meta_for(config: &JitConfig) -> CheckpointMeta {
    let mut meta = CheckpointMeta::new(config.clone(), DiffusionConfig::default(), SamplerConfig::default());
    meta.class_names = vec!["a".into(), "b".into(), "c".into()];
    meta.step = 42;
    meta
}

#[test]
fn checkpoint_round_trips_f32_exactly_and_f16_within_precision() {
    let device = Device::flex();
    let config = tiny(true);
    let net = randomized(&config, &device, 1);
    let reference = state_dict::export(&net).unwrap();
    let meta = meta_for(&config);

    let bytes = checkpoint::save(&meta, &[("", &net)], StoreDtype::F32).unwrap();
    let (loaded, meta2) = checkpoint::load(&bytes, "", &device).unwrap();
    assert_eq!(meta2.step, 42);
    assert_eq!(meta2.class_names, meta.class_names);
    assert_eq!(state_dict::export(&loaded).unwrap(), reference, "f32 round trip is bit-exact");

    for (dtype, tol) in [(StoreDtype::F16, 1e-3f32), (StoreDtype::Bf16, 8e-3)] {
        let bytes = checkpoint::save(&meta, &[("", &net)], dtype).unwrap();
        let (loaded, _) = checkpoint::load(&bytes, "", &device).unwrap();
        for (k, v) in state_dict::export(&loaded).unwrap() {
            let r = &reference[&k];
            for (a, b) in v.data.iter().zip(&r.data) {
                assert!((a - b).abs() <= tol * b.abs().max(1e-2), "{k}: {a} vs {b} ({dtype:?})");
            }
        }
    }

    // Several copies in one file, each loadable by its prefix.
    let other = randomized(&config, &device, 2);
    let bytes =
        checkpoint::save_with_blobs(&meta, &[("net", &net), ("ema1", &other)], StoreDtype::F32, &[("opt", b"xyz")])
            .unwrap();
    let (a, _) = checkpoint::load(&bytes, "net", &device).unwrap();
    let (b, _) = checkpoint::load(&bytes, "ema1", &device).unwrap();
    assert_eq!(state_dict::export(&a).unwrap(), reference);
    assert_eq!(state_dict::export(&b).unwrap(), state_dict::export(&other).unwrap());
    assert_eq!(checkpoint::blob(&bytes, "opt").unwrap().as_deref(), Some(&b"xyz"[..]));
    assert!(matches!(checkpoint::load(&bytes, "ema2", &device), Err(JitError::BadMetadata(_))));
}

#[test]
fn bad_checkpoints_give_errors_that_name_the_problem() {
    let device = Device::flex();
    let config = tiny(true);
    let net = randomized(&config, &device, 1);
    let bytes = checkpoint::save(&meta_for(&config), &[("", &net)], StoreDtype::F16).unwrap();

    // Truncated file.
    let err = checkpoint::load(&bytes[..bytes.len() / 2], "", &device).unwrap_err();
    assert!(matches!(err, JitError::NotACheckpoint(_)), "{err}");
    // Garbage.
    assert!(matches!(checkpoint::load(b"hello world, not a model", "", &device), Err(JitError::NotACheckpoint(_))));

    // Metadata describing another network: the first mismatching tensor is named.
    let mut other = meta_for(&config);
    other.network.hidden_size = 32;
    other.copies = vec![String::new()];
    let json = serde_json::to_string(&other).unwrap();
    let patched = {
        let st = checkpoint::parse(&bytes).unwrap();
        let views: Vec<_> = st.tensors();
        let info = std::collections::HashMap::from([(checkpoint::META_KEY.to_string(), json)]);
        safetensors::serialize(views, Some(info)).unwrap()
    };
    let err = checkpoint::load(&patched, "", &device).unwrap_err();
    match &err {
        JitError::ShapeMismatch { name, .. } => assert!(!name.is_empty()),
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(err.to_string().contains("has shape"), "{err}");

    // A safetensors file without our metadata.
    let st = checkpoint::parse(&bytes).unwrap();
    let bare = safetensors::serialize(st.tensors(), None).unwrap();
    assert!(matches!(checkpoint::load(&bare, "", &device), Err(JitError::MissingMetadata)));

    // A tensor missing.
    let st = checkpoint::parse(&bytes).unwrap();
    let (_, info) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let fewer: Vec<_> = st.tensors().into_iter().filter(|(k, _)| k != "blocks.1.mlp.w3.bias").collect();
    let cut = safetensors::serialize(fewer, info.metadata().clone()).unwrap();
    match checkpoint::load(&cut, "", &device) {
        Err(JitError::MissingTensor(name)) => assert_eq!(name, "blocks.1.mlp.w3.bias"),
        other => panic!("expected a missing tensor error, got {:?}", other.err()),
    }
}

#[test]
fn wrong_image_size_is_an_error_not_a_panic() {
    let device = Device::flex();
    let config = tiny(false);
    let net = Jit::new(&config, &device).unwrap();
    let z = Tensor::<4>::zeros([1, 1, 16, 16], &device);
    let s = SamplerConfig { steps: 2, ..SamplerConfig::default() };
    let err = sample(&net, &DiffusionConfig::default(), &s, z, labels_tensor(&[0], &device), |_| true).unwrap_err();
    assert!(matches!(err, JitError::Shape(_)), "{err}");
    assert!(JitConfig { input_size: 10, ..config.clone() }.validate().is_err());
    assert!(JitConfig::preset("JiT-Q/16", 256, 3, 10).is_err());
    let b16 = JitConfig::preset("JiT-B/16", 256, 3, 1000).unwrap();
    assert_eq!(
        (b16.depth, b16.hidden_size, b16.num_heads, b16.bottleneck_dim, b16.in_context_start),
        (12, 768, 12, 128, 4)
    );
    assert_eq!(b16.num_patches(), 256);
}

#[test]
fn sampler_callback_sees_every_step_and_can_cancel() {
    let device = Device::flex();
    let config = tiny(true);
    let net = randomized(&config, &device, 3);
    let z0 = PortableRng::new(5).noise([2, 1, 8, 8], 1.0, &device);
    let s = SamplerConfig { method: Method::Heun, steps: 5, cfg: 2.0, interval: (0.1, 1.0) };
    let mut seen = Vec::new();
    sample(&net, &DiffusionConfig::default(), &s, z0.clone(), labels_tensor(&[0, 1], &device), |step| {
        assert_eq!(step.x_hat.dims(), [2, 1, 8, 8]);
        seen.push((step.index, step.total));
        true
    })
    .unwrap();
    assert_eq!(seen, (0..5).map(|i| (i, 5)).collect::<Vec<_>>());
    let err = sample(&net, &DiffusionConfig::default(), &s, z0, labels_tensor(&[0, 1], &device), |step| step.index < 2)
        .unwrap_err();
    assert!(matches!(err, JitError::Cancelled));
}

#[test]
fn advance_runs_one_network_evaluation_per_call_and_ends_where_step_does() {
    // Heun takes two evaluations per step except the last (Euler) one: 2·steps − 1 calls, of
    // which `steps` finish a step; the result equals the step-wise run bit for bit.
    let device = Device::flex();
    let config = tiny(true);
    let net = randomized(&config, &device, 3);
    let z0 = PortableRng::new(7).noise([2, 1, 8, 8], 1.0, &device);
    let d = DiffusionConfig::default();
    for (method, evals) in [(Method::Heun, 9), (Method::Euler, 5)] {
        let s = SamplerConfig { method, steps: 5, cfg: 2.0, interval: (0.1, 1.0) };
        let y = labels_tensor(&[0, 1], &device);
        let mut run = Sampling::new(&net, &d, &s, z0.clone(), y.clone()).unwrap();
        let (mut calls, mut finished) = (0, Vec::new());
        while let Some(p) = run.advance() {
            calls += 1;
            if let Progress::Step(step) = p {
                finished.push(step.index);
            }
        }
        assert_eq!(calls, evals, "{method:?}");
        assert_eq!(finished, (0..5).collect::<Vec<_>>());
        let whole = sample(&net, &d, &s, z0.clone(), y, |_| true).unwrap();
        assert_eq!(run.finish().into_data(), whole.into_data(), "{method:?}");
    }
}

#[test]
fn skipping_the_unconditional_pass_where_scale_is_one_changes_nothing() {
    // cfg = 1 everywhere vs. an interval that excludes every step time: same result, and it
    // equals plain conditional Euler integration written out by hand.
    let device = Device::flex();
    let config = tiny(false);
    let net = randomized(&config, &device, 4);
    let d = DiffusionConfig::default();
    let z0 = PortableRng::new(6).noise([2, 1, 8, 8], 1.0, &device);
    let y = labels_tensor(&[2, 1], &device);
    let a = sample(
        &net,
        &d,
        &SamplerConfig { method: Method::Euler, steps: 4, cfg: 1.0, interval: (0.0, 1.0) },
        z0.clone(),
        y.clone(),
        |_| true,
    )
    .unwrap();
    let b = sample(
        &net,
        &d,
        &SamplerConfig { method: Method::Euler, steps: 4, cfg: 5.0, interval: (0.9, 0.95) },
        z0.clone(),
        y.clone(),
        |_| true,
    )
    .unwrap();
    let mut z = z0;
    for i in 0..4 {
        let t = i as f32 / 4.0;
        let tt = Tensor::<1>::full([2], t, &device);
        let x = net.forward(z.clone(), tt, y.clone());
        let v = x.sub(z.clone()).div_scalar((1.0 - t).max(0.05));
        z = z.add(v.mul_scalar(0.25));
    }
    let (a, b, manual) = (to_vec(a), to_vec(b), to_vec(z));
    assert!(rel_l2(&a, &manual) < 1e-5, "{}", rel_l2(&a, &manual));
    assert!(rel_l2(&b, &manual) < 1e-5);
}

#[test]
fn prediction_targets_convert_consistently() {
    // For a network output interpreted as x, ε or v, the three estimates obey
    // z = t·x̂ + (1−t)·ε̂ and v̂ = x̂ − ε̂ (away from the clamps).
    let device = Device::flex();
    let mut rng = PortableRng::new(8);
    let out = rng.noise([2, 1, 4, 4], 1.0, &device);
    let z = rng.noise([2, 1, 4, 4], 1.0, &device);
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.3f32, 0.7], [2]), &device);
    let t4 = t.clone().reshape([2, 1, 1, 1]);
    for target in [Target::X, Target::Eps, Target::V] {
        let p = jit_core::objective::Prediction::new(out.clone(), z.clone(), t.clone(), target, 0.05);
        let recon = t4.clone().mul(p.x()).add(t4.clone().neg().add_scalar(1.0).mul(p.eps()));
        assert!(rel_l2(&to_vec(recon), &to_vec(z.clone())) < 1e-5, "{target:?}: z");
        assert!(rel_l2(&to_vec(p.v()), &to_vec(p.x().sub(p.eps()))) < 1e-5, "{target:?}: v");
    }
}

#[test]
fn same_seed_same_sample_on_cpu_and_wgpu() {
    let cpu = Device::flex();
    let gpu = wgpu_device();
    let config = tiny(true);
    let net_cpu = randomized(&config, &cpu, 9);
    let net_gpu = randomized(&config, &gpu, 9);
    let s = SamplerConfig { method: Method::Heun, steps: 3, cfg: 2.5, interval: (0.1, 1.0) };
    let d = DiffusionConfig::default();
    let run = |net: &Jit, device: &Device| {
        let z0 = PortableRng::new(1234).noise([2, 1, 8, 8], d.noise_scale, device);
        to_vec(sample(net, &d, &s, z0, labels_tensor(&[0, 2], device), |_| true).unwrap())
    };
    let a = run(&net_cpu, &cpu);
    // Attention on the GPU as two products and as the flash kernel.
    let switch = AttentionSwitch::hold();
    for kernels in [AttentionKernels::Products, AttentionKernels::Flash] {
        switch.set(kernels);
        let b = run(&net_gpu, &gpu);
        let err = rel_l2(&b, &a);
        println!("cpu vs wgpu ({kernels:?}) sample rel L2 {err:.2e}");
        assert!(err <= 1e-3, "cpu vs wgpu ({kernels:?}): {err}");
    }
    assert_ne!(run(&net_cpu, &cpu), to_vec(PortableRng::new(1).noise([2, 1, 8, 8], 1.0, &cpu)));
}

/// Every parameter of `net`, flattened in key order.
fn all_params(net: &Jit) -> Vec<f32> {
    state_dict::export(net).unwrap().into_values().flat_map(|t| t.data).collect()
}

#[test]
fn a_step_in_parts_is_the_whole_batch_step() {
    let device = Device::flex();
    let config = tiny(true);
    // ε = 1 makes AdamW's first update g/(|g| + 1): close to the gradient itself, so comparing
    // the weights after one step compares the gradients (with the default ε it is ±lr·sign(g)).
    let optim = OptimConfig { lr: Some(1.0), epsilon: 1.0, ..OptimConfig::default() };
    let diffusion = DiffusionConfig::default(); // label dropout on: drawn for the whole batch
    let (x, labels) = batch(&config, 7, &device);
    let fresh = || TrainState::new(common::randomized(&config, &device, 5), optim.clone(), 11);
    let (mut whole, mut parts) = (fresh(), fresh());
    let before = all_params(&whole.model);
    let loss: f32 = whole.train_step(&diffusion, x.clone(), labels_tensor(&labels, &device)).into_scalar();
    let mut jobs_seen = 0;
    let loss_in_parts: f32 = parts
        .train_step_in_parts(&diffusion, x, labels_tensor(&labels, &device), &[3, 1, 3], |jobs| {
            jobs_seen = jobs.len();
            jobs.into_iter().rev().map(|job| job()).collect::<Vec<_>>().into_iter().rev().collect()
        })
        .into_scalar();
    assert_eq!(jobs_seen, 3);
    assert!((loss - loss_in_parts).abs() <= 1e-5 * loss.abs(), "loss {loss} vs {loss_in_parts} in parts");
    let (a, b) = (all_params(&whole.model), all_params(&parts.model));
    let moved = a.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-2, "the step should move the weights (moved {moved})");
    assert!(worst <= 1e-5, "weights after the step differ by {worst} between the whole batch and its parts");
    assert_eq!(parts.step, 1);
}

/// With the flash pair attention keeps no `[B, heads, T, T]` scores, and the estimate knows it:
/// B/16 at 256² in batches of 96 fits the default 16 GiB that way (≈ 12.4 GiB), not with the
/// products (≈ 20.9 GiB).
#[test]
fn the_memory_estimate_follows_how_attention_runs() {
    use jit_core::MemoryLimit;
    let config = JitConfig::preset("JiT-B/16", 256, 3, 1000).unwrap();
    let (b, t, heads) = (96u64, 256 + 32, 12u64);
    let switch = AttentionSwitch::hold();
    let products = config.train_bytes(96);
    switch.set(AttentionKernels::Flash);
    let flash = config.train_bytes(96);
    let fits = MemoryLimit::default().check_training(&config, 96);
    switch.set(AttentionKernels::Products);
    // Per block: 2·heads·T² f32 scores and probabilities against heads·T log-sum-exps.
    assert_eq!(products - flash, 12 * 4 * b * heads * (2 * t * t - t), "{products} against {flash}");
    assert!(fits.is_ok(), "{fits:?}");
    let refused = MemoryLimit::default().check_training(&config, 96).unwrap_err().to_string();
    assert!(refused.contains("over the memory limit"), "{refused}");
}

#[test]
fn a_step_is_split_only_as_far_as_the_memory_limit_allows() {
    use jit_core::MemoryLimit;
    let config = JitConfig::preset("JiT-B/16", 256, 3, 1000).unwrap();
    let _products = AttentionSwitch::hold(); // the estimate with attention as products
    let (step, gradients) = (config.train_bytes(32), 4 * config.param_count());
    // Room for the step and two and a half more gradient sets: three parts.
    assert_eq!(MemoryLimit(step + 5 * gradients / 2).training_parts(&config, 32, 8), 3);
    assert_eq!(MemoryLimit(step).training_parts(&config, 32, 8), 1);
    assert_eq!(MemoryLimit(step - 1).training_parts(&config, 32, 8), 1);
    // Never more parts than lanes wanted or images in the batch.
    assert_eq!(MemoryLimit(u64::MAX).training_parts(&config, 32, 8), 8);
    assert_eq!(MemoryLimit(u64::MAX).training_parts(&config, 3, 8), 3);
    assert_eq!(MemoryLimit(u64::MAX).training_parts(&config, 32, 0), 1);
}

#[test]
fn sampler_overrides_and_sampling_requests_are_checked_in_one_place() {
    use jit_core::{MemoryLimit, SamplerOverrides};
    let d = SamplerConfig::default();
    let s = d.with(SamplerOverrides { steps: Some(7), cfg: Some(1.5), ..Default::default() }).unwrap();
    assert_eq!((s.steps, s.cfg, s.method, s.interval), (7, 1.5, d.method, d.interval));
    assert!(d.with(SamplerOverrides { steps: Some(0), ..Default::default() }).is_err());
    for cfg in [f64::NAN, f64::INFINITY, 1e38, -1e4] {
        assert!(d.with(SamplerOverrides { cfg: Some(cfg), ..Default::default() }).is_err(), "cfg {cfg}");
    }
    assert!(d.with(SamplerOverrides { cfg: Some(-2.0), ..Default::default() }).is_ok());
    assert!(
        d.with(SamplerOverrides { interval_low: Some(0.9), interval_high: Some(0.1), ..Default::default() }).is_err()
    );
    let net = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
    SamplerConfig::check_request(&net, &[0, 9, 10], MemoryLimit::default()).unwrap();
    for bad in [&[11i64][..], &[-1], &[]] {
        assert!(SamplerConfig::check_labels(&net, bad).is_err(), "{bad:?}");
    }
    let e = SamplerConfig::check_request(&net, &[0; 64], MemoryLimit(1000)).unwrap_err().to_string();
    assert!(e.contains("memory limit"), "{e}");
}

/// A training step on wgpu (the block's chains as tracked operations with the backward kernels
/// of `shaders/`, attention either way) follows the same step on the CPU (its own kernels):
/// loss, weights, EMA.
#[test]
fn a_training_step_on_wgpu_follows_the_cpu_step() {
    let config = tiny(true);
    // ε = 1 makes AdamW's first update g/(|g| + 1), so the weights after one step compare the
    // gradients (with the default ε it is ±lr·sign(g)).
    let optim = OptimConfig { lr: Some(1.0), epsilon: 1.0, ..OptimConfig::default() };
    let step = |device: &Device| {
        let mut state = TrainState::new(randomized(&config, device, 5), optim.clone(), 11);
        let ad = state.device();
        let (x, labels) = batch(&config, 3, &ad);
        let draw = StepNoise {
            t: Tensor::<1>::from_data(TensorData::new(vec![0.2f32, 0.6, 0.9], [3]), &ad),
            noise: PortableRng::new(4).noise([3, 1, 8, 8], 1.0, &ad),
            labels: labels_tensor(&labels, &ad),
        };
        let l = jit_core::objective::loss(&state.model, &DiffusionConfig::default(), x, draw);
        let value: f32 = l.clone().without_autodiff().into_scalar();
        state.apply(l, 3);
        (value, all_params(&state.model.valid()), all_params(&state.ema1.model))
    };
    let cpu = step(&Device::flex());
    // Attention on the GPU as two products and as the flash pair.
    let switch = AttentionSwitch::hold();
    for kernels in [AttentionKernels::Products, AttentionKernels::Flash] {
        switch.set(kernels);
        let gpu = step(&wgpu_device());
        let what = format!("{kernels:?}: loss {} on the CPU, {} on wgpu", cpu.0, gpu.0);
        assert!(((cpu.0 - gpu.0) / cpu.0).abs() <= 1e-5, "{what}");
        let (w, e) = (rel_l2(&gpu.1, &cpu.1), rel_l2(&gpu.2, &cpu.2));
        assert!(w <= 1e-5 && e <= 1e-5, "{kernels:?}: weights after the step differ by rel. L2 {w:e} (EMA {e:e})");
    }
}

/// The loss of `net` (on an autodiff device) on a fixed batch and fixed draws.
fn fixed_loss(net: &Jit, config: &JitConfig) -> Tensor<1> {
    let device = net.devices()[0].clone();
    let (x, labels) = batch(config, 3, &device);
    let draw = StepNoise {
        t: Tensor::<1>::from_data(TensorData::new(vec![0.2f32, 0.6, 0.9], [3]), &device),
        noise: PortableRng::new(4).noise([3, 1, 8, 8], 1.0, &device),
        labels: labels_tensor(&labels, &device),
    };
    jit_core::objective::loss(net, &DiffusionConfig::default(), x, draw)
}

/// AdamW's step with both EMAs is burn's AdamW (weight decay on matrices only, as the reference
/// sets it up) followed by the EMA formula, and a run resumes from checkpoints of either format:
/// this one's and those written with burn's optimizer record.
#[test]
fn adamw_steps_as_burns_adamw_and_resumes_from_either_checkpoint_format() {
    use burn::module::{ModuleVisitor, Param, ParamGroup, ParamId};
    use burn::optim::{AdamWConfig, GradientsParams};
    use jit_core::MemoryLimit;

    let device = Device::flex();
    let config = tiny(true);
    let optim = OptimConfig { lr: Some(3e-3), weight_decay: 0.05, ema_decays: (0.9, 0.5), ..OptimConfig::default() };
    let mut ours = TrainState::new(randomized(&config, &device, 5), optim.clone(), 11);

    // burn's AdamW as earlier versions set it up: decay on every parameter but the 1-D ones.
    struct Vectors(Vec<ParamId>);
    impl ModuleVisitor for Vectors {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if D == 1 {
                self.0.push(param.id);
            }
        }
    }
    let adamw =
        |wd: f64| AdamWConfig::new().with_beta_1(0.9).with_beta_2(0.95).with_epsilon(1e-8).with_weight_decay(wd as f32);
    let mut vectors = Vectors(Vec::new());
    ours.model.visit(&mut vectors);
    let mut burn_optim =
        adamw(optim.weight_decay).init().with_group(ParamGroup::from_ids(vectors.0), adamw(0.0).build(), None);
    let mut burn_model = ours.model.clone();
    let blend = |ema: &[f32], theta: &[f32], decay: f64| -> Vec<f32> {
        ema.iter().zip(theta).map(|(e, t)| e * decay as f32 + t * (1.0 - decay) as f32).collect()
    };
    let same = |what: &str, a: &[f32], b: &[f32]| {
        assert_eq!(a.len(), b.len(), "{what}: sizes");
        let worst = a.iter().zip(b).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "{what}: differs by {worst:e} (relative)");
    };
    let mut e1 = all_params(&ours.ema1.model);
    let mut e2 = e1.clone();
    for step in 1..=2 {
        let loss = fixed_loss(&ours.model, &config);
        ours.apply(loss, 3);
        let grads = GradientsParams::from_grads(fixed_loss(&burn_model, &config).backward(), &burn_model);
        burn_model = burn_optim.step(3e-3, burn_model.clone(), grads);
        let theta = all_params(&burn_model.valid());
        (e1, e2) = (blend(&e1, &theta, 0.9), blend(&e2, &theta, 0.5));
        same(&format!("weights after step {step}"), &all_params(&ours.model.valid()), &theta);
        same(&format!("EMA 1 after step {step}"), &all_params(&ours.ema1.model), &e1);
        same(&format!("EMA 2 after step {step}"), &all_params(&ours.ema2.model), &e2);
    }

    // Resuming: one more step from a checkpoint of each format equals the uninterrupted step.
    let meta = meta_for(&config);
    let ids = serde_json::to_vec(&state_dict::param_ids(&burn_model)).unwrap();
    let record = burn_optim.into_bytes().unwrap();
    let old = checkpoint::save_with_blobs(
        &meta,
        &[("net", &burn_model.valid()), ("ema1", &ours.ema1.model), ("ema2", &ours.ema2.model)],
        StoreDtype::F32,
        &[("optimizer", &record[..]), ("param_ids", &ids[..])],
    )
    .unwrap();
    let new = ours.to_checkpoint(&meta).unwrap();
    // Two steps for every trained parameter; none for the fixed positional embedding.
    let steps = ours.adamw.steps.clone();
    assert_eq!(steps.iter().filter(|&&s| s == 2).count(), steps.len() - 1, "step counts {steps:?}");
    let loss = fixed_loss(&ours.model, &config);
    ours.apply(loss, 3);
    for (format, bytes) in [("burn's record", old), ("this version's", new)] {
        let (mut resumed, _) =
            TrainState::from_checkpoint(&bytes, optim.clone(), 11, &device, MemoryLimit::default()).unwrap();
        assert_eq!(resumed.adamw.steps, steps, "{format}: step counts");
        let loss = fixed_loss(&resumed.model, &config);
        resumed.apply(loss, 3);
        same(
            &format!("weights resumed from {format}"),
            &all_params(&resumed.model.valid()),
            &all_params(&ours.model.valid()),
        );
        same(&format!("EMA 1 resumed from {format}"), &all_params(&resumed.ema1.model), &all_params(&ours.ema1.model));
        same(&format!("moments resumed from {format}"), &all_params(&resumed.adamw.v), &all_params(&ours.adamw.v));
    }
}

/// A training checkpoint whose AdamW state is damaged is refused with an error naming it, in
/// either format.
#[test]
fn damaged_optimizer_state_is_an_error_not_a_panic() {
    use jit_core::MemoryLimit;
    let device = Device::flex();
    let config = tiny(true);
    let state = TrainState::new(randomized(&config, &device, 5), OptimConfig::default(), 11);
    let good = state.to_checkpoint(&meta_for(&config)).unwrap();
    let resume = |bytes: &[u8]| {
        TrainState::from_checkpoint(bytes, OptimConfig::default(), 11, &device, MemoryLimit::default())
            .err()
            .expect("a damaged file is refused")
            .to_string()
    };
    // Rewrites the file `from` with `edit` applied to each tensor's bytes (by name).
    let rewrite_from = |from: &[u8], edit: &dyn Fn(&str, &mut Vec<u8>)| {
        let st = checkpoint::parse(from).unwrap();
        let (_, info) = safetensors::SafeTensors::read_metadata(from).unwrap();
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, view) in st.tensors() {
            let mut data = view.data().to_vec();
            edit(&name, &mut data);
            // A blob (bytes) takes the length of its new contents.
            let shape = if view.dtype() == safetensors::Dtype::U8 { vec![data.len()] } else { view.shape().to_vec() };
            owned.push((name, view.dtype(), shape, data));
        }
        let views: Vec<_> = owned
            .iter()
            .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, info.metadata().clone()).unwrap()
    };
    let rewrite = |edit: &dyn Fn(&str, &mut Vec<u8>)| rewrite_from(&good, edit);
    let blob = |name: &str| format!("{}{name}", checkpoint::BLOB_PREFIX);
    // Step counts for the wrong number of parameters.
    let short = rewrite(&|name, data| {
        if name == blob("adamw_steps") {
            *data = b"[1, 2]".to_vec();
        }
    });
    let err = resume(&short);
    assert!(err.contains("AdamW step counts"), "{err}");
    // A moment holding NaN.
    let nan = rewrite(&|name, data| {
        if name.starts_with("adamw_v.") && name.ends_with("final_layer.linear.weight") {
            data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    let err = resume(&nan);
    assert!(err.to_lowercase().contains("nan") || err.contains("finite"), "{err}");
    // A negative second moment (a sum of squares).
    let negative = rewrite(&|name, data| {
        if name.starts_with("adamw_v.") && name.ends_with("final_layer.linear.weight") {
            data[4..8].copy_from_slice(&(-1.0f32).to_le_bytes());
        }
    });
    let err = resume(&negative);
    assert!(err.contains("negative"), "{err}");
    // A damaged loss scale.
    let mut scaled = TrainState::new(randomized(&config, &device, 5), OptimConfig::default(), 11);
    scaled.loss_scale = Some(jit_core::LossScale::default());
    let with_scale = scaled.to_checkpoint(&meta_for(&config)).unwrap();
    let st = checkpoint::parse(&with_scale).unwrap();
    assert!(st.names().iter().any(|n| **n == blob("loss_scale")), "the loss scale is saved");
    drop(st);
    for bad in [&br#"{"scale": 3.0, "good_steps": 0, "skipped": 0}"#[..], b"[]", b""] {
        let damaged = rewrite_from(&with_scale, &|name, data| {
            if name == blob("loss_scale") {
                *data = bad.to_vec();
            }
        });
        let err = resume(&damaged);
        assert!(err.contains("loss scale"), "{err}");
    }
    // Earlier versions' format: a record that is not burnpack, and no record at all.
    let ids = serde_json::to_vec(&state_dict::param_ids(&state.model)).unwrap();
    let net = state.model.valid();
    let copies = [("net", &net), ("ema1", &state.ema1.model), ("ema2", &state.ema2.model)];
    let meta = meta_for(&config);
    let legacy = |blobs: &[(&str, &[u8])]| checkpoint::save_with_blobs(&meta, &copies, StoreDtype::F32, blobs).unwrap();
    let err = resume(&legacy(&[("optimizer", b"not a record"), ("param_ids", &ids)]));
    assert!(err.contains("corrupt optimizer state"), "{err}");
    let err = resume(&legacy(&[("param_ids", &ids)]));
    assert!(err.contains("no optimizer state"), "{err}");
}
