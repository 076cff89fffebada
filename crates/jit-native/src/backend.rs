//! Choosing the compute device: a real GPU through wgpu (Vulkan, Metal, DX12) when there is one,
//! else burn's CPU backend (Flex), which on a CPU is far faster than wgpu on a software driver.

use anyhow::{Result, anyhow, bail};
use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{Device, DeviceKind, FloatDType};
use clap::{Args, ValueEnum};
use jit_core::MemoryLimit;
use jit_core::config::DEFAULT_MEMORY_LIMIT;

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A GPU adapter through wgpu if one exists, else the CPU.
    Auto,
    /// wgpu with its default graphics API.
    Wgpu,
    /// wgpu on Vulkan.
    Vulkan,
    /// wgpu on Metal.
    Metal,
    /// wgpu on DirectX 12.
    Dx12,
    /// burn's CPU backend (Flex).
    Cpu,
}

/// Precision of the linear layers' matrix products; weights, optimizer state, EMAs, norms,
/// softmax and the loss stay f32 (the reference's bf16 autocast).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// Linear layers in f16 (tensor cores on Vulkan/Metal GPUs that have them).
    F16,
    /// Linear layers in bf16 (the official training setting).
    Bf16,
}

/// How a GPU runs attention (`jit_core::ops::AttentionKernels`; the CPU has its own kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attention {
    /// One flash-style kernel forward and two backward: the [B, heads, T, T] scores stay on
    /// chip (f32 arithmetic, no tensor cores).
    Flash,
    /// Two matrix products (tensor cores where the GPU has them) around a softmax kernel: the
    /// scores and probabilities in memory.
    Products,
}

/// `--backend`, `--precision` and `--attention`, shared by every subcommand that computes.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Precision of the linear layers (mixed precision: f32 weights and accumulation).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// How a GPU runs attention.
    #[arg(long, value_enum, default_value_t = Attention::Products)]
    pub attention: Attention,
    /// Which GPU: the index among the machine's discrete GPUs. [default: 0; under mpirun or
    /// srun, the process's rank on its machine]
    #[arg(long, value_name = "K")]
    pub device_index: Option<usize>,
    #[command(flatten)]
    pub limit: LimitArgs,
}

/// `--max-memory`, for every subcommand that builds a model.
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Memory a model may need, in GiB: models and batches estimated to need more are refused
    /// before anything is allocated.
    #[arg(long, value_name = "GIB", default_value_t = DEFAULT_MEMORY_LIMIT.0 as f64 / GIB, value_parser = positive_gib)]
    pub max_memory: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

/// A memory size in GiB: positive and finite.
fn positive_gib(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s}: a positive number of GiB, such as 16 or 0.5")),
    }
}

impl LimitArgs {
    /// The limit in bytes.
    pub fn get(&self) -> MemoryLimit {
        MemoryLimit((self.max_memory.max(0.0) * GIB).min(u64::MAX as f64) as u64)
    }
}

/// Start-up of a `persistence` build: cubecl keeps compiled kernels across runs, as it keeps
/// autotune results (in `target/environment` inside a Cargo workspace, else the user's cache
/// directory), so that a second run skips kernel compilation. Everything else still comes from a
/// `cubecl.toml` and `CUBECL_*` variables, if any. Call before the first device.
#[cfg(feature = "persistence")]
pub fn cache_compiled_kernels() {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    config.compilation.cache = true;
    CubeClRuntimeConfig::try_set(config);
}

/// The shader compiler cubecl uses on an adapter: SPIR-V on Vulkan and MSL on Metal when this
/// build has them (the `spirv` / `metal` features), WGSL through naga otherwise.
pub fn compiler(info: &wgpu::AdapterInfo) -> &'static str {
    match info.backend {
        wgpu::Backend::Vulkan if cfg!(feature = "spirv") => "spirv",
        wgpu::Backend::Metal if cfg!(feature = "metal") => "msl",
        _ => "wgsl",
    }
}

fn describe(info: &wgpu::AdapterInfo, index: Option<usize>) -> String {
    let which = index.map_or(String::new(), |k| format!("discrete GPU {k}: "));
    format!("wgpu on {which}{} ({:?}, {:?}, {} compiler)", info.name, info.backend, info.device_type, compiler(info))
}

fn init_wgpu(api: WgpuBackend, index: Option<usize>) -> Result<(Device, wgpu::AdapterInfo)> {
    let options = Device::wgpu_options().graphics_api(api);
    let options = match index {
        Some(k) => options.device_kind(DeviceKind::DiscreteGpu(k)),
        None => options,
    };
    let (device, setup) = options.init_with_setup().map_err(|e| anyhow!("{e}"))?;
    Ok((device, setup.adapter.get_info()))
}

