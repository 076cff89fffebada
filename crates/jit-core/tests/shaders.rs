//! The op layer on GPUs (`jit_core::ops` on burn's cubecl backend: the kernels of `shaders/`
//! for f32 tensors, in and outside autodiff) against the reference bodies and the tensor ops,
//! on wgpu (Mesa lavapipe on CI) and on the CPU (Flex), on the same inputs. The whole network and the sampler through
//! these kernels are checked against the official code in golden.rs.

mod common;

use burn::backend::Dispatch;
use burn::tensor::{Device, Tensor, TensorData};
use common::{from_prim, prim, rel_l2, to_vec, wgpu_device};
use jit_core::model::norm::RMS_EPS;
use jit_core::model::rope::Rope;
use jit_core::ops::{self, reference};

/// [`random`] around `mean`, as a leaf tensor (of an autodiff device too).
fn random_leaf<const D: usize>(shape: [usize; D], mean: f32, std: f32, seed: u64, device: &Device) -> Tensor<D> {
    let values: Vec<f32> = jit_core::rng::PortableRng::new(seed)
        .normals(shape.iter().product())
        .into_iter()
        .map(|v| mean + v * std)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn random<const D: usize>(shape: [usize; D], std: f32, seed: u64, device: &Device) -> Tensor<D> {
    random_leaf(shape, 0.0, std, seed, device)
}

/// Random norm gains `[dim]` around 1.
fn gain(dim: usize, seed: u64, device: &Device) -> Tensor<1> {
    random_leaf([dim], 1.0, 0.5, seed, device)
}

/// The reference `modulate(rms_norm(x))`, op by op, with shift and scale chunks `index` and
/// `index + 1` of `modulation` `[B, n·D]`.
fn reference_norm_modulate(x: Tensor<3>, weight: Tensor<1>, modulation: Tensor<2>, index: usize) -> Tensor<3> {
    from_prim(reference::rms_norm_modulate::<Dispatch>(prim(x), prim(weight), prim(modulation), index, RMS_EPS))
}

/// Chunk `index` of `modulation` `[B, n·D]` as `[B, 1, D]`, by burn's slice.
fn chunk(modulation: Tensor<2>, index: usize, d: usize) -> Tensor<3> {
    modulation.narrow(1, index * d, d).unsqueeze_dim(1)
}

/// The reference `qkv_heads`, op by op: `[3, B, heads, T, hd]`.
fn reference_qkv_heads(qkv: Tensor<3>, (qw, kw): (Tensor<1>, Tensor<1>), rope: &Rope, heads: usize) -> Tensor<5> {
    let (cos, sin) = (prim(rope.cos.clone()), prim(rope.sin_signed.clone()));
    from_prim(reference::qkv_heads::<Dispatch>(prim(qkv), prim(qw), prim(kw), cos, sin, heads, RMS_EPS))
}

fn assert_close(what: &str, ours: Tensor<4>, reference: Tensor<4>, tol: f64) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let (ours, reference) = (to_vec(ours), to_vec(reference));
    assert!(ours.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let err = rel_l2(&ours, &reference);
    assert!(err <= tol, "{what}: rel. L2 {err:e} > {tol:e}");
}

/// The gradients of `inputs` under `loss = Σ f(inputs)·r` for a fixed random `r`: the fused op
/// (`ours`) against the tensor ops (`reference`), on wgpu under autodiff, every input tracked.
fn assert_same_gradients<const N: usize, const D: usize>(
    what: &str,
    inputs: [Tensor<D>; N],
    ours: impl Fn([Tensor<D>; N]) -> Tensor<4>,
    reference: impl Fn([Tensor<D>; N]) -> Tensor<4>,
) {
    let grads = |f: &dyn Fn([Tensor<D>; N]) -> Tensor<4>| {
        let tracked = inputs.clone().map(|t| t.require_grad());
        let out = f(tracked.clone());
        let r = random(out.dims(), 1.0, 77, &out.device());
        let g = out.mul(r).sum().backward();
        tracked.map(|t| to_vec(t.grad(&g).expect("every input gets a gradient")))
    };
    let (ours, reference) = (grads(&ours), grads(&reference));
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert!(a.iter().all(|v| v.is_finite()), "{what}: input {i}'s gradient is not finite");
        let err = rel_l2(a, b);
        assert!(err <= 1e-5, "{what}: input {i}'s gradient off by rel. L2 {err:e}");
    }
}

#[test]
fn rms_norm_modulate_gradients_match_the_tensor_ops() {
    let device = wgpu_device().autodiff();
    for (seed, &(b, t, d)) in NORM_SHAPES[..2].iter().enumerate() {
        let seed = seed as u64 * 10;
        // The adaLN output [B, 4·D] as a [1, B, 4·D] leaf; shift and scale its chunks 1 and 2
        // (its gradient: theirs there, zeros at chunks 0 and 3).
        let inputs = [
            random([b, t, d], 2.0, seed, &device),
            random_leaf([1, 1, d], 1.0, 0.5, seed + 3, &device),
            random([1, b, 4 * d], 0.7, seed + 1, &device),
        ];
        let with_norm = |[x, w, m]: [Tensor<3>; 3], fused_path: bool| {
            let (w, m) = (w.reshape([d]), m.squeeze_dim::<2>(0));
            let out = if fused_path {
                ops::rms_norm_modulate(x, w, m, 1, RMS_EPS)
            } else {
                let (shift, scale) = (chunk(m.clone(), 1, d), chunk(m, 2, d));
                let n = x.clone().div(x.powi_scalar(2).mean_dim(2).add_scalar(RMS_EPS).sqrt()).mul(w.unsqueeze());
                n.mul(scale.add_scalar(1.0)).add(shift)
            };
            out.unsqueeze()
        };
        let what = format!("rms_norm_modulate {b}×{t}×{d}");
        assert_same_gradients(&what, inputs, |i| with_norm(i, true), |i| with_norm(i, false));
    }
}

