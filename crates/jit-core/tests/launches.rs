//! The launch counter (`jit_core::launches`) on wgpu (Mesa lavapipe on CI): it sees each launch
//! of a fused operation's kernel, and the tensor ops' kernels (burn's own, or the one burn's
//! `fusion` makes of them where the build has it), and the op layer taking the kernels where it
//! should. In their own binary, one test at a time, since the counter watches every launch of
//! the process.

mod common;

use std::sync::Mutex;

use burn::tensor::{FloatDType, Tensor, TensorData};
use common::{to_vec, wgpu_device};
use jit_core::ops;

/// One counting test at a time.
static COUNTING: Mutex<()> = Mutex::new(());

/// Launches of the kernels whose name holds every one of `parts`.
fn named(launched: &jit_core::launches::Launches, parts: &[&str]) -> usize {
    let all = |name: &str| parts.iter().all(|p| name.contains(p));
    launched.by_kernel.iter().filter(|(name, _)| all(name)).map(|(_, n)| n).sum()
}

/// Blocks of [`tiny_config`].
const TINY_DEPTH: usize = 2;

/// A network of [`TINY_DEPTH`] blocks of width 32 (two heads) over 8×8 RGB images in 4×4
/// patches, with two in-context tokens from the second block on.
fn tiny_config() -> jit_core::JitConfig {
    jit_core::JitConfig {
        input_size: 8,
        patch_size: 4,
        in_channels: 3,
        hidden_size: 32,
        depth: TINY_DEPTH,
        num_heads: 2,
        mlp_ratio: 2.0,
        num_classes: 3,
        bottleneck_dim: 8,
        in_context_len: 2,
        in_context_start: 1,
        attn_drop: 0.0,
        proj_drop: 0.0,
    }
}

/// Two images for [`tiny_config`], their timesteps and labels.
fn tiny_batch(device: &burn::tensor::Device) -> (Tensor<4>, Tensor<1>, Tensor<1, burn::tensor::Int>) {
    let b = 2;
    let values: Vec<f32> = (0..b * 3 * 8 * 8).map(|i| ((i * 11) % 29) as f32 / 29.0 - 0.5).collect();
    let x = Tensor::<4>::from_data(TensorData::new(values, [b, 3, 8, 8]), device);
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.3f32, 0.8], [b]), device);
    let y = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(vec![0i64, 2], [b]), device);
    (x, t, y)
}

#[test]
fn the_launch_counter_sees_each_kernel() {
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device();
    let values: Vec<f32> = (0..4 * 3 * 8 * 8).map(|i| (i % 17) as f32 - 8.0).collect();
    let v = Tensor::<4>::from_data(TensorData::new(values, [4, 3, 8, 8]), &device);
    // Compile both paths' kernels first; then count.
    let mix = || to_vec(ops::cfg_mix(v.clone(), 2.0));
    let ops = || {
        let halves = v.clone().chunk(2, 0);
        let (c, u) = (halves[0].clone(), halves[1].clone());
        to_vec(u.clone().add(c.sub(u).mul_scalar(2.0)))
    };
    let (fused_values, ops_values) = (mix(), ops());
    let (again, fused_count) = jit_core::launches::count(|| [mix(), mix(), mix()]);
    let (_, ops_count) = jit_core::launches::count(ops);
    assert!(again.iter().all(|v| *v == fused_values), "the same values when counted");
    let cfg_mix_launches: usize =
        fused_count.by_kernel.iter().filter(|(name, _)| name.contains("cfg_mix")).map(|(_, n)| n).sum();
    assert_eq!(cfg_mix_launches, 3, "one cfg_mix kernel per call: {:?}", fused_count.by_kernel);
    assert!(ops_count.total() >= 1, "the tensor ops launch kernels too");
    assert!(
        !ops_count.by_kernel.iter().any(|(name, _)| name.contains("cfg_mix")),
        "only what ran is counted: {:?}",
        ops_count.by_kernel
    );
    let err = common::rel_l2(&fused_values, &ops_values);
    assert!(err < 1e-6, "cfg_mix and the tensor ops agree: {err:e}");
    let (_, none) = jit_core::launches::count(|| ());
    assert_eq!(none.total(), 0);
}

