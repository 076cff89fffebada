//! # jit-core
//!
//! JiT ("Just image Transformers", Li & He 2025) on burn: pixel-space diffusion with a plain
//! ViT over large patches that predicts the clean image (x-prediction), trained with a velocity
//! loss and sampled with a Heun ODE solver and classifier-free guidance.
//!
//! Backend-agnostic: every function takes burn's run-time [`burn::tensor::Device`], so the same
//! code runs on burn-wgpu (WGSL), the CPU backends and in wasm32. No filesystem and no threads of
//! its own (with the `rayon` feature, the fused CPU kernels use rayon's pool, as Flex does).
//!
//! Where things are:
//! - [`config`]: the network ([`JitConfig`], presets, size bounds, memory limit), the
//!   objective ([`DiffusionConfig`]) and sampler defaults ([`SamplerConfig`]).
//! - [`model`]: the network ([`Jit`]), one file per reference class, calling [`ops`]: the op
//!   layer (one burn backend extension; reference bodies, the CPU kernels of [`fused`], the GPU
//!   kernels of `shaders/`, tracked operations under autodiff); [`network`]: the [`Network`]
//!   trait the diffusion math drives (JiT, the toy MLP).
//! - [`objective`]: the training loss (the reference's `Denoiser.forward`).
//! - [`sampler`]: Euler/Heun with CFG (the reference's `Denoiser.generate`), step by step.
//! - [`optim`]: AdamW and the learning-rate schedule; [`ema`]: weight averages; [`loss_scale`]:
//!   dynamic loss scaling for f16 training;
//!   [`train_state`]: network + AdamW + EMAs + step, the training step, save/resume (all but
//!   [`ema`], and the op layer's tracked operations, with the default `train` feature).
//! - [`checkpoint`] and [`state_dict`]: weights in and out, named as the reference names them.
//! - [`host`]: reading tensors back, label tensors, 8-bit images; [`rng`]: portable noise.

#[cfg(feature = "train")]
pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod error;
#[cfg(feature = "train")]
pub mod flat;
pub mod fused;
pub mod host;
#[cfg(feature = "train")]
pub mod loss_scale;
pub mod model;
pub mod network;
pub mod objective;
pub mod ops;
#[cfg(feature = "train")]
pub mod optim;
pub mod rng;
pub mod sampler;
pub mod state_dict;
#[cfg(feature = "train")]
pub mod train_state;

/// Counting the GPU kernels some work launches (`jit-native bench`'s launch columns).
#[cfg(feature = "wgpu")]
pub use jit_shaders::launches;

pub use config::{DiffusionConfig, JitConfig, MemoryLimit, Method, SamplerConfig, SamplerOverrides, Target};
pub use error::JitError;
#[cfg(feature = "train")]
pub use loss_scale::LossScale;
pub use model::Jit;
pub use network::Network;
#[cfg(feature = "train")]
pub use train_state::TrainState;
