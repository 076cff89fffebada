//! `jit-native import`: an official PyTorch `checkpoint-last.pth` → our checkpoint format
//! (the conversion is [`crate::pth::convert`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use jit_core::checkpoint::{self, StoreDtype, WeightCopy};

use crate::fsutil::{check_output, write_atomic};
use crate::pth::convert::{ImportOptions, Imported, import};

/// `import` flags.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The official checkpoint (`checkpoint-last.pth`).
    pub pth: PathBuf,
    /// Output file (our safetensors format).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace the output file if it exists (never the input or a file of a training run).
    #[arg(long)]
    pub force: bool,
    /// Which copy: the first EMA (what the paper samples with), the second, or the raw weights
    /// (`net`, also `raw`).
    #[arg(long, value_enum, default_value_t = WeightCopy::Ema1)]
    pub weights: WeightCopy,
    /// Preset whose `in_context_start` to use (default: `args.model` of the checkpoint).
    #[arg(long)]
    pub model: Option<String>,
    /// Block where in-context tokens start (overrides the preset).
    #[arg(long)]
    pub in_context_start: Option<usize>,
    /// Noise scale (default: `args.noise_scale`, else 1/2/4 at 256/512/1024 px).
    #[arg(long)]
    pub noise_scale: Option<f64>,
    /// Class names, one per line.
    #[arg(long)]
    pub class_names: Option<PathBuf>,
    /// Storage precision of the output.
    #[arg(long, value_enum, default_value_t = StoreDtype::F32)]
    pub dtype: StoreDtype,
}

/// Runs `import`.
pub fn run(a: ImportArgs) -> Result<()> {
    check_output(&a.out, &[&a.pth], a.force)?;
    let dtype = a.dtype;
    let path = &a.pth;
    let options = ImportOptions {
        weights: a.weights,
        model: a.model.clone(),
        in_context_start: a.in_context_start,
        noise_scale: a.noise_scale,
    };
    let Imported { key, epoch, mut meta, model, .. } = import(path, &options)?;
    let config = meta.network.clone();
    if let Some(p) = &a.class_names {
        let text = crate::fsutil::read_text(p, 64 << 20, "class names file")?;
        meta.class_names = text.lines().map(|l| checkpoint::printable(l.trim())).filter(|l| !l.is_empty()).collect();
        if meta.class_names.len() != config.num_classes {
            bail!(
                "{} has {} names but the model has {} classes",
                p.display(),
                meta.class_names.len(),
                config.num_classes
            );
        }
    }
    let bytes = checkpoint::save(&meta, &[("", &model)], dtype)?;
    write_atomic(&a.out, &bytes)?;
    println!(
        "imported {} ({key}, epoch {epoch}) → {}: {}×{} px, patch {}, D {}, depth {}, {} classes",
        path.display(),
        a.out.display(),
        config.input_size,
        config.input_size,
        config.patch_size,
        config.hidden_size,
        config.depth,
        config.num_classes
    );
    Ok(())
}