#[test]
fn qkv_heads_gradients_match_the_tensor_ops() {
    let device = wgpu_device().autodiff();
    // The last: 3·37·4 = 444 query rows, two partial sums of the gains' gradients.
    for &(b, h, hd, grid, prefix) in &[(2, 3, 16, 3, 0), (1, 2, 64, 2, 4), (3, 4, 16, 6, 1)] {
        let t = prefix + grid * grid;
        let rope = Rope::new(hd, grid, prefix, &device);
        let inputs = [
            random([b, t, 3 * h * hd], 1.5, hd as u64, &device),
            random_leaf([1, 1, hd], 1.0, 0.5, 1, &device),
            random_leaf([1, 1, hd], 1.0, 0.5, 2, &device),
        ];
        let heads = |[qkv, qw, kw]: [Tensor<3>; 3], fused_path: bool| {
            let gains = (qw.reshape([hd]), kw.reshape([hd]));
            if fused_path {
                let tables = rope.tables();
                let (q, k, v) = ops::qkv_heads(qkv, gains, tables, h, RMS_EPS);
                Tensor::cat(vec![q, k, v], 0)
            } else {
                reference_qkv_heads(qkv, gains, &rope, h).reshape([3 * b, h, t, hd])
            }
        };
        let what = format!("qkv_heads {b}×{t}, {h} heads of {hd}");
        assert_same_gradients(&what, inputs, |i| heads(i, true), |i| heads(i, false));
    }
}

/// `qkv_heads` and attention as one tracked operation (attention's three gradients straight
/// into `qkv_heads`' backward kernels), attention as the flash pair and as two products, against
/// burn's autodiff of the tensor ops.
#[test]
fn qkv_attention_gradients_match_the_tensor_ops() {
    use ops::AttentionKernels::{Flash, Products};
    let device = wgpu_device().autodiff();
    for &(b, h, hd, grid, prefix, kernels) in
        &[(2, 3, 16, 3, 0, Flash), (1, 2, 64, 2, 4, Flash), (2, 3, 16, 3, 0, Products), (1, 2, 64, 2, 4, Products)]
    {
        ops::set_attention_kernels(kernels);
        let t = prefix + grid * grid;
        let rope = Rope::new(hd, grid, prefix, &device);
        let scale = 1.0 / (hd as f32).sqrt();
        let inputs = [
            random([b, t, 3 * h * hd], 1.5, hd as u64 + 3, &device),
            random_leaf([1, 1, hd], 1.0, 0.5, 4, &device),
            random_leaf([1, 1, hd], 1.0, 0.5, 5, &device),
        ];
        let attention = |[qkv, qw, kw]: [Tensor<3>; 3], fused_path: bool| {
            let gains = (qw.reshape([hd]), kw.reshape([hd]));
            let out = if fused_path {
                ops::qkv_attention(qkv, gains, rope.tables(), h, scale, RMS_EPS)
            } else {
                let parts = reference_qkv_heads(qkv, gains, &rope, h);
                let part = |i: usize| parts.clone().narrow(0, i, 1).squeeze_dim::<4>(0);
                let scores = part(0).matmul(part(1).swap_dims(2, 3)).mul_scalar(scale);
                burn::tensor::activation::softmax(scores, 3).matmul(part(2)).swap_dims(1, 2).reshape([b, t, h * hd])
            };
            out.unsqueeze()
        };
        let what = format!("qkv_attention {b}×{t}, {h} heads of {hd}, {kernels:?}");
        assert_same_gradients(&what, inputs, |i| attention(i, true), |i| attention(i, false));
    }
    ops::set_attention_kernels(Products);
}

#[test]
fn silu_gate_and_gated_residual_gradients_match_the_tensor_ops() {
    let device = wgpu_device().autodiff();
    let (b, t, hidden) = (2, 9, 37);
    let h = random([b, t, 2 * hidden], 3.0, 5, &device);
    assert_same_gradients(
        "silu_gate",
        [h],
        |[h]| ops::silu_gate(h).unsqueeze(),
        |[h]| {
            let halves = h.chunk(2, 2);
            burn::tensor::activation::silu(halves[0].clone()).mul(halves[1].clone()).unsqueeze()
        },
    );
    // The gate: chunk 1 of an adaLN output [B, 3·D] (a [1, B, 3·D] leaf).
    let (b, t, d) = (3, 17, 48);
    let inputs = [
        random([b, t, d], 1.0, 1, &device),
        random([1, b, 3 * d], 1.0, 2, &device),
        random([b, t, d], 2.0, 3, &device),
    ];
    assert_same_gradients(
        "gated_residual",
        inputs,
        |[x, m, y]| ops::gated_residual(x, m.squeeze_dim(0), 1, y).unsqueeze(),
        |[x, m, y]| x.add(chunk(m.squeeze_dim(0), 1, d).mul(y)).unsqueeze(),
    );
}

