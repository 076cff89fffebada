//! `jit-native import`: an official PyTorch `checkpoint-last.pth` → our checkpoint format.
//!
//! The pickle is read as data (burn-store's PyTorch reader for the tensors, [`crate::pickle`] for
//! `args` and `epoch`); nothing in it is executed. The network config comes from the tensor
//! shapes; what shapes cannot tell (`in_context_start`) comes from the preset named in
//! `args.model` or from `--in-context-start`. Diffusion and sampler settings come from `args`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::store::pytorch_reader::{DType, PytorchReader};
use burn::tensor::Device;
use clap::Args;
use jit_core::checkpoint::{self, CheckpointMeta, StoreDtype};
use jit_core::host::HostTensor;
use jit_core::state_dict;
use jit_core::{DiffusionConfig, Jit, JitConfig, Method, SamplerConfig};

use crate::fsutil::write_atomic;
use crate::pickle::{Py, read_torch_zip};

/// `import` flags.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The official checkpoint (`checkpoint-last.pth`).
    pub pth: PathBuf,
    /// Output file (our safetensors format).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Which copy: the first EMA (what the paper samples with), the second, or the raw weights.
    #[arg(long, value_parser = ["ema1", "ema2", "raw"], default_value = "ema1")]
    pub weights: String,
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
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

fn read_f32(t: &burn::store::pytorch_reader::Tensor) -> Result<Vec<f32>> {
    let bytes = t.read().with_context(|| format!("cannot read tensor '{}'", t.name))?;
    Ok(match t.dtype() {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_ne_bytes(c.try_into().unwrap())).collect(),
        DType::F64 => bytes.chunks_exact(8).map(|c| f64::from_ne_bytes(c.try_into().unwrap()) as f32).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| half_f16(u16::from_ne_bytes([c[0], c[1]]))).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| f32::from_bits((u16::from_ne_bytes([c[0], c[1]]) as u32) << 16)).collect(),
        other => bail!("tensor '{}' has dtype {other:?}, expected a float type", t.name),
    })
}

fn half_f16(bits: u16) -> f32 {
    burn::tensor::f16::from_bits(bits).to_f32()
}

/// Infers the network from state-dict shapes (keys without the `net.` prefix).
pub fn infer_config(shapes: &HashMap<String, Vec<usize>>, in_context_start: Option<usize>) -> Result<JitConfig> {
    let get = |k: &str| shapes.get(k).ok_or_else(|| anyhow!("not a JiT checkpoint: no tensor 'net.{k}'"));
    let proj1 = get("x_embedder.proj1.weight")?;
    let proj2 = get("x_embedder.proj2.weight")?;
    let pos = get("pos_embed")?;
    let table = get("y_embedder.embedding_table.weight")?;
    let qn = get("blocks.0.attn.q_norm.weight")?;
    let w12 = get("blocks.0.mlp.w12.weight")?;
    if proj1.len() != 4 || proj2.len() != 4 || pos.len() != 3 || table.len() != 2 {
        bail!("not a JiT checkpoint: unexpected embedding shapes");
    }
    let (bottleneck, channels, patch, hidden) = (proj1[0], proj1[1], proj1[2], proj2[0]);
    let grid = (pos[1] as f64).sqrt().round() as usize;
    let depth = (0..).take_while(|i| shapes.contains_key(&format!("blocks.{i}.norm1.weight"))).count();
    let mlp_hidden = w12[0] / 2;
    let mlp_ratio = [4.0, 8.0 / 3.0, 2.0, 3.0, 6.0]
        .into_iter()
        .find(|r| ((((hidden as f64) * r) as usize) as f64 * 2.0 / 3.0) as usize == mlp_hidden)
        .unwrap_or(mlp_hidden as f64 * 1.5 / hidden as f64);
    let in_context_len = shapes.get("in_context_posemb").map_or(0, |s| s[1]);
    let start = match (in_context_len, in_context_start) {
        (0, _) => 0,
        (_, Some(s)) => s,
        _ => bail!(
            "the checkpoint has {in_context_len} in-context tokens but no preset says where they start: pass --in-context-start N (B: 4, L: 8, H: 10) or --model JiT-B/16"
        ),
    };
    let config = JitConfig {
        input_size: grid * patch,
        patch_size: patch,
        in_channels: channels,
        hidden_size: hidden,
        depth,
        num_heads: hidden / qn[0],
        mlp_ratio,
        num_classes: table[0] - 1,
        bottleneck_dim: bottleneck,
        in_context_len,
        in_context_start: start,
        attn_drop: 0.0,
        proj_drop: 0.0,
    };
    config.validate()?;
    Ok(config)
}