#[test]
fn the_kernels_are_taken_for_f32_tensors_in_and_outside_autodiff_while_on() {
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device();
    // Whether `x + gate·x` ran the gated_residual kernel (the gate: the one chunk of a [2, 4]
    // adaLN output).
    let gated = |x: Tensor<3>, on: bool| {
        ops::set_enabled(on);
        let m = x.clone().narrow(1, 0, 1).reshape([2, 4]);
        let (out, launches) = jit_core::launches::count(|| to_vec(ops::gated_residual(x.clone(), m, 0, x.clone())));
        ops::set_enabled(true);
        assert!(out.iter().all(|v| v.is_finite()));
        launches.by_kernel.iter().any(|(name, _)| name.contains("gated_residual"))
    };
    let x = Tensor::<3>::ones([2, 3, 4], &device);
    assert!(gated(x.clone(), true), "f32 takes the kernel");
    assert!(!gated(x.clone(), false), "turned off, the reference");
    assert!(!gated(x.clone().cast(FloatDType::F16), true), "f16 takes the reference");
    let tracked = Tensor::<3>::ones([2, 3, 4], &device.clone().autodiff()).require_grad();
    assert!(gated(tracked, true), "training takes the kernels with their backward passes");
    let checkpointed = Tensor::<3>::ones([2, 3, 4], &device.autodiff().gradient_checkpointing()).require_grad();
    assert!(gated(checkpointed, true), "so does training with gradient checkpointing");
}

/// Attention, in autodiff, for f32 and f16: as the flash pair, one kernel forward and two
/// backward and no products, softmax or reductions; as two products, its softmax one kernel
/// each way (no reductions or exponentials of burn's softmax chain).
#[test]
fn attention_runs_as_the_flash_pair_or_with_its_softmax_as_one_kernel_each_way() {
    use ops::AttentionKernels::{Flash, Products};
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device().autodiff();
    for (kernels, dtype) in
        [(Flash, FloatDType::F32), (Flash, FloatDType::F16), (Products, FloatDType::F32), (Products, FloatDType::F16)]
    {
        ops::set_attention_kernels(kernels);
        let values: Vec<f32> = (0..2 * 3 * 12 * 8).map(|i| ((i * 7) % 23) as f32 / 23.0 - 0.5).collect();
        let leaf = || Tensor::<4>::from_data(TensorData::new(values.clone(), [2, 3, 12, 8]), &device).require_grad();
        let (q, k, v) = (leaf(), leaf(), leaf());
        let step = || {
            let out = ops::attention(q.clone().cast(dtype), k.clone().cast(dtype), v.clone().cast(dtype), 0.35);
            let grads = out.cast(FloatDType::F32).sum().backward();
            [&q, &k, &v].map(|t| to_vec(t.grad(&grads).expect("a gradient")))
        };
        step(); // compile first; then count
        let (grads, launched) = jit_core::launches::count(step);
        ops::set_attention_kernels(Products);
        let what = format!("{kernels:?}, {dtype:?}: {:?}", launched.by_kernel);
        assert!(grads.iter().flatten().all(|g| g.is_finite()), "{what}: finite gradients");
        let (flash, softmax) = (named(&launched, &["FlashAttention"]), named(&launched, &["ScaledSoftmax"]));
        if kernels == Flash {
            assert_eq!(named(&launched, &["FlashAttentionKernel<"]), 1, "{what}");
            assert_eq!(named(&launched, &["FlashAttentionDqKernel<"]), 1, "{what}");
            assert_eq!(named(&launched, &["FlashAttentionDkdvKernel<"]), 1, "{what}");
            assert_eq!((flash, softmax, named(&launched, &["atmul"])), (3, 0, 0), "{what}: no products");
        } else {
            assert_eq!(named(&launched, &["ScaledSoftmaxKernel"]), 1, "{what}");
            assert_eq!(named(&launched, &["ScaledSoftmaxBackwardKernel"]), 1, "{what}");
            assert_eq!(flash, 0, "{what}");
        }
        assert_eq!(named(&launched, &["reduce"]), 1, "{what}: only the loss's sum reduces");
    }
}