/// The adaLN output `[B, 3·D]`, as a block passes it whole to the ops that read its chunks:
/// they are read where they lie, with no copy, and its gradient matches; chunks of a transposed
/// output (channels not contiguous) are copied first.
#[test]
fn adaln_chunks_are_read_in_place_in_values_and_gradients() {
    let device = wgpu_device().autodiff();
    for &(b, t, d, transposed) in &[(2, 9, 256, false), (3, 5, 40, false), (3, 5, 40, true)] {
        // The modulation as a [1, B, 3·D] or [1, 3·D, B] leaf.
        let m = random(if transposed { [1, 3 * d, b] } else { [1, b, 3 * d] }, 1.0, 2, &device);
        let inputs = [random([b, t, d], 1.0, 1, &device), m, random([b, t, d], 1.0, 3, &device)];
        // The output [B, 3·D] and the norm's gain.
        let parts = |m: Tensor<3>| {
            let m: Tensor<2> = m.squeeze_dim(0);
            let m = if transposed { m.transpose() } else { m };
            let w = Tensor::<1>::ones([d], &m.device());
            (m, w)
        };
        let fused = |[x, m, y]: [Tensor<3>; 3]| {
            let (m, w) = parts(m);
            let n = ops::rms_norm_modulate(x, w, m.clone(), 0, RMS_EPS);
            ops::gated_residual(y, m, 2, n)
        };
        let plain = |[x, m, y]: [Tensor<3>; 3]| {
            let (m, w) = parts(m);
            y.add(chunk(m.clone(), 2, d).mul(reference_norm_modulate(x, w, m, 0)))
        };
        let what = format!("adaLN chunks {b}×{t}×{d}{}", if transposed { ", transposed" } else { "" });
        assert_same_gradients(&what, inputs.clone(), |i| fused(i).unsqueeze(), |i| plain(i).unsqueeze());
        let values = inputs.map(|t| t.inner());
        let (_, launched) = jit_core::launches::count(|| to_vec(fused(values)));
        let copies: usize = launched.by_kernel.iter().filter(|(k, _)| k.contains("copy_kernel")).map(|(_, n)| n).sum();
        assert_eq!(copies > 0, transposed, "{what}: {copies} copies ({:?})", launched.by_kernel);
    }
}

/// A part of a tensor and its gradient (one `pad_part` kernel) against burn's slice, along each
/// dimension, on wgpu and Flex under autodiff.
#[test]
fn parts_match_slices_in_values_and_gradients() {
    for device in [wgpu_device().autodiff(), Device::flex().autodiff()] {
        for (dim, parts) in [(0, 3), (1, 6), (2, 2), (3, 4)] {
            let x = random([3, 12, 4, 8], 1.0, dim as u64, &device);
            for index in [0, parts - 1] {
                let what = format!("part {index} of {parts} along {dim} on {device:?}");
                let ours = |[x]: [Tensor<4>; 1]| ops::part(x, dim, index, parts).mul_scalar(1.5);
                let len = x.dims()[dim] / parts;
                let theirs = |[x]: [Tensor<4>; 1]| x.narrow(dim, index * len, len).mul_scalar(1.5);
                assert_close(&what, ours([x.clone()]), theirs([x.clone()]), 0.0);
                assert_same_gradients(&what, [x.clone()], ours, theirs);
            }
        }
    }
}

/// `(batch, tokens, dim)`: rows past one cube's 256 units, a width that is not a power of two,
/// and more than 65 535 rows (cubes folded into two dimensions).
const NORM_SHAPES: [(usize, usize, usize); 3] = [(2, 17, 48), (3, 5, 300), (2, 35_000, 8)];

#[test]
fn rms_norm_modulate_matches_the_tensor_ops() {
    for device in [wgpu_device(), Device::flex()] {
        for (seed, &(b, t, d)) in NORM_SHAPES.iter().enumerate() {
            let seed = seed as u64 * 10;
            let x = random([b, t, d], 2.0, seed, &device);
            let m = random([b, 3 * d], 0.7, seed + 1, &device);
            let w = gain(d, seed + 3, &device);
            let ours = ops::rms_norm_modulate(x.clone(), w.clone(), m.clone(), 1, RMS_EPS);
            let reference = reference_norm_modulate(x, w, m, 1);
            let what = format!("rms_norm_modulate {b}×{t}×{d} on {device:?}");
            assert_close(&what, ours.unsqueeze(), reference.unsqueeze(), 1e-6);
        }
    }
}

/// The shift and scale as the chunks they are, against burn's slices of the adaLN output,
/// whichever chunks they are (here of a `[B, 6·D]` output, as a block's).
#[test]
fn rms_norm_modulate_reads_its_chunks_of_the_modulation() {
    let device = wgpu_device();
    let (b, t, d) = (3, 7, 40);
    let m = random([b, 6 * d], 1.0, 5, &device);
    let x = random([b, t, d], 1.0, 6, &device);
    let w = gain(d, 7, &device);
    for index in [0, 3, 4] {
        let ours = ops::rms_norm_modulate(x.clone(), w.clone(), m.clone(), index, RMS_EPS);
        let (shift, scale) = (chunk(m.clone(), index, d), chunk(m.clone(), index + 1, d));
        let n =
            x.clone().div(x.clone().powi_scalar(2).mean_dim(2).add_scalar(RMS_EPS).sqrt()).mul(w.clone().unsqueeze());
        let reference = n.mul(scale.add_scalar(1.0)).add(shift);
        assert_close(&format!("chunks {index}, {}", index + 1), ours.unsqueeze(), reference.unsqueeze(), 1e-6);
    }
}