impl BackendArgs {
    /// The `--max-memory` limit.
    pub fn memory_limit(&self) -> MemoryLimit {
        self.limit.get()
    }

    /// Initialises the chosen device (and how it runs attention) and says on stderr which one
    /// it is.
    pub fn device(&self) -> Result<Device> {
        self.device_named().map(|(device, _)| device)
    }

    /// [`Self::device`] and its description (adapter, graphics API, shader compiler).
    pub fn device_named(&self) -> Result<(Device, String)> {
        self.device_for_rank(None, "")
    }

    /// [`Self::device_named`] for a data-parallel process: `--device-index`, else the GPU of
    /// the process's rank on its machine (`local_rank`), else the default adapter. `who`
    /// starts the line that names the device ("rank 1 of 8 (local 1): ").
    pub fn device_for_rank(&self, local_rank: Option<usize>, who: &str) -> Result<(Device, String)> {
        let index = self.device_index.or(local_rank);
        let api = match self.backend {
            BackendKind::Cpu => None,
            // On Linux a GPU that wgpu can compute on has Vulkan; probing OpenGL as well (EGL,
            // Wayland) only prints errors on headless machines. `--backend wgpu` tries every API.
            BackendKind::Auto if cfg!(target_os = "linux") => Some(WgpuBackend::Vulkan),
            BackendKind::Auto | BackendKind::Wgpu => Some(WgpuBackend::Auto),
            BackendKind::Vulkan => Some(WgpuBackend::Vulkan),
            BackendKind::Metal => Some(WgpuBackend::Metal),
            BackendKind::Dx12 => Some(WgpuBackend::Dx12),
        };
        let cpu = |why: String| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            (Device::flex(), format!("cpu (burn Flex, {threads} threads{why})"))
        };
        let (device, name) = match (self.backend, api) {
            (_, None) => cpu(String::new()),
            (BackendKind::Auto, Some(api)) => match init_wgpu(api, index) {
                Ok((device, info)) if info.device_type != wgpu::DeviceType::Cpu => (device, describe(&info, index)),
                Ok((_, info)) => cpu(format!("; the only GPU adapter is the software '{}'", info.name)),
                Err(e) => cpu(format!("; no GPU adapter: {e}")),
            },
            (kind, Some(api)) => {
                let (device, info) = init_wgpu(api, index)
                    .map_err(|e| anyhow!("no {kind:?} adapter available ({e}); use --backend auto or --backend cpu"))?;
                if cfg!(feature = "spirv")
                    && info.device_type == wgpu::DeviceType::Cpu
                    && info.backend == wgpu::Backend::Vulkan
                {
                    bail!(
                        "'{}' is a software Vulkan driver, on which this build's SPIR-V compiler crashes; use --backend cpu (faster there) or a build without the `spirv` feature",
                        info.name
                    );
                }
                (device, describe(&info, index))
            }
        };
        eprintln!("{who}backend: {name}");
        // The CPU runs its own attention kernels, which keep the probabilities: the switch (and
        // the memory estimate that reads it) says so there.
        let on_cpu = device == Device::flex();
        if on_cpu && self.attention == Attention::Flash {
            eprintln!("{who}note: --attention flash is for GPUs; the CPU runs its own attention kernels");
        }
        if on_cpu && self.device_index.is_some() {
            eprintln!("{who}note: --device-index picks a GPU adapter; the CPU has none to pick");
        }
        jit_core::ops::set_attention_kernels(match self.attention {
            Attention::Flash if !on_cpu => jit_core::ops::AttentionKernels::Flash,
            _ => jit_core::ops::AttentionKernels::Products,
        });
        if on_cpu {
            // burn creates some state (tensors made without a device) on `Device::default()`,
            // which is a GPU backend when compiled in; keep it on the CPU backend we chose.
            // SAFETY: set once during start-up, before the data loader thread starts.
            unsafe { std::env::set_var("BURN_DEVICE", "flex") };
        }
        Ok((device, name))
    }

    /// The linear layers' float type for `--precision` on `device` (`None`: f32); an error
    /// when the device cannot compute in it.
    pub fn matmul_dtype(&self, device: &Device) -> Result<Option<FloatDType>> {
        let dtype = match self.precision {
            Precision::F32 => return Ok(None),
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        };
        if !device.supports_dtype(dtype) {
            let (name, other, other_name) = match dtype {
                FloatDType::BF16 => ("bf16", FloatDType::F16, "f16"),
                _ => ("f16", FloatDType::BF16, "bf16"),
            };
            let instead = if device.supports_dtype(other) {
                format!("--precision {other_name} (the same mixed precision) or f32")
            } else {
                "--precision f32".to_string()
            };
            bail!("this device does not compute in {name}; use {instead}");
        }
        Ok(Some(dtype))
    }
}
