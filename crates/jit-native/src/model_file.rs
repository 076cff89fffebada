//! Reading model files (training checkpoints and exports) from disk, within the memory limit,
//! with errors that name the file.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use jit_core::checkpoint::{self, CheckpointMeta, WeightCopy};
use jit_core::{Jit, MemoryLimit};

/// Reads a file fully, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))
}

/// Loads the `weights` copy of the network in `path` on `device`.
pub fn load(path: &Path, weights: WeightCopy, device: &Device, limit: MemoryLimit) -> Result<(Jit, CheckpointMeta)> {
    let bytes = read(path)?;
    let ctx = || format!("{} is not a usable JiT checkpoint", path.display());
    let meta = checkpoint::read_meta(&bytes).with_context(ctx)?;
    let copy = weights.pick(&meta).with_context(ctx)?;
    checkpoint::load_limited(&bytes, &copy, device, limit).with_context(ctx)
}