#[test]
fn qkv_heads_matches_the_tensor_ops() {
    // (batch, heads, head_dim, grid, in-context prefix tokens)
    for device in [wgpu_device(), Device::flex()] {
        for &(b, h, hd, grid, prefix) in &[(2, 3, 16, 3, 0), (1, 2, 64, 2, 4), (2, 1, 40, 2, 1)] {
            let t = prefix + grid * grid;
            let qkv = random([b, t, 3 * h * hd], 1.5, hd as u64, &device);
            let gains = (gain(hd, 1, &device), gain(hd, 2, &device));
            let rope = Rope::new(hd, grid, prefix, &device);
            let tables = rope.tables();
            let (q, k, v) = ops::qkv_heads(qkv.clone(), gains.clone(), tables, h, RMS_EPS);
            let parts = reference_qkv_heads(qkv.clone(), gains, &rope, h).chunk(3, 0);
            let part = |i: usize| parts[i].clone().squeeze_dim::<4>(0);
            let what = |name: &str| format!("qkv_heads {name}, {b}×{t}, {h} heads of {hd} on {device:?}");
            assert_close(&what("q"), q, part(0), 1e-6);
            assert_close(&what("k"), k, part(1), 1e-6);
            let plain = qkv.reshape([b, t, 3, h, hd]).permute([2, 0, 3, 1, 4]).chunk(3, 0)[2].clone().squeeze_dim(0);
            assert_close(&what("v"), v, plain, 0.0);
        }
    }
}

/// `rms_norm_modulate` and `gated_residual`, both ways, with the adaLN output in f16 (the
/// mixed-precision path: f32 `x`, `y` and gains), one kernel each with the arithmetic in f32,
/// against the reference bodies (f32, results rounded once to the modulation's type): the
/// normalised tokens and the adaLN output's gradients in f16, the rest f32.
#[test]
fn the_adaln_kernels_take_an_f16_adaln_output() {
    use burn::tensor::{DType, FloatDType};
    use jit_core::ops::JitOps;
    let device = wgpu_device();
    for &(b, t, d, index) in &[(2, 9, 256, 0), (3, 70, 40, 3)] {
        let x = random([b, t, d], 2.0, 1, &device);
        let y = random([b, t, d], 1.0, 2, &device);
        let m = random([b, 6 * d], 0.7, 3, &device).cast(FloatDType::F16);
        let w = gain(d, 4, &device);
        let g16 = random([b, t, d], 1.0, 5, &device).cast(FloatDType::F16);
        let g32 = random([b, t, d], 1.0, 6, &device);
        let what = format!("f16 adaLN output, {b}×{t}×{d}, chunk {index}");
        let before = ops::kernels_run();
        let [x_, y_, g16_, g32_] = [x, y, g16, g32].map(prim);
        let (w_, m_) = (prim(w), prim(m));
        let pairs: Vec<(&str, Tensor<3>, Tensor<3>, f64)> = {
            type D = Dispatch;
            let h = <D as JitOps>::rms_norm_modulate(x_.clone(), w_.clone(), m_.clone(), index, RMS_EPS);
            let rh = reference::rms_norm_modulate::<D>(x_.clone(), w_.clone(), m_.clone(), index, RMS_EPS);
            let (dx, dw, dm) = <D as JitOps>::rms_norm_modulate_backward(
                x_.clone(),
                w_.clone(),
                m_.clone(),
                index,
                g16_.clone(),
                RMS_EPS,
            );
            let (rdx, rdw, rdm) =
                reference::rms_norm_modulate_backward::<D>(x_.clone(), w_.clone(), m_.clone(), index, g16_, RMS_EPS);
            let out = <D as JitOps>::gated_residual(x_.clone(), m_.clone(), index + 2, y_.clone());
            let rout = reference::gated_residual::<D>(x_.clone(), m_.clone(), index + 2, y_.clone());
            let (gm, gy) = <D as JitOps>::gated_residual_backward(m_.clone(), index + 2, g32_.clone(), y_.clone());
            let (rgm, rgy) = reference::gated_residual_backward::<D>(m_, index + 2, g32_, y_);
            let t3 = |t| from_prim::<3>(t);
            let m3 = |t| from_prim::<2>(t).unsqueeze::<3>();
            let w3 = |t| from_prim::<1>(t).reshape([1, 1, d]);
            vec![
                ("h", t3(h), t3(rh), 1e-3),
                ("dx", t3(dx), t3(rdx), 1e-5),
                ("dweight", w3(dw), w3(rdw), 1e-5),
                ("dmodulation (norm)", m3(dm), m3(rdm), 1e-3),
                ("out", t3(out), t3(rout), 1e-6),
                ("dmodulation (gate)", m3(gm), m3(rgm), 1e-3),
                ("dy", t3(gy), t3(rgy), 1e-6),
            ]
        };
        for (name, ours, theirs, tol) in pairs {
            let typed = if name == "h" || name.starts_with("dmodulation") { DType::F16 } else { DType::F32 };
            assert_eq!(ours.dtype(), typed, "{what}, {name}: its type");
            assert_close(&format!("{what}, {name}"), ours.unsqueeze(), theirs.unsqueeze(), tol);
        }
        // (Counted once read: under burn's fusion the kernels run when their values are.)
        assert_eq!(ops::kernels_run() - before, 4, "{what}: all four ran their kernels");
    }
}

