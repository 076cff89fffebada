//! Choosing the compute device: a real GPU through wgpu (Vulkan, Metal, DX12) when there is one,
//! else burn's CPU backend (Flex), which on a CPU is far faster than wgpu on a software driver.

use anyhow::{Result, anyhow, bail};
use burn::tensor::wgpu::{WgpuBackend, wgpu};
use burn::tensor::{Device, DeviceConfig, FloatDType};
use clap::{Args, ValueEnum};

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

/// Floating-point precision of the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

/// `--backend` and `--precision`, shared by every subcommand that computes.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// Float precision (f16/bf16 on GPUs that support them).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

fn init_wgpu(api: WgpuBackend) -> Result<(Device, wgpu::AdapterInfo)> {
    let (device, setup) = Device::wgpu_options().graphics_api(api).init_with_setup().map_err(|e| anyhow!("{e}"))?;
    Ok((device, setup.adapter.get_info()))
}

impl BackendArgs {
    /// Initialises the chosen device and says on stderr which one it is.
    pub fn device(&self) -> Result<Device> {
        let api = match self.backend {
            BackendKind::Cpu => None,
            BackendKind::Auto | BackendKind::Wgpu => Some(WgpuBackend::Auto),
            BackendKind::Vulkan => Some(WgpuBackend::Vulkan),
            BackendKind::Metal => Some(WgpuBackend::Metal),
            BackendKind::Dx12 => Some(WgpuBackend::Dx12),
        };
        let device = match (self.backend, api) {
            (_, None) => {
                eprintln!("backend: cpu (burn Flex, {} threads)", std::thread::available_parallelism().map_or(1, |n| n.get()));
                Device::flex()
            }
            (BackendKind::Auto, Some(api)) => match init_wgpu(api) {
                Ok((device, info)) if info.device_type != wgpu::DeviceType::Cpu => {
                    eprintln!("backend: wgpu on {} ({:?}, {:?})", info.name, info.backend, info.device_type);
                    device
                }
                Ok((_, info)) => {
                    eprintln!("backend: cpu (burn Flex; the only wgpu adapter is the software '{}')", info.name);
                    Device::flex()
                }
                Err(e) => {
                    eprintln!("backend: cpu (burn Flex; no GPU adapter: {e})");
                    Device::flex()
                }
            },
            (kind, Some(api)) => {
                let (device, info) = init_wgpu(api).map_err(|e| {
                    anyhow!("no {kind:?} adapter available ({e}); use --backend auto or --backend cpu")
                })?;
                eprintln!("backend: wgpu on {} ({:?}, {:?})", info.name, info.backend, info.device_type);
                device
            }
        };
        if device == Device::flex() {
            // burn creates some state (e.g. restored optimizer moments) on `Device::default()`,
            // which is wgpu when compiled in; keep it on the CPU backend we chose.
            // SAFETY: set once during start-up, before the data loader thread starts.
            unsafe { std::env::set_var("BURN_DEVICE", "flex") };
        }
        let mut device = device;
        let dtype = match self.precision {
            Precision::F32 => return Ok(device),
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        };
        if !device.supports_dtype(dtype) {
            bail!("this device does not support {:?} arithmetic; use --precision f32", self.precision);
        }
        device
            .configure(DeviceConfig::default().float_dtype(dtype))
            .map_err(|e| anyhow!("cannot switch the device to {:?}: {e:?}", self.precision))?;
        Ok(device)
    }
}
