//! Shared helpers of the integration tests: golden-vector discovery and error metrics.
#![allow(dead_code)]

use burn::tensor::{Device, DeviceKind, Int, Tensor, TensorData};
use jit_core::host::HostTensor;

/// One golden vector set: `NAME.json` + `NAME.safetensors`.
pub struct GoldenSet {
    pub name: String,
    pub json: serde_json::Value,
    pub bytes: Vec<u8>,
}

#[path = "../../../../tests/golden/dirs.rs"]
mod dirs;

/// The golden sets (`NAME.json` + `NAME.safetensors`) of every golden folder (see
/// `tests/golden/README.md`); a missing folder fails the test.
pub fn golden_sets() -> Vec<GoldenSet> {
    let sets: Vec<GoldenSet> = dirs::golden_files(".json")
        .into_iter()
        .filter(|json| json.with_extension("safetensors").is_file())
        .map(|path| GoldenSet {
            name: path.file_stem().unwrap().to_string_lossy().to_string(),
            json: serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            bytes: std::fs::read(path.with_extension("safetensors")).unwrap(),
        })
        .collect();
    assert!(!sets.is_empty(), "the golden folders hold no NAME.json + NAME.safetensors sets");
    sets
}

/// ‖a − b‖ / ‖b‖.
pub fn rel_l2(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// A tensor as the `Dispatch` backend's primitive (for the reference bodies of `jit_core::ops`).
pub fn prim<const D: usize>(t: Tensor<D>) -> burn::backend::tensor::FloatTensor<burn::backend::Dispatch> {
    t.into_dispatch()
}

/// [`prim`]'s inverse.
pub fn from_prim<const D: usize>(t: burn::backend::tensor::FloatTensor<burn::backend::Dispatch>) -> Tensor<D> {
    Tensor::from_dispatch(t)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

pub fn tensor4(h: &HostTensor, device: &Device) -> Tensor<4> {
    let s: [usize; 4] = h.shape.clone().try_into().unwrap();
    Tensor::from_data(TensorData::new(h.data.clone(), s), device)
}

pub fn tensor1(h: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(h.data.clone(), [h.data.len()]), device)
}

pub fn labels(h: &HostTensor, device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = h.data.iter().map(|v| *v as i64).collect();
    Tensor::from_data(TensorData::new(v, [h.data.len()]), device)
}

/// burn-wgpu on whatever adapter exists (Mesa lavapipe on CI), autotuning kept minimal.
pub fn wgpu_device() -> Device {
    // SAFETY: set before any wgpu runtime thread reads it; tests in this binary only read it.
    unsafe {
        if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
            std::env::set_var("CUBECL_AUTOTUNE_LEVEL", "minimal");
        }
    }
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// A random but non-degenerate network (the reference zero-inits adaLN and the head, which
/// would make every output zero): all weights drawn from N(0, 0.3).
pub fn randomized(config: &jit_core::JitConfig, device: &Device, seed: u64) -> jit_core::Jit {
    let net = jit_core::Jit::new(config, device).unwrap();
    let mut rng = jit_core::rng::PortableRng::new(seed);
    let shapes = jit_core::state_dict::expected_shapes(&net);
    let mut values = std::collections::HashMap::new();
    for (k, s) in shapes {
        let n = s.iter().product();
        let data = rng.normals(n).into_iter().map(|v| v * 0.3).collect();
        values.insert(k, jit_core::host::HostTensor { shape: s, data });
    }
    jit_core::state_dict::load(net, |k| values.get(k).cloned()).unwrap()
}

/// Replaces every parameter by its gradient (zeros where it has none), so that the gradients
/// come out of `state_dict::export` with the reference's keys and layouts.
pub struct ToGrad<'a> {
    pub grads: &'a burn::tensor::Gradients,
}

impl burn::module::ModuleMapper for ToGrad<'_> {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let value = param.val();
        let grad = value.grad(self.grads).unwrap_or_else(|| value.without_autodiff().zeros_like());
        burn::module::Param::initialized(param.id, grad)
    }
}

/// The process-wide attention switch ([`jit_core::ops::set_attention_kernels`]), held by one test
/// at a time: tests run on parallel threads, and the switch also changes the memory estimate.
/// Dropping it sets the default (products) back, a failed assertion included.
pub struct AttentionSwitch(std::sync::MutexGuard<'static, ()>);

static ATTENTION_SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl AttentionSwitch {
    pub fn hold() -> Self {
        Self(ATTENTION_SWITCH.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    pub fn set(&self, kernels: jit_core::ops::AttentionKernels) {
        jit_core::ops::set_attention_kernels(kernels);
    }
}

impl Drop for AttentionSwitch {
    fn drop(&mut self) {
        jit_core::ops::set_attention_kernels(jit_core::ops::AttentionKernels::Products);
    }
}