/// SwiGLU's gate and its gradient on the f16 `w12` product's output (the mixed-precision path),
/// one kernel each with the arithmetic in f32, against the reference bodies (f32, rounded once
/// to f16); f32 too, to 1e-6. Large inputs (±12) reach SiLU's flat and linear ends.
#[test]
fn silu_gate_and_its_gradient_in_f32_and_f16_match_the_reference() {
    use burn::tensor::{DType, FloatDType};
    use jit_core::ops::JitOps;
    let device = wgpu_device();
    for (dtype, tol) in [(FloatDType::F32, 1e-6), (FloatDType::F16, 1e-3)] {
        for &(b, t, hidden) in &[(2, 9, 37), (3, 70, 384)] {
            let h = random([b, t, 2 * hidden], 4.0, hidden as u64, &device).cast(dtype);
            let g = random([b, t, hidden], 1.0, 7, &device).cast(dtype);
            let what = format!("{dtype:?} silu_gate {b}×{t}×{hidden}");
            let before = ops::kernels_run();
            let ours: Tensor<3> = from_prim(<Dispatch as JitOps>::silu_gate(prim(h.clone())));
            let dh: Tensor<3> = from_prim(<Dispatch as JitOps>::silu_gate_backward(prim(h.clone()), prim(g.clone())));
            let theirs: Tensor<3> = from_prim(reference::silu_gate::<Dispatch>(prim(h.clone())));
            let rdh: Tensor<3> = from_prim(reference::silu_gate_backward::<Dispatch>(prim(h), prim(g)));
            assert_eq!((ours.dtype(), dh.dtype()), (DType::from(dtype), DType::from(dtype)), "{what}: h's type");
            assert_close(&what, ours.unsqueeze(), theirs.unsqueeze(), tol);
            assert_close(&format!("{what}, dh"), dh.unsqueeze(), rdh.unsqueeze(), tol);
            // (Counted once read: under burn's fusion the kernels run when their values are.)
            assert_eq!(ops::kernels_run() - before, 2, "{what}: both ran a kernel");
        }
    }
}

/// `qkv_heads` and its backward pass on f16 `qkv` (the mixed-precision product's output) and
/// f16 gradients, as one kernel each with the arithmetic in f32, against the reference bodies
/// (which compute in f32 and round the results to f16).
#[test]
fn qkv_heads_in_f16_matches_the_reference() {
    use burn::tensor::{DType, FloatDType};
    use jit_core::ops::JitOps;
    let device = wgpu_device();
    for &(b, h, hd, grid, prefix) in &[(2, 3, 16, 3, 0), (1, 2, 64, 2, 4)] {
        let t = prefix + grid * grid;
        let rope = Rope::new(hd, grid, prefix, &device);
        let qkv = random([b, t, 3 * h * hd], 1.5, hd as u64, &device).cast(FloatDType::F16);
        // The parts' gradients: views into one [3, B, heads, T, hd] tensor, the second and third
        // at an offset in its buffer.
        let grad = random([3, b, h, t, hd], 1.0, 9, &device).cast(FloatDType::F16);
        let grads = || grad.clone().chunk(3, 0).into_iter().map(|g| prim(g.squeeze_dim::<4>(0))).collect::<Vec<_>>();
        let (qw, kw) = (gain(hd, 1, &device), gain(hd, 2, &device));
        let (cos, sin) = rope.tables();
        let args = || (prim(qkv.clone()), prim(qw.clone()), prim(kw.clone()), prim(cos.clone()), prim(sin.clone()));
        let what = format!("f16 qkv_heads {b}×{t}, {h} heads of {hd}");
        let (x, w1, w2, c, s) = args();
        let ours: Tensor<5> = from_prim(<Dispatch as JitOps>::qkv_heads(x, w1, w2, c, s, h, RMS_EPS));
        let (x, w1, w2, c, s) = args();
        let theirs: Tensor<5> = from_prim(reference::qkv_heads::<Dispatch>(x, w1, w2, c, s, h, RMS_EPS));
        assert_eq!(ours.dtype(), DType::F16, "{what}: the output in qkv's type");
        assert_close(&what, ours.reshape([3 * b, h, t, hd]), theirs.reshape([3 * b, h, t, hd]), 1e-3);
        let (x, w1, w2, c, s) = args();
        let [dq, dk, dv] = <[_; 3]>::try_from(grads()).expect("three parts");
        let (dqkv, dqw, dkw) = <Dispatch as JitOps>::qkv_heads_backward(x, w1, w2, c, s, dq, dk, dv, h, RMS_EPS);
        let (x, w1, w2, c, s) = args();
        let g = <[_; 3]>::try_from(grads()).expect("three parts");
        let (rqkv, rqw, rkw) = reference::qkv_heads_backward::<Dispatch>(x, w1, w2, c, s, g, h, RMS_EPS);
        let (dqkv, rqkv): (Tensor<3>, Tensor<3>) = (from_prim(dqkv), from_prim(rqkv));
        assert_eq!(dqkv.dtype(), DType::F16, "{what}: dqkv in qkv's type");
        assert_close(&format!("{what}, dqkv"), dqkv.unsqueeze(), rqkv.unsqueeze(), 1e-3);
        for (name, ours, theirs) in [("dq_weight", dqw, rqw), ("dk_weight", dkw, rkw)] {
            let (ours, theirs): (Tensor<1>, Tensor<1>) = (from_prim(ours), from_prim(theirs));
            assert_eq!(ours.dtype(), DType::F32, "{what}: {name} in f32");
            assert_close(&format!("{what}, {name}"), ours.reshape([1, 1, 1, hd]), theirs.reshape([1, 1, 1, hd]), 1e-5);
        }
    }
}

