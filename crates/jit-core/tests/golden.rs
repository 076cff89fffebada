//! Parity with the official PyTorch JiT: every vector set in the golden directory (see
//! `tests/golden/README.md`) is checked on the CPU backend (Flex): activations, constants,
//! network output, loss, every gradient and every sampler output; and the forward pass of one
//! set on burn-wgpu.

mod common;

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Device;
use common::*;
use jit_core::checkpoint::{decode, load_from, parse};
use jit_core::host::HostTensor;
use jit_core::model::embed::sincos_pos_embed;
use jit_core::model::rope::rope_tables;
use jit_core::objective::{StepNoise, loss};
use jit_core::sampler::sample;
use jit_core::state_dict;
use jit_core::{DiffusionConfig, JitConfig, Method, SamplerConfig};

const FWD_TOL: f64 = 1e-4;
const GRAD_TOL: f64 = 1e-3;
const SAMPLE_TOL: f64 = 1e-3;

struct Loaded {
    config: JitConfig,
    diffusion: DiffusionConfig,
    tensors: HashMap<String, HostTensor>,
}

fn load_set(set: &GoldenSet) -> Loaded {
    let config: JitConfig = serde_json::from_value(set.json["config"].clone()).unwrap();
    let diffusion = DiffusionConfig {
        noise_scale: set.json["noise_scale"].as_f64().unwrap(),
        t_eps: set.json["t_eps"].as_f64().unwrap(),
        label_drop_prob: 0.0,
        ..DiffusionConfig::default()
    };
    let st = parse(&set.bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let h = decode(&k, &v).unwrap();
            (k, h)
        })
        .collect();
    Loaded { config, diffusion, tensors }
}

fn check(what: &str, ours: &[f32], reference: &[f32], tol: f64, failures: &mut Vec<String>) -> f64 {
    let err = rel_l2(ours, reference);
    if err.is_nan() || err > tol {
        failures.push(format!("{what}: rel L2 {err:.3e} > {tol:.0e}"));
    }
    err
}

fn net(set: &GoldenSet, g: &Loaded, device: &Device) -> jit_core::Jit {
    let st = parse(&set.bytes).unwrap();
    load_from(&st, "param", &g.config, device).unwrap()
}

fn forward_checks(set: &GoldenSet, device: &Device, failures: &mut Vec<String>) {
    let g = load_set(set);
    let t = &g.tensors;
    let model = net(set, &g, device);
    let (out, acts) =
        model.forward_traced(tensor4(&t["in.z"], device), tensor1(&t["in.t"], device), labels(&t["in.y"], device));
    let err = check(&format!("{}: out.net", set.name), &to_vec(out), &t["out.net"].data, FWD_TOL, failures);
    println!("{} [{:?}] out.net rel L2 {err:.2e}", set.name, device);
    let mut seen = 0;
    for (name, value) in acts {
        if let Some(reference) = t.get(&format!("act.{name}")) {
            check(&format!("{}: act.{name}", set.name), &to_vec(value), &reference.data, FWD_TOL, failures);
            seen += 1;
        }
    }
    let expected = t.keys().filter(|k| k.starts_with("act.")).count();
    if seen != expected {
        failures.push(format!("{}: compared {seen} of {expected} act.* tensors", set.name));
    }
}