/// Mixed-precision attention from the `qkv` product's f16 output: `qkv_heads`, its backward
/// pass and the parts' gradients take f16 tensors, so no casts run around them.
#[test]
fn f16_qkv_heads_run_without_casts() {
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device().autodiff();
    let (b, h, hd, grid) = (2, 2, 16, 3);
    let t = grid * grid;
    let rope = jit_core::model::rope::Rope::new(hd, grid, 0, &device);
    let values: Vec<f32> = (0..b * t * 3 * h * hd).map(|i| ((i * 5) % 19) as f32 / 19.0 - 0.5).collect();
    let qkv = Tensor::<3>::from_data(TensorData::new(values, [b, t, 3 * h * hd]), &device);
    // An f16 leaf, cast before the launches are counted.
    let qkv = qkv.cast(FloatDType::F16).detach().require_grad();
    assert_eq!(qkv.dtype(), burn::tensor::DType::F16);
    to_vec(qkv.clone());
    let gains = (Tensor::<1>::ones([hd], &device), Tensor::<1>::ones([hd], &device));
    let step = || {
        let (q, k, v) = ops::qkv_heads(qkv.clone(), gains.clone(), rope.tables(), h, 1e-6);
        let out = Tensor::cat(vec![q, k, v], 0);
        let grads = out.cast(FloatDType::F32).sum().backward();
        to_vec(qkv.grad(&grads).expect("a gradient"))
    };
    step(); // compile first; then count
    let (grad, launched) = jit_core::launches::count(step);
    assert!(grad.iter().all(|g| g.is_finite()), "finite gradients");
    assert_eq!(named(&launched, &["QkvHeadsKernel<", "f16"]), 1, "{:?}", launched.by_kernel);
    assert_eq!(named(&launched, &["QkvHeadsDxKernel<", "f16"]), 1, "{:?}", launched.by_kernel);
    assert_eq!(named(&launched, &["PadPartKernel<", "f16"]), 3, "{:?}", launched.by_kernel);
    // The casts: the output's to f32 for the loss and its gradient's back; none inside.
    assert!(named(&launched, &["Cast"]) <= 2, "{:?}", launched.by_kernel);
}

