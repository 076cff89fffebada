//! `jit-native info`: what a checkpoint holds.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use jit_core::checkpoint::{self, BLOB_PREFIX};

use crate::backend::LimitArgs;
use crate::model_file;

/// `info` flags.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Checkpoint file.
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub limit: LimitArgs,
}

/// Runs `info`.
pub fn run(a: InfoArgs) -> Result<()> {
    let bytes = model_file::read(&a.checkpoint, a.limit.get())?;
    let ctx = || format!("{} is not a JiT checkpoint", a.checkpoint.display());
    let meta = checkpoint::read_meta(&bytes).with_context(ctx)?;
    a.limit.get().check(&meta.network, 1).with_context(ctx)?;
    let tensors = checkpoint::parse(&bytes).with_context(ctx)?;
    let first = meta.copies.first().cloned().unwrap_or_default();
    let own =
        |n: &str| if first.is_empty() { !n.starts_with(BLOB_PREFIX) } else { n.starts_with(&format!("{first}.")) };
    let mut params = 0usize;
    let mut dtypes = std::collections::BTreeSet::new();
    for (name, view) in tensors.tensors() {
        if own(&name) {
            params += view.shape().iter().product::<usize>();
            dtypes.insert(format!("{:?}", view.dtype()));
        }
    }
    let c = &meta.network;
    println!("file        {} ({:.2} MiB)", a.checkpoint.display(), bytes.len() as f64 / 1048576.0);
    println!("step        {}", meta.step);
    println!("parameters  {params} ({:.2} M)", params as f64 / 1e6);
    println!(
        "memory      about {:.2} GiB to sample one image, {:.2} GiB to train on a batch of 32",
        meta.network.forward_bytes(1) as f64 / 1073741824.0,
        meta.network.train_bytes(32) as f64 / 1073741824.0
    );
    println!(
        "network     {}×{}×{} px, patch {}, D {}, depth {}, heads {}, bottleneck {}, in-context {} from block {}",
        c.in_channels,
        c.input_size,
        c.input_size,
        c.patch_size,
        c.hidden_size,
        c.depth,
        c.num_heads,
        c.bottleneck_dim,
        c.in_context_len,
        c.in_context_start
    );
    println!("classes     {} {:?}", c.num_classes, meta.class_names);
    println!(
        "diffusion   predict {:?}, loss {:?}, noise_scale {}, t_eps {}, P_mean {}, P_std {}",
        meta.diffusion.prediction,
        meta.diffusion.loss,
        meta.diffusion.noise_scale,
        meta.diffusion.t_eps,
        meta.diffusion.p_mean,
        meta.diffusion.p_std
    );
    println!(
        "sampler     {:?}, {} steps, cfg {} in {:?}",
        meta.sampler.method, meta.sampler.steps, meta.sampler.cfg, meta.sampler.interval
    );
    let copies: Vec<&str> = meta.copies.iter().map(|c| if c.is_empty() { "<single>" } else { c.as_str() }).collect();
    println!("weights     {} ({})", copies.join(", "), dtypes.into_iter().collect::<Vec<_>>().join(", "));
    println!("config      {}", serde_json::to_string(&meta.network)?);
    Ok(())
}
