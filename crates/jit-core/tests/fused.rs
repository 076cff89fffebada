//! The fused CPU operations (`jit_core::fused`) against the tensor-op path they replace: the
//! same inputs on burn's Flex device (one-pass kernels) and on its autodiff device (tensor
//! ops), for every operation and for the whole network.

mod common;

use burn::tensor::{Device, Distribution, Int, Tensor};
use common::rel_l2;
use jit_core::fused;
use jit_core::model::norm::RmsNorm;
use jit_core::model::rope::Rope;
use jit_core::JitConfig;

fn devices() -> (Device, Device) {
    let flex = Device::flex();
    (flex.clone(), flex.autodiff())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    common::to_vec(t.without_autodiff())
}

/// The same random tensor on both devices.
fn pair<const D: usize>(shape: [usize; D], scale: f64) -> (Tensor<D>, Tensor<D>) {
    let (flex, ad) = devices();
    let t = Tensor::<D>::random(shape, Distribution::Normal(0.0, scale), &flex);
    let copy = Tensor::from_data(t.to_data(), &ad);
    (t, copy)
}

/// Asserts both paths ran and agree within `tol` (relative L2).
fn assert_close<const D: usize>(what: &str, fused: Tensor<D>, reference: Tensor<D>, tol: f64) {
    assert_eq!(fused.dims(), reference.dims(), "{what}: shape");
    let (a, b) = (values(fused), values(reference));
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let err = rel_l2(&a, &b);
    assert!(err < tol, "{what}: rel. L2 {err:e} ≥ {tol:e}");
}

#[test]
fn the_fused_path_is_taken_exactly_for_flex_tensors_outside_autodiff() {
    let (x, x_ad) = pair([2, 3], 1.0);
    assert!(fused::runs_fused(&x));
    assert!(!fused::runs_fused(&x_ad));
    assert!(!fused::runs_fused(&x.clone().cast(burn::tensor::FloatDType::F16)), "f16 takes the tensor ops");
}

#[test]
fn each_fused_operation_matches_the_tensor_ops() {
    let (flex, ad) = devices();
    // Attention probabilities: rows of 72 (64 image + 8 in-context tokens), large logits.
    let (s, s_ad) = pair([2, 3, 72, 72], 6.0);
    assert_close("softmax", fused::softmax(s, 0.25), fused::softmax(s_ad, 0.25), 1e-6);

    let (c, c_ad) = pair([4, 40], 3.0);
    assert_close("silu", fused::silu(c), fused::silu(c_ad), 1e-6);

    let (h, h_ad) = pair([2, 9, 2 * 37], 2.0);
    assert_close("silu_gate", fused::silu_gate(h), fused::silu_gate(h_ad), 1e-6);

    let norm = |device: &Device| {
        let mut n = RmsNorm::new(24, device);
        n.weight = n.weight.map(|w| w.add_scalar(0.5).mul(Tensor::arange(0..24, device).float().div_scalar(24.0)));
        n
    };
    let (x, x_ad) = pair([3, 10, 24], 1.5);
    let (shift, shift_ad) = pair([3, 1, 24], 1.0);
    let (scale, scale_ad) = pair([3, 1, 24], 1.0);
    assert_close(
        "rms_norm_modulate",
        fused::rms_norm_modulate(&norm(&flex), x, shift, scale),
        fused::rms_norm_modulate(&norm(&ad), x_ad, shift_ad, scale_ad),
        1e-6,
    );

    // qkv of 2 images, 4 prefix + 3×3 tokens, 3 heads of 8 channels.
    let (heads, hd, grid, prefix) = (3, 8, 3, 4);
    let (qkv, qkv_ad) = pair([2, prefix + grid * grid, 3 * heads * hd], 1.0);
    let (q_norm, k_norm) = (norm_of(hd, 0.3, &flex), norm_of(hd, -0.2, &flex));
    let (q_norm_ad, k_norm_ad) = (norm_of(hd, 0.3, &ad), norm_of(hd, -0.2, &ad));
    let (q, k, v) = fused::qkv_heads(qkv, heads, &q_norm, &k_norm, &Rope::new(hd, grid, prefix, &flex));
    let (q_ad, k_ad, v_ad) = fused::qkv_heads(qkv_ad, heads, &q_norm_ad, &k_norm_ad, &Rope::new(hd, grid, prefix, &ad));
    assert_close("qkv_heads q", q, q_ad, 1e-6);
    assert_close("qkv_heads k", k, k_ad, 1e-6);
    assert_close("qkv_heads v", v, v_ad, 0.0 + f64::MIN_POSITIVE);
}

/// An RMSNorm over `dim` with gains `1 + offset·i/dim`.
fn norm_of(dim: usize, offset: f64, device: &Device) -> RmsNorm {
    let mut n = RmsNorm::new(dim, device);
    n.weight = n.weight.map(|w| w.add(Tensor::arange(0..dim as i64, device).float().mul_scalar(offset / dim as f64)));
    n
}

#[test]
fn the_network_agrees_on_both_paths() {
    let (flex, ad) = devices();
    let config = JitConfig::preset("JiT-T/4", 16, 3, 10).unwrap();
    // Random weights everywhere (the reference's zero-initialised adaLN would hide the blocks).
    let (net, net_ad) = (common::randomized(&config, &flex, 7), common::randomized(&config, &ad, 7));
    let (x, x_ad) = pair([2, 3, 16, 16], 1.0);
    let t = Tensor::<1>::from_floats([0.3, 0.8], &flex);
    let y = Tensor::<1, Int>::from_ints([1, 7], &flex);
    let out = net.forward(x, t.clone(), y.clone());
    let out_ad = net_ad.forward(x_ad, t.to_device(&ad), y.to_device(&ad));
    assert_close("JiT-T/4 forward", out, out_ad, 1e-5);
}