/// A training step's backward pass writes the gradients of each adaLN output and each `qkv`
/// projection whole: the ops that read their chunks write their chunks of the gradient (zeros
/// elsewhere), and attention's three gradients go straight into `qkv_heads`' backward pass, so
/// no part's gradient is padded (`pad_part`) and added up; SwiGLU's gate is one kernel each way.
/// In f32 and with f16 products (then the gate, the adaLN output and the kernels that read them
/// in f16).
#[test]
fn a_training_step_pads_no_parts_of_a_gradient() {
    use jit_core::Jit;
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device().autodiff();
    let (config, depth) = (tiny_config(), TINY_DEPTH);
    device.seed(5);
    let net = Jit::new(&config, &device).expect("a valid config");
    let (x, t, y) = tiny_batch(&device);
    use ops::AttentionKernels::{Flash, Products};
    for (dtype, kernels) in
        [(None, Products), (Some(FloatDType::F16), Products), (None, Flash), (Some(FloatDType::F16), Flash)]
    {
        if dtype.is_some_and(|d| !device.supports_dtype(d)) {
            eprintln!("SKIP {dtype:?}: not supported on this adapter");
            continue;
        }
        ops::set_attention_kernels(kernels);
        let net = net.clone().with_matmul_dtype(dtype);
        let step = || {
            let grads = net.forward(x.clone(), t.clone(), y.clone()).cast(FloatDType::F32).sum().backward();
            let w = net.blocks[0].adaLN_modulation.weight.val();
            to_vec(w.grad(&grads).expect("the adaLN weights get a gradient"))
        };
        step(); // compile first; then count
        let (grad, launched) = jit_core::launches::count(step);
        ops::set_attention_kernels(Products);
        assert!(grad.iter().all(|g| g.is_finite()), "{dtype:?}: finite gradients");
        assert_eq!(named(&launched, &["PadPart"]), 0, "{dtype:?}: {:?}", launched.by_kernel);
        // Two gates a block; a shift and scale twice a block and once in the final layer.
        assert_eq!(named(&launched, &["GatedResidualBackward"]), 2 * depth, "{dtype:?}: {:?}", launched.by_kernel);
        assert_eq!(named(&launched, &["RmsNormModulateSums"]), 2 * depth + 1, "{dtype:?}: {:?}", launched.by_kernel);
        assert_eq!(named(&launched, &["QkvHeadsDxKernel<"]), depth, "{dtype:?}: {:?}", launched.by_kernel);
        // SwiGLU's gate one kernel each way, in the products' type (no casts around it).
        let typed = if dtype.is_some() { "f16" } else { "f32" };
        assert_eq!(named(&launched, &["SiluGateKernel<", typed]), depth, "{dtype:?}: {:?}", launched.by_kernel);
        assert_eq!(named(&launched, &["SiluGateBackwardKernel<", typed]), depth, "{dtype:?}: {:?}", launched.by_kernel);
        // The adaLN output in the products' type, read and its gradient written so by the norms
        // (two a block, one in the head) and the gated residuals (two a block).
        for (kernel, n) in [
            ("RmsNormModulateKernel<", 2 * depth + 1),
            ("RmsNormModulateSumsKernel<", 2 * depth + 1),
            ("GatedResidualKernel<", 2 * depth),
            ("GatedResidualBackwardKernel<", 2 * depth),
        ] {
            assert_eq!(named(&launched, &[kernel, typed]), n, "{dtype:?}, {kernel}: {:?}", launched.by_kernel);
        }
        // Attention as the flash pair: one kernel forward, two backward; else none of them.
        let flash = if kernels == Flash { 3 * depth } else { 0 };
        assert_eq!(named(&launched, &["FlashAttention"]), flash, "{dtype:?}, {kernels:?}: {:?}", launched.by_kernel);
    }
}

#[test]
fn adamw_with_both_emas_runs_many_parameters_per_launch() {
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device();
    let n = 20;
    let one = |len: usize, k: usize| {
        let values: Vec<f32> = (0..len).map(|i| ((i * 7 + k) % 13) as f32 * 0.01 + 0.01).collect();
        Tensor::<1>::from_data(TensorData::new(values, [len]), &device)
    };
    let params: Vec<_> = (0..n).map(|i| one(10 + 3 * i, 1)).collect();
    let grads: Vec<_> = (0..n).map(|i| one(10 + 3 * i, 2)).collect();
    let state: Vec<_> = (0..n).map(|i| [3, 4, 5, 6].map(|k| one(10 + 3 * i, k))).collect();
    let factors = ops::AdamWEmaFactors::new(1e-3, 0.0, (0.9, 0.95), 1e-8, 1, (0.9999, 0.9996));
    // Clones sharing the tensors' memory (new outputs), or copies of their own (in place).
    let step = |own: bool| {
        let copy = |t: &Tensor<1>| if own { Tensor::from_data(t.to_data(), &device) } else { t.clone() };
        let (params, state) =
            (params.iter().map(copy).collect(), state.iter().map(|s| s.each_ref().map(copy)).collect());
        let out = ops::adamw_ema(params, grads.clone(), state, factors);
        out.into_iter().flatten().map(to_vec).collect::<Vec<_>>()
    };
    let mut launches = [0; 2];
    for own in [false, true] {
        let first = step(own);
        let (again, launched) = jit_core::launches::count(|| step(own));
        assert_eq!(again, first, "own: {own}: the same values when counted");
        // As many parameters per launch as the adapter's storage bindings allow: 11 each, or 6
        // in place; 32 or more on any adapter that trains (lavapipe's limit fits two, or five).
        let kernels = named(&launched, &["AdamwEma"]);
        assert!(kernels >= 1 && kernels <= n / 2, "{n} parameters in {kernels} launches: {:?}", launched.by_kernel);
        assert_eq!(launched.total(), kernels, "nothing else launched (copies are uploads): {:?}", launched.by_kernel);
        launches[usize::from(own)] = kernels;
    }
    let [shared, own] = launches;
    assert!(own < shared || shared == 1, "in place, more parameters a launch: {own} launches against {shared}");
}