/// Attention for sampling on GPUs (the flash kernel; the two products and `scaled_softmax`)
/// against burn's tensor ops.
#[test]
fn attention_matches_the_tensor_ops() {
    use ops::AttentionKernels::{Flash, Products};
    let device = wgpu_device();
    for kernels in [Flash, Products] {
        ops::set_attention_kernels(kernels);
        for &(b, h, t, hd) in &[(2, 3, 10, 16), (1, 2, 68, 64)] {
            let [q, k, v] = [1, 2, 3].map(|i| random([b, h, t, hd], 1.0, 40 + i, &device));
            let scale = 1.0 / (hd as f64).sqrt();
            let ours = ops::attention(q.clone(), k.clone(), v.clone(), scale as f32);
            let p = burn::tensor::activation::softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(scale), 3);
            let reference = p.matmul(v).swap_dims(1, 2).reshape([b, t, h * hd]);
            let what = format!("attention {b}×{h}×{t}×{hd}, {kernels:?}");
            assert_close(&what, ours.unsqueeze(), reference.unsqueeze(), 1e-5);
        }
    }
    ops::set_attention_kernels(Products);
}

/// The flash pair against the reference bodies on wgpu: the output and each query's
/// log-sum-exp against `reference::flash_attention`, the three gradients against the products'
/// backward pass from the probabilities. Token counts within a tile, across key tiles and across
/// cubes of 64 queries (70), spare cubes (several heads), head widths 16 to 128 (and 6, which
/// falls back to the reference body), f32 and f16, and scores of ±100 and more (exp overflows
/// f32 without the running maximum).
#[test]
fn flash_attention_matches_the_reference_in_values_and_gradients() {
    use burn::tensor::FloatDType::{F16, F32};
    use jit_core::ops::JitOps;
    let device = wgpu_device();
    for &(b, h, t, hd, dtype, std) in &[
        (2, 3, 10, 16, F32, 1.0),
        (1, 2, 70, 64, F32, 1.0),
        (3, 1, 33, 40, F32, 1.0),
        (1, 1, 20, 128, F32, 1.0),
        (1, 2, 130, 80, F32, 1.0),
        (2, 1, 70, 64, F32, 40.0),
        (1, 2, 70, 64, F16, 1.0),
        (2, 1, 33, 40, F16, 10.0),
        // A head width the kernels do not take (not a multiple of 4): the reference body.
        (1, 2, 9, 6, F32, 1.0),
    ] {
        let what = format!("flash_attention {b}×{h}×{t}×{hd} {dtype:?}, q of std {std}");
        let q = random([b, h, t, hd], std, 51, &device).cast(dtype);
        let [k, v] = [52, 53].map(|seed| random([b, h, t, hd], 1.0, seed, &device).cast(dtype));
        let grad = random([b, t, h * hd], 1.0, 54, &device).cast(dtype);
        let scale = 1.0 / (hd as f32).sqrt();
        let (out, lse) =
            <Dispatch as JitOps>::flash_attention(prim(q.clone()), prim(k.clone()), prim(v.clone()), scale);
        let (out, lse): (Tensor<3>, Tensor<3>) = (from_prim(out), from_prim(lse));
        assert_eq!(out.dtype(), burn::tensor::DType::from(dtype), "{what}: the output in the inputs' type");
        let dq_dk_dv = <Dispatch as JitOps>::flash_attention_backward(
            prim(q.clone()),
            prim(k.clone()),
            prim(v.clone()),
            prim(out.clone()),
            prim(lse.clone()),
            prim(grad.clone()),
            scale,
        );
        // The reference in f32 on the same (f16-rounded) values: the kernels work in f32.
        let f32s = |t: Tensor<4>| prim(t.cast(F32));
        let (ref_out, ref_lse) =
            reference::flash_attention::<Dispatch>(f32s(q.clone()), f32s(k.clone()), f32s(v.clone()), scale);
        let probs = reference::head_attention::<Dispatch>(f32s(q.clone()), f32s(k.clone()), f32s(v.clone()), scale).1;
        let grads = reference::head_attention_backward::<Dispatch>(
            f32s(q),
            f32s(k),
            f32s(v),
            probs,
            prim(grad.cast(F32)),
            scale,
        );
        // f16 outputs are rounded to 11 bits (2⁻¹¹ ≈ 4.9e-4 relative). With scores of ±100 the
        // softmax is nearly one-hot and `dq = Σ p·(dp − δ)·k` mostly cancels: both sides carry f32
        // rounding of ≈ 1e-5 there (a missing running maximum gives non-finite values instead).
        let tol = match (dtype, std > 1.0) {
            (F32, false) => 1e-5,
            (F32, true) => 3e-5,
            _ => 1e-3,
        };
        let flat = |t: Tensor<3>| t.cast(F32).unsqueeze::<4>();
        assert_close(&format!("{what}, output"), flat(out), flat(from_prim(ref_out)), tol);
        assert_close(&format!("{what}, log-sum-exp"), flat(lse), flat(from_prim(ref_lse)), 1e-6);
        for (name, ours, theirs) in
            [("dq", dq_dk_dv.0, grads.0), ("dk", dq_dk_dv.1, grads.1), ("dv", dq_dk_dv.2, grads.2)]
        {
            let ours: Tensor<4> = from_prim(ours);
            assert_eq!(ours.dtype(), burn::tensor::DType::from(dtype), "{what}: {name} in the inputs' type");
            assert_close(&format!("{what}, {name}"), ours.cast(F32), from_prim(theirs), tol);
        }
    }
}

