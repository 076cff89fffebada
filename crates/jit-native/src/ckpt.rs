//! Reading checkpoints from disk with the errors a user can act on.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use jit_core::Jit;
use jit_core::checkpoint::{self, CheckpointMeta};

/// Which network copy of a checkpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Weights {
    /// The first EMA (what the reference samples with).
    Ema1,
    /// The second EMA.
    Ema2,
    /// The raw trained weights.
    Net,
}

/// Reads a file fully, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read checkpoint {}", path.display()))
}

/// The copy to load: the requested one in training checkpoints, the only one in exports.
pub fn pick_copy(meta: &CheckpointMeta, weights: Weights) -> Result<String> {
    if meta.copies.iter().any(|c| c.is_empty()) {
        return Ok(String::new());
    }
    let want = match weights {
        Weights::Ema1 => "ema1",
        Weights::Ema2 => "ema2",
        Weights::Net => "net",
    };
    if meta.copies.iter().any(|c| c == want) {
        Ok(want.into())
    } else {
        bail!("checkpoint has no '{want}' weights (it has: {})", meta.copies.join(", "))
    }
}

/// Loads a network from `path` on `device`.
pub fn load(path: &Path, weights: Weights, device: &Device) -> Result<(Jit, CheckpointMeta)> {
    let bytes = read(path)?;
    let ctx = || format!("{} is not a usable JiT checkpoint", path.display());
    let meta = checkpoint::read_meta(&bytes).with_context(ctx)?;
    let copy = pick_copy(&meta, weights)?;
    checkpoint::load(&bytes, &copy, device).with_context(ctx)
}