/// The count of non-finite values over 20 tensors takes a few launches: the multi-tensor kernel
/// (as many tensors a launch as the adapter's storage bindings allow) and the sum of its counts.
#[test]
fn the_non_finite_count_runs_many_tensors_per_launch() {
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device();
    let n = 20;
    let tensors: Vec<Tensor<1>> = (0..n)
        .map(|i| Tensor::<1>::from_data(TensorData::new(vec![1.0f32; 10 + 3 * i], [10 + 3 * i]), &device))
        .collect();
    let count = || ops::non_finite(tensors.clone()).into_scalar::<f32>();
    assert_eq!(count(), 0.0);
    let (again, launched) = jit_core::launches::count(count);
    assert_eq!(again, 0.0);
    let kernels = named(&launched, &["NonFinite"]);
    assert!(kernels >= 1 && kernels <= n / 2, "{n} tensors in {kernels} launches: {:?}", launched.by_kernel);
    assert!(launched.total() <= kernels + 2, "the kernel and the sum of its counts: {:?}", launched.by_kernel);
}

/// A network made `for_sampling` with f16 products stores its linear layers' weights in f16 (and
/// the biases that are added in f16): the same output, bit for bit, as casting them at every
/// forward pass, with a cast launch fewer per linear layer (4 in the embedders, 5 a block, 2 in
/// the head) and per such bias (3 a block, 1 in the head).
#[test]
fn sampling_weights_stored_in_f16_are_cast_once() {
    use burn::tensor::DType;
    use jit_core::Jit;
    let _one = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = wgpu_device();
    if !device.supports_dtype(FloatDType::F16) {
        eprintln!("SKIP: f16 not supported on this adapter");
        return;
    }
    let (config, depth) = (tiny_config(), TINY_DEPTH);
    let net = common::randomized(&config, &device, 9);
    let (x, t, y) = tiny_batch(&device);
    let cast_each_pass = net.clone().with_matmul_dtype(Some(FloatDType::F16));
    let stored = net.for_sampling(Some(FloatDType::F16));
    assert_eq!(stored.blocks[1].mlp.w12.weight.val().dtype(), DType::F16, "weights stored in f16");
    let bias = |layer: &burn::nn::Linear| layer.bias.as_ref().map(|b| b.val().dtype());
    assert_eq!(bias(&stored.blocks[1].mlp.w12), Some(DType::F16), "w12's bias (added in f16) stored in f16");
    assert_eq!(bias(&stored.blocks[1].mlp.w3), Some(DType::F32), "w3's bias (added in f32) kept f32");
    let forward = |net: &Jit| to_vec(net.forward(x.clone(), t.clone(), y.clone()).cast(FloatDType::F32));
    let (want, got) = (forward(&cast_each_pass), forward(&stored));
    let (again, each) = jit_core::launches::count(|| forward(&cast_each_pass));
    let (_, once) = jit_core::launches::count(|| forward(&stored));
    assert_eq!(got, want, "the same output");
    assert_eq!(again, want, "the same output when counted");
    // 16 weights and 7 biases cast at each pass (5 weights and 3 biases a block); burn's
    // fusion may fold one into a product's read or cut its stream elsewhere, so at least one
    // fewer cast launch, and one fewer launch in all, per block layer and per block bias.
    let casts = |l: &jit_core::launches::Launches| named(l, &["CastElement"]);
    let fewer = casts(&each).saturating_sub(casts(&once));
    assert!(fewer >= 8 * depth, "{fewer} fewer casts: {:?}\n{:?}", each.by_kernel, once.by_kernel);
    assert!(each.total() >= once.total() + 8 * depth, "{} launches against {}", once.total(), each.total());
}