/// Attention's softmax and its backward pass against the reference bodies on wgpu, for f32 and
/// f16 scores: rows shorter and longer than a cube's 256 units, and more than
/// 65 535 rows (cubes folded into two dimensions).
#[test]
fn scaled_softmax_matches_the_reference_in_values_and_gradients() {
    use burn::tensor::{DType, FloatDType};
    use jit_core::ops::JitOps;
    let device = wgpu_device();
    // Scores around `mean`: ±1500 scaled overflow exp unless each row's maximum is subtracted.
    for &(shape, dtype, mean) in &[
        ([2, 3, 10, 10], FloatDType::F32, 0.0),
        ([1, 2, 300, 300], FloatDType::F32, 0.0),
        ([1, 1, 70_000, 5], FloatDType::F32, 0.0),
        ([2, 3, 10, 10], FloatDType::F32, 1500.0),
        ([1, 2, 300, 300], FloatDType::F32, -1500.0),
        ([2, 3, 10, 10], FloatDType::F16, 0.0),
        ([1, 2, 300, 300], FloatDType::F16, 0.0),
        ([2, 3, 10, 10], FloatDType::F16, 1500.0),
    ] {
        let what = format!("scaled_softmax {shape:?} {dtype:?} around {mean}");
        let scores = random_leaf(shape, mean, 3.0, 5, &device).cast(dtype);
        let grad = random(shape, 1.0, 6, &device).cast(dtype);
        let scale = if mean == 0.0 { 0.37 } else { 1.0 };
        let (probs, typed) = <Dispatch as JitOps>::scaled_softmax(prim(scores.clone()), scale);
        let (ref_probs, ref_typed) = reference::scaled_softmax::<Dispatch>(prim(scores.clone()), scale);
        let (probs, typed): (Tensor<4>, Tensor<4>) = (from_prim(probs), from_prim(typed));
        assert_eq!(probs.dtype(), DType::F32, "{what}: f32 probabilities");
        assert_eq!(typed.dtype(), DType::from(dtype), "{what}: probabilities in the scores' type");
        let tol = if dtype == FloatDType::F32 { 1e-6 } else { 1e-3 };
        assert_close(&what, probs.clone(), from_prim(ref_probs.clone()), 1e-6);
        assert_close(&format!("{what}, typed"), typed, from_prim(ref_typed), tol);
        let ours: Tensor<4> =
            from_prim(<Dispatch as JitOps>::scaled_softmax_backward(prim(probs), prim(grad.clone()), scale));
        let theirs: Tensor<4> = from_prim(reference::scaled_softmax_backward::<Dispatch>(ref_probs, prim(grad), scale));
        assert_eq!(ours.dtype(), DType::from(dtype), "{what}: the gradient in the scores' type");
        assert_close(&format!("{what}, gradient"), ours, theirs, tol.max(1e-5));
    }
}

#[test]
fn cfg_mix_matches_the_tensor_ops() {
    for device in [wgpu_device(), Device::flex()] {
        let v = random([6, 3, 9, 9], 1.0, 3, &device);
        let ours = ops::cfg_mix(v.clone(), 2.9);
        let halves = v.chunk(2, 0);
        let reference = halves[1].clone().add(halves[0].clone().sub(halves[1].clone()).mul_scalar(2.9));
        assert_close(&format!("cfg_mix on {device:?}"), ours, reference, 1e-7);
    }
}

#[test]
fn silu_gate_matches_the_tensor_ops() {
    // More values than one cube, a hidden width that is not a power of two, large inputs.
    for device in [wgpu_device(), Device::flex()] {
        for &(b, t, hidden) in &[(2, 9, 37), (3, 70, 384)] {
            let h = random([b, t, 2 * hidden], 4.0, hidden as u64, &device);
            let ours = ops::silu_gate(h.clone());
            let halves = h.chunk(2, 2);
            let reference = burn::tensor::activation::silu(halves[0].clone()).mul(halves[1].clone());
            let what = format!("silu_gate {b}×{t}×{hidden} on {device:?}");
            assert_close(&what, ours.unsqueeze(), reference.unsqueeze(), 1e-6);
        }
    }
}

/// The gate is a chunk of the adaLN output (a strided view), as the block passes it.
#[test]
fn gated_residual_matches_the_tensor_ops() {
    let device = wgpu_device();
    for &(b, t, d) in &[(2, 17, 48), (3, 70, 300)] {
        let m = random([b, 3 * d], 1.0, d as u64, &device);
        let (x, y) = (random([b, t, d], 1.0, 1, &device), random([b, t, d], 2.0, 2, &device));
        let ours = ops::gated_residual(x.clone(), m.clone(), 1, y.clone());
        let reference = x.add(chunk(m, 1, d).mul(y));
        assert_close(&format!("gated_residual {b}×{t}×{d}"), ours.unsqueeze(), reference.unsqueeze(), 1e-7);
    }
}

