//! `jit-native export`: the single-copy file the web page loads (f16 by default).

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use jit_core::checkpoint::{self, StoreDtype, WeightCopy};

use crate::backend::LimitArgs;
use crate::fsutil::{check_output, write_atomic};
use crate::model_file;

/// `export` flags.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Source checkpoint.
    pub checkpoint: PathBuf,
    /// Output file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace the output file if it exists (never the input or a file of a training run).
    #[arg(long)]
    pub force: bool,
    /// Storage precision: f16 (half the size; the browser converts to f32 on load), bf16 or f32.
    #[arg(long, value_enum, default_value_t = StoreDtype::F16)]
    pub dtype: StoreDtype,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value_t = WeightCopy::Ema1)]
    pub weights: WeightCopy,
    #[command(flatten)]
    pub limit: LimitArgs,
    /// Class names, comma-separated (default: those in the checkpoint).
    #[arg(long, value_delimiter = ',')]
    pub class_names: Option<Vec<String>>,
}

/// Runs `export`.
pub fn run(a: ExportArgs) -> Result<()> {
    check_output(&a.out, &[&a.checkpoint], a.force)?;
    let dtype = a.dtype;
    let (model, mut meta) = model_file::load(&a.checkpoint, a.weights, &Device::flex(), a.limit.get())?;
    if let Some(names) = a.class_names {
        if names.len() != meta.network.num_classes {
            bail!("--class-names has {} names but the model has {} classes", names.len(), meta.network.num_classes);
        }
        // `sample --class NAME` picks a class by its name: each must be there, and once.
        if let Some(i) = names.iter().position(|n| n.trim().is_empty()) {
            bail!("--class-names: name {} is empty; give each class a name", i + 1);
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.to_lowercase())) {
            bail!("--class-names: '{}' is given twice; give each class its own name", checkpoint::printable(dup));
        }
        meta.class_names = names.iter().map(|n| checkpoint::printable(n)).collect();
    }
    meta.extra.clear();
    let bytes = checkpoint::save(&meta, &[("", &model)], dtype)?;
    write_atomic(&a.out, &bytes)?;
    println!(
        "wrote {} ({:.2} MiB, {:?}, {} parameters, {} classes)",
        a.out.display(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        dtype,
        model.num_params(),
        meta.network.num_classes
    );
    Ok(())
}