/// Runs `import`.
pub fn run(a: ImportArgs) -> Result<()> {
    let dtype: StoreDtype = a.dtype.parse()?;
    let path = &a.pth;
    let root = read_torch_zip(path)?;
    let key = match a.weights.as_str() {
        "raw" => "model",
        "ema1" => "model_ema1",
        _ => "model_ema2",
    };
    if !matches!(root, Py::Dict(_)) || root.get(key).is_none() {
        bail!("{} is not a JiT training checkpoint: it has no '{key}' entry", path.display());
    }
    let args = root.get("args");
    let arg_f = |k: &str| args.and_then(|a| a.get(k)).and_then(Py::as_f64);
    let preset_name = a.model.clone().or_else(|| args.and_then(|a| a.get("model")).and_then(Py::as_str).map(String::from));

    let reader = PytorchReader::with_top_level_key(path, key)
        .map_err(|e| anyhow!("cannot read tensors of '{key}' in {}: {e}", path.display()))?;
    let mut tensors: HashMap<String, HostTensor> = HashMap::new();
    for name in reader.keys() {
        let t = reader.get(&name).expect("listed key");
        let Some(short) = name.strip_prefix("net.") else { continue };
        tensors.insert(short.to_string(), HostTensor { shape: t.shape().to_vec(), data: read_f32(t)? });
    }
    let shapes: HashMap<String, Vec<usize>> = tensors.iter().map(|(k, v)| (k.clone(), v.shape.clone())).collect();
    let ic_start = match (a.in_context_start, &preset_name) {
        (Some(s), _) => Some(s),
        (None, Some(p)) => JitConfig::preset(p, 256, 3, 1000).ok().map(|c| c.in_context_start),
        _ => None,
    };
    let config = infer_config(&shapes, ic_start).with_context(|| format!("cannot import {}", path.display()))?;
    let model = state_dict::load(Jit::new(&config, &Device::flex())?, |k| tensors.get(k).cloned())
        .with_context(|| format!("cannot import {}", path.display()))?;
    let expected: std::collections::HashSet<String> =
        state_dict::expected_shapes(&model).into_iter().map(|(k, _)| k).collect();
    if let Some(extra) = tensors.keys().find(|k| !expected.contains(*k)) {
        bail!("{} has tensor 'net.{extra}' that JiT does not have: not a JiT checkpoint?", path.display());
    }

    let default_noise = match config.input_size {
        s if s >= 1024 => 4.0,
        s if s >= 512 => 2.0,
        _ => 1.0,
    };
    let diffusion = DiffusionConfig {
        p_mean: arg_f("P_mean").unwrap_or(-0.8),
        p_std: arg_f("P_std").unwrap_or(0.8),
        noise_scale: a.noise_scale.or(arg_f("noise_scale")).unwrap_or(default_noise),
        t_eps: arg_f("t_eps").unwrap_or(0.05),
        label_drop_prob: arg_f("label_drop_prob").unwrap_or(0.1),
        ..DiffusionConfig::default()
    };
    let method = args
        .and_then(|a| a.get("sampling_method"))
        .and_then(Py::as_str)
        .and_then(|m| m.parse::<Method>().ok())
        .unwrap_or(Method::Heun);
    let sampler = SamplerConfig {
        method,
        steps: arg_f("num_sampling_steps").map_or(50, |v| v as usize),
        cfg: arg_f("cfg").unwrap_or(2.9),
        interval: (arg_f("interval_min").unwrap_or(0.1), arg_f("interval_max").unwrap_or(1.0)),
    };
    let mut meta = CheckpointMeta::new(config.clone(), diffusion, sampler);
    if let Some(p) = &a.class_names {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        meta.class_names = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        if meta.class_names.len() != config.num_classes {
            bail!("{} has {} names but the model has {} classes", p.display(), meta.class_names.len(), config.num_classes);
        }
    }
    let epoch = match root.get("epoch") {
        Some(Py::Int(e)) => *e,
        _ => -1,
    };
    meta.extra.insert("imported_from".into(), serde_json::json!({
        "file": path.display().to_string(), "copy": key, "epoch": epoch, "model": preset_name,
    }));
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