#[test]
fn golden_cpu_forward_constants_loss_grads_samplers() {
    let sets = golden_sets();
    let device = Device::flex();
    let mut failures = Vec::new();
    for set in &sets {
        forward_checks(set, &device, &mut failures);
        let g = load_set(set);
        let t = &g.tensors;
        let c = &g.config;

        // Constants: RoPE tables and the fixed position embedding.
        let (cos, sin) = rope_tables(c.head_dim(), c.grid_size(), 0);
        check(&format!("{}: const.rope_cos", set.name), &cos, &t["const.rope_cos"].data, FWD_TOL, &mut failures);
        check(&format!("{}: const.rope_sin", set.name), &sin, &t["const.rope_sin"].data, FWD_TOL, &mut failures);
        if c.in_context_len > 0 {
            let (cos, sin) = rope_tables(c.head_dim(), c.grid_size(), c.in_context_len);
            check(
                &format!("{}: const.rope_ic_cos", set.name),
                &cos,
                &t["const.rope_ic_cos"].data,
                FWD_TOL,
                &mut failures,
            );
            check(
                &format!("{}: const.rope_ic_sin", set.name),
                &sin,
                &t["const.rope_ic_sin"].data,
                FWD_TOL,
                &mut failures,
            );
        }
        let pos = sincos_pos_embed(c.hidden_size, c.grid_size());
        check(&format!("{}: pos_embed", set.name), &pos, &t["param.pos_embed"].data, FWD_TOL, &mut failures);

        // Loss and gradients on the autodiff device.
        let ad = device.clone().autodiff();
        let model = net(set, &g, &ad).train();
        let draw = StepNoise {
            t: tensor1(&t["in.t"], &ad),
            noise: tensor4(&t["in.noise"], &ad),
            labels: labels(&t["in.y"], &ad),
        };
        let l = loss(&model, &g.diffusion, tensor4(&t["in.x"], &ad), draw);
        let err =
            check(&format!("{}: out.loss", set.name), &to_vec(l.clone()), &t["out.loss"].data, FWD_TOL, &mut failures);
        println!("{} loss rel err {err:.2e}", set.name);
        let grads = l.backward();
        let grad_model = model.map(&mut ToGrad { grads: &grads });
        let ours = state_dict::export(&grad_model).unwrap();
        let mut worst = 0f64;
        let mut n = 0;
        for (key, reference) in t.iter().filter(|(k, _)| k.starts_with("grad.")) {
            let name = &key["grad.".len()..];
            match ours.get(name) {
                Some(g) => {
                    worst = worst.max(check(
                        &format!("{}: {key}", set.name),
                        &g.data,
                        &reference.data,
                        GRAD_TOL,
                        &mut failures,
                    ));
                    n += 1;
                }
                None => failures.push(format!("{}: no gradient for {name}", set.name)),
            }
        }
        println!("{} {n} gradients, worst rel L2 {worst:.2e}", set.name);
        assert!(n > 0, "{}: golden set has no grad.* tensors", set.name);

        // Samplers from in.z0 with labels in.y.
        let model = net(set, &g, &device);
        for s in g_samplers(set) {
            let (tag, sampler) = s;
            let reference = &t[&format!("out.sample.{tag}")];
            let z = sample(
                &model,
                &g.diffusion,
                &sampler,
                tensor4(&t["in.z0"], &device),
                labels(&t["in.y"], &device),
                |_| true,
            )
            .unwrap();
            let err = check(
                &format!("{}: out.sample.{tag}", set.name),
                &to_vec(z),
                &reference.data,
                SAMPLE_TOL,
                &mut failures,
            );
            println!("{} sampler {tag} rel L2 {err:.2e}", set.name);
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
}

fn g_samplers(set: &GoldenSet) -> Vec<(String, SamplerConfig)> {
    set.json["samplers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let interval = s["interval"].as_array().unwrap();
            (
                s["tag"].as_str().unwrap().to_string(),
                SamplerConfig {
                    method: s["method"].as_str().unwrap().parse::<Method>().unwrap(),
                    steps: s["steps"].as_u64().unwrap() as usize,
                    cfg: s["cfg"].as_f64().unwrap(),
                    interval: (interval[0].as_f64().unwrap(), interval[1].as_f64().unwrap()),
                },
            )
        })
        .collect()
}

#[test]
fn golden_wgpu_forward() {
    use jit_core::ops::AttentionKernels;
    let sets = golden_sets();
    let device = wgpu_device();
    let mut failures = Vec::new();
    // The smallest set keeps lavapipe time down; forward and activations only, with attention
    // as two products and as the flash kernel.
    let set = sets.iter().min_by_key(|s| s.bytes.len()).unwrap();
    for kernels in [AttentionKernels::Products, AttentionKernels::Flash] {
        jit_core::ops::set_attention_kernels(kernels);
        let before = failures.len();
        forward_checks(set, &device, &mut failures);
        for failure in &mut failures[before..] {
            *failure = format!("{kernels:?}: {failure}");
        }
    }
    jit_core::ops::set_attention_kernels(AttentionKernels::Products);
    assert!(failures.is_empty(), "golden mismatches on wgpu:\n{}", failures.join("\n"));
}