/// Many parameters (more than one launch takes) of odd sizes, one of 70 001 values, with
/// gradients, moments (the second positive) and two EMAs.
fn adamw_inputs(shapes: &[usize], device: &Device) -> (Vec<Tensor<1>>, Vec<Tensor<1>>, Vec<[Tensor<1>; 4]>) {
    let one = |n: usize, k: u64, std: f32| random([n], std, 10 * n as u64 + k, device);
    let params = shapes.iter().map(|&n| one(n, 1, 1.0)).collect();
    let grads = shapes.iter().map(|&n| one(n, 2, 0.01)).collect();
    let state =
        shapes.iter().map(|&n| [one(n, 3, 0.01), one(n, 4, 1e-4).abs(), one(n, 5, 1.0), one(n, 6, 1.0)]).collect();
    (params, grads, state)
}

#[test]
fn adamw_with_both_emas_matches_the_tensor_ops() {
    let device = wgpu_device();
    let mut shapes: Vec<usize> = (0..70).map(|i| 1 + (i * 37) % 300).collect();
    shapes.push(70_001);
    let (params, grads, state) = adamw_inputs(&shapes, &device);
    // A copy of its own (updated in place) or a clone sharing its memory (new outputs).
    let own = |t: &Tensor<1>| Tensor::<1>::from_data(t.to_data(), &device);
    let cases = [
        (ops::AdamWEmaFactors::new(1e-3, 0.0, (0.9, 0.95), 1e-8, 1, (0.9999, 0.9996)), "shared"),
        (ops::AdamWEmaFactors::new(2e-4, 0.05, (0.9, 0.999), 1e-6, 37, (0.5, 0.25)), "shared"),
        (ops::AdamWEmaFactors::new(2e-4, 0.05, (0.9, 0.999), 1e-6, 37, (0.5, 0.25)), "own"),
        (ops::AdamWEmaFactors::new(1e-3, 0.0, (0.9, 0.95), 1e-8, 2, (0.9999, 0.9996)), "every third own"),
    ];
    for (factors, memory) in cases {
        let is_own = |i: usize| memory == "own" || (memory == "every third own" && i.is_multiple_of(3));
        let (p, st): (Vec<_>, Vec<_>) = params
            .iter()
            .zip(&state)
            .enumerate()
            .map(|(i, (p, s))| if is_own(i) { (own(p), s.each_ref().map(own)) } else { (p.clone(), s.clone()) })
            .unzip();
        let before = ops::kernels_run();
        let ours = ops::adamw_ema(p, grads.clone(), st, factors);
        let ours: Vec<[Vec<f32>; 5]> = ours.into_iter().map(|out| out.map(to_vec)).collect();
        // Read back first: under burn's fusion the kernel runs when its results are needed.
        assert!(ops::kernels_run() > before, "the kernel not taken");
        let slots = params
            .iter()
            .zip(&grads)
            .zip(&state)
            .map(|((p, g), [m, v, e1, e2])| [p, g, m, v, e1, e2].map(|t| prim(t.clone())));
        let reference = reference::adamw_ema::<Dispatch>(slots.collect(), &factors);
        for (i, (a, b)) in ours.into_iter().zip(reference).enumerate() {
            for (k, (a, b)) in a.into_iter().zip(b.map(from_prim::<1>)).enumerate() {
                let what =
                    format!("parameter {i} of {}, output {k} (θ, m, v, ema1, ema2), {memory}, {factors:?}", shapes[i]);
                let b = to_vec(b);
                assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
                let err = rel_l2(&a, &b);
                assert!(err <= 1e-6, "{what}: rel. L2 {err:e}");
            }
        }
    }
}

/// Many tensors (more than one launch takes on lavapipe) of odd sizes, one over several cubes'
/// chunks, with NaN and ±∞ at their ends, in their middles and at chunk borders: the kernel
/// counts them exactly, and 0 for finite values (f32::MAX included). (The reference body's
/// tensor ops are checked on the CPU, `fused.rs`: WGSL compilers may fold burn's `x ≠ x` NaN
/// test away, which the kernel avoids by testing the bits.)
#[test]
fn non_finite_counts_nan_and_infinities_over_many_tensors() {
    let device = wgpu_device();
    let mut sizes: Vec<usize> = (0..40).map(|i| 1 + (i * 53) % 300).collect();
    sizes.push(70_001);
    let mut finite: Vec<Vec<f32>> =
        sizes.iter().enumerate().map(|(k, &n)| (0..n).map(|i| ((i + k) % 17) as f32 - 8.0).collect()).collect();
    finite[13][0] = f32::MAX;
    finite[14][0] = -f32::MAX;
    let mut spoiled = finite.clone();
    spoiled[0][0] = f32::NAN;
    spoiled[7][sizes[7] - 1] = f32::INFINITY;
    for (i, v) in [(4095, f32::NEG_INFINITY), (4096, f32::NAN), (35_000, f32::NAN), (70_000, f32::INFINITY)] {
        spoiled[40][i] = v;
    }
    for (values, expected) in [(&finite, 0.0), (&spoiled, 6.0)] {
        let tensors: Vec<Tensor<1>> =
            values.iter().map(|v| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device)).collect();
        let before = ops::kernels_run();
        let ours = ops::non_finite(tensors).into_scalar::<f32>();
        // Read back first: under burn's fusion the kernel runs when its result is needed.
        assert!(ops::kernels_run() > before, "the kernel not taken");
        assert_eq!(ours, expected, "the kernel's count");
    }
}
