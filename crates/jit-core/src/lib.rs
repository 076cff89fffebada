//! # jit-core
//!
//! JiT ("Just image Transformers", Li & He 2025) on burn: pixel-space diffusion with a plain
//! ViT over large patches that predicts the clean image (x-prediction), trained with a velocity
//! loss and sampled with a Heun ODE solver and classifier-free guidance.
//!
//! Backend-agnostic: every function takes burn's run-time [`burn::tensor::Device`], so the same
//! code runs on burn-wgpu (WGSL), the CPU backends and in wasm32. No filesystem, no threads.
//!
//! - [`model`]: the network ([`Jit`]).
//! - [`objective`]: the training loss (the reference's `Denoiser.forward`).
//! - [`sampler`]: Euler/Heun with CFG (the reference's `Denoiser.generate`).
//! - [`train`]: AdamW set-up, learning-rate schedule, [`ema::Ema`].
//! - [`checkpoint`] and [`state_dict`]: weights in and out, named as the reference names them.

pub mod checkpoint;
pub mod config;
pub mod denoiser;
pub mod ema;
pub mod error;
pub mod model;
pub mod objective;
pub mod rng;
pub mod sampler;
pub mod state_dict;
pub mod train;

pub use config::{DiffusionConfig, JitConfig, Method, SamplerConfig, Target};
pub use denoiser::Denoiser;
pub use error::JitError;
pub use model::Jit;
