//! An official PyTorch `checkpoint-last.pth` → a JiT network with its settings.
//!
//! The file is untrusted and is read as data: [`super::pickle`] reads `data.pkl` first, within
//! its caps (size, nesting, memo growth, object count), then burn-store's PyTorch reader gives
//! the tensors of the chosen copy; names, dtypes, shapes and total sizes are checked before any
//! tensor data is read. The network config comes from the tensor shapes; what shapes cannot
//! tell (`in_context_start`) comes from the preset named in `args.model` or from the caller.
//! Diffusion and sampler settings come from `args`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burn::store::pytorch_reader::{DType, PytorchReader};
use burn::tensor::Device;
use jit_core::checkpoint::{CheckpointMeta, WeightCopy};
use jit_core::host::{HostTensor, StoredFloat};
use jit_core::state_dict;
use jit_core::{DiffusionConfig, Jit, JitConfig, Method, SamplerConfig};

use super::pickle::{Py, read_torch_zip};

/// Most tensors under the chosen key (JiT-H has about 450 per copy of the weights).
pub const MAX_TENSORS: usize = 1 << 16;
/// Most bytes the imported weights may take as f32, whatever the file size.
pub const MAX_F32_BYTES: u64 = 16 << 30;

/// What to import and how (the non-output flags of `import`).
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Which copy of the weights (`net` is the reference's raw `model`).
    pub weights: WeightCopy,
    /// Preset whose `in_context_start` to use (default: `args.model` of the checkpoint).
    pub model: Option<String>,
    /// Block where in-context tokens start (overrides the preset).
    pub in_context_start: Option<usize>,
    /// Noise scale (default: `args.noise_scale`, else 1/2/4 at 256/512/1024 px).
    pub noise_scale: Option<f64>,
}

/// An imported checkpoint, ready to save.
pub struct Imported {
    /// The state dict it came from (`model_ema1`, ...).
    pub key: &'static str,
    /// `epoch` of the checkpoint, -1 when absent.
    pub epoch: i64,
    /// Config, diffusion and sampler settings.
    pub meta: CheckpointMeta,
    /// The network with the imported weights.
    pub model: Jit,
}

fn read_f32(name: &str, t: &burn::store::pytorch_reader::Tensor) -> Result<Vec<f32>> {
    let format = match t.dtype() {
        DType::F32 => StoredFloat::F32,
        DType::F64 => StoredFloat::F64,
        DType::F16 => StoredFloat::F16,
        DType::BF16 => StoredFloat::BF16,
        other => bail!("tensor '{name}' has dtype {other:?}, expected a float type"),
    };
    let bytes = t.read().with_context(|| format!("cannot read tensor '{name}'"))?;
    if bytes.len() != t.num_elements() * format.size() {
        bail!("tensor '{name}' read {} bytes, expected {}", bytes.len(), t.num_elements() * format.size());
    }
    format.decode(&bytes).with_context(|| format!("tensor '{name}' is truncated"))
}

/// Checks a set of tensors before any of their data is read: float types only, and no more
/// bytes than the file holds (only broadcast or overlapping views could declare more, and
/// those would be materialised in full) or than [`MAX_F32_BYTES`] as f32. `what` names them.
fn check_tensors<'a>(
    tensors: impl Iterator<Item = (&'a String, &'a burn::store::pytorch_reader::Tensor)>,
    file_len: u64,
    what: &str,
) -> Result<()> {
    let (mut declared, mut as_f32) = (0u64, 0u64);
    for (name, t) in tensors {
        if !matches!(t.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            bail!("tensor '{name}' has dtype {:?}, expected a float type", t.dtype());
        }
        declared = declared.saturating_add(t.byte_len() as u64);
        as_f32 = as_f32.saturating_add((t.num_elements() as u64).saturating_mul(4));
    }
    if declared > file_len {
        bail!(
            "the tensors of {what} declare {declared} bytes but the file holds only {file_len}: broadcast (stride-0) or overlapping tensor views are not accepted"
        );
    }
    if as_f32 > MAX_F32_BYTES {
        bail!("the tensors of {what} take {as_f32} bytes as f32, above the {MAX_F32_BYTES} byte limit");
    }
    Ok(())
}

/// The float tensors of a plain state dict (`torch.save(module.state_dict())`, as
/// torch-fidelity's Inception weights) as f32, read as data with the limits of [`import`];
/// integer entries (BatchNorm's `num_batches_tracked`) are left out.
pub fn read_state_dict(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let inner = || -> Result<HashMap<String, HostTensor>> {
        let file_len = crate::regular::open_regular(path)?.1;
        if !matches!(read_torch_zip(path)?, Py::Dict(_)) {
            bail!("not a state dict: its top level is not a dictionary");
        }
        let reader = PytorchReader::new(path).map_err(|e| anyhow!("cannot read its tensors: {e}"))?;
        if reader.len() > MAX_TENSORS {
            bail!("it holds {} tensors, more than the {MAX_TENSORS} accepted", reader.len());
        }
        let tensors: HashMap<String, burn::store::pytorch_reader::Tensor> = reader
            .into_tensors()
            .into_iter()
            .filter(|(_, t)| matches!(t.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16))
            .collect();
        check_tensors(tensors.iter(), file_len, "the state dict")?;
        tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), HostTensor { shape: t.shape().to_vec(), data: read_f32(name, t)? })))
            .collect()
    };
    inner().map_err(|e| anyhow!(one_line(&format!("cannot read {}: {e:#}", path.display()))))
}

/// The shape of `net.{key}`, which must have `rank` non-zero sizes (`form` says which).
fn shape_of<'a>(shapes: &'a HashMap<String, Vec<usize>>, key: &str, rank: usize, form: &str) -> Result<&'a [usize]> {
    let s = shapes.get(key).ok_or_else(|| anyhow!("not a JiT checkpoint: no tensor 'net.{key}'"))?;
    if s.len() != rank || s.contains(&0) {
        bail!("tensor 'net.{key}' has shape {s:?}, expected {form} with non-zero sizes");
    }
    Ok(s)
}

/// Infers the network from state-dict shapes (keys without the `net.` prefix). Every shape it
/// reads is checked first (rank, non-zero sizes, agreement with the others); the result has
/// passed [`JitConfig::validate`].
pub fn infer_config(shapes: &HashMap<String, Vec<usize>>, in_context_start: Option<usize>) -> Result<JitConfig> {
    let proj1 = shape_of(shapes, "x_embedder.proj1.weight", 4, "(bottleneck, channels, patch, patch)")?;
    let (bottleneck, channels, patch) = (proj1[0], proj1[1], proj1[2]);
    if proj1[3] != patch {
        bail!(
            "tensor 'net.x_embedder.proj1.weight' has shape {proj1:?}, expected (bottleneck, channels, patch, patch) with a square patch"
        );
    }
    let proj2 = shape_of(shapes, "x_embedder.proj2.weight", 4, "(hidden, bottleneck, 1, 1)")?;
    let hidden = proj2[0];
    if proj2[1..] != [bottleneck, 1, 1] {
        bail!("tensor 'net.x_embedder.proj2.weight' has shape {proj2:?}, expected ({hidden}, {bottleneck}, 1, 1)");
    }
    let pos = shape_of(shapes, "pos_embed", 3, "(1, patches, hidden)")?;
    let grid = (pos[1] as f64).sqrt().round() as usize;
    if pos[0] != 1 || pos[2] != hidden || grid.checked_mul(grid) != Some(pos[1]) {
        bail!("tensor 'net.pos_embed' has shape {pos:?}, expected (1, grid², {hidden}) for a square grid of patches");
    }
    let table = shape_of(shapes, "y_embedder.embedding_table.weight", 2, "(classes + 1, hidden)")?;
    if table[0] < 2 || table[1] != hidden {
        bail!(
            "tensor 'net.y_embedder.embedding_table.weight' has shape {table:?}, expected (classes + 1, {hidden}) with at least one class"
        );
    }
    let qn = shape_of(shapes, "blocks.0.attn.q_norm.weight", 1, "(head_dim,)")?;
    if hidden % qn[0] != 0 {
        bail!(
            "tensor 'net.blocks.0.attn.q_norm.weight' has shape {qn:?}, expected (head_dim,) with head_dim dividing hidden {hidden}"
        );
    }
    let w12 = shape_of(shapes, "blocks.0.mlp.w12.weight", 2, "(2 × mlp_hidden, hidden)")?;
    if w12[0] % 2 != 0 || w12[1] != hidden {
        bail!("tensor 'net.blocks.0.mlp.w12.weight' has shape {w12:?}, expected (2 × mlp_hidden, {hidden})");
    }
    let in_context_len = match shapes.get("in_context_posemb") {
        None => 0,
        Some(_) => {
            let s = shape_of(shapes, "in_context_posemb", 3, "(1, in-context tokens, hidden)")?;
            if s[0] != 1 || s[2] != hidden {
                bail!("tensor 'net.in_context_posemb' has shape {s:?}, expected (1, in-context tokens, {hidden})");
            }
            s[1]
        }
    };
    let input_size = grid.checked_mul(patch).ok_or_else(|| anyhow!("image size {grid} × {patch} overflows"))?;
    let depth = (0..).take_while(|i| shapes.contains_key(&format!("blocks.{i}.norm1.weight"))).count();
    let mlp_hidden = w12[0] / 2;
    let mlp_ratio = [4.0, 8.0 / 3.0, 2.0, 3.0, 6.0]
        .into_iter()
        .find(|r| ((((hidden as f64) * r) as usize) as f64 * 2.0 / 3.0) as usize == mlp_hidden)
        .unwrap_or(mlp_hidden as f64 * 1.5 / hidden as f64);
    let start = match (in_context_len, in_context_start) {
        (0, _) => 0,
        (_, Some(s)) => s,
        _ => bail!(
            "the checkpoint has {in_context_len} in-context tokens but no preset says where they start: pass --in-context-start N (B: 4, L: 8, H: 10) or --model JiT-B/16"
        ),
    };
    let config = JitConfig {
        input_size,
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

/// Checks that `shapes` holds exactly the tensors of a JiT with `config`, with their shapes,
/// without building that network: a one-block network gives the tensors outside the blocks and
/// those of one block, and every block has the same. So a file naming a huge network costs
/// nothing before it is refused.
fn check_tensor_set(shapes: &HashMap<String, Vec<usize>>, config: &JitConfig) -> Result<()> {
    let probe_config = JitConfig { depth: 1, in_context_start: 0, ..config.clone() };
    let probe = Jit::new(&probe_config, &Device::flex())?;
    let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
    for (key, shape) in state_dict::expected_shapes(&probe) {
        match key.strip_prefix("blocks.0.") {
            Some(rest) => expected.extend((0..config.depth).map(|i| (format!("blocks.{i}.{rest}"), shape.clone()))),
            None => expected.push((key, shape)),
        }
        // More distinct names than the file has tensors: one is missing, and the loop below
        // finds it without listing all of a huge network.
        if expected.len() > shapes.len() {
            break;
        }
    }
    for (key, shape) in &expected {
        match shapes.get(key) {
            None => bail!("checkpoint lacks tensor 'net.{key}' (expected shape {shape:?})"),
            Some(found) if found != shape => {
                bail!(
                    "tensor 'net.{key}' has shape {found:?} but the network its other tensors describe needs {shape:?}"
                )
            }
            Some(_) => {}
        }
    }
    let expected: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    if let Some(extra) = shapes.keys().filter(|k| !expected.contains(k.as_str())).min() {
        bail!("it has tensor 'net.{extra}' that JiT does not have: not a JiT checkpoint?");
    }
    Ok(())
}

/// Makes an error message one line: control characters (from names in the file) are escaped.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Imports the official checkpoint at `path`. Errors are one line and name the file.
pub fn import(path: &Path, o: &ImportOptions) -> Result<Imported> {
    import_inner(path, o).map_err(|e| anyhow!(one_line(&format!("cannot import {}: {e:#}", path.display()))))
}

fn import_inner(path: &Path, o: &ImportOptions) -> Result<Imported> {
    let file_len = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?.len();
    // The reference's names of the three copies.
    let key = match o.weights {
        WeightCopy::Net => "model",
        WeightCopy::Ema1 => "model_ema1",
        WeightCopy::Ema2 => "model_ema2",
    };
    // The capped reader goes first: burn-store's reader below parses the same data.pkl.
    let (args, epoch) = {
        let root = read_torch_zip(path)?;
        if !matches!(root, Py::Dict(_)) || root.get(key).is_none() {
            bail!("not a JiT training checkpoint: it has no '{key}' entry");
        }
        let epoch = match root.get("epoch") {
            Some(Py::Int(e)) => *e,
            _ => -1,
        };
        (root.get("args").cloned(), epoch)
    };
    let args = args.as_ref();
    let arg_f = |k: &str| args.and_then(|a| a.get(k)).and_then(Py::as_f64);
    let preset_name =
        o.model.clone().or_else(|| args.and_then(|a| a.get("model")).and_then(Py::as_str).map(String::from));

    let reader =
        PytorchReader::with_top_level_key(path, key).map_err(|e| anyhow!("cannot read tensors of '{key}': {e}"))?;
    if reader.len() > MAX_TENSORS {
        bail!("'{key}' holds {} tensors, more than the {MAX_TENSORS} accepted", reader.len());
    }
    let net: HashMap<String, burn::store::pytorch_reader::Tensor> = reader
        .into_tensors()
        .into_iter()
        .filter_map(|(name, t)| name.strip_prefix("net.").map(|short| (short.to_string(), t)))
        .collect();

    // Names, dtypes, shapes and sizes, all before any tensor data is read.
    let prefixed: Vec<(String, &burn::store::pytorch_reader::Tensor)> =
        net.iter().map(|(k, t)| (format!("net.{k}"), t)).collect();
    check_tensors(prefixed.iter().map(|(k, t)| (k, *t)), file_len, &format!("'{key}'"))?;
    let shapes: HashMap<String, Vec<usize>> = net.iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
    let ic_start = match (o.in_context_start, &preset_name) {
        (Some(s), _) => Some(s),
        (None, Some(p)) => JitConfig::preset(p, 256, 3, 1000).ok().map(|c| c.in_context_start),
        _ => None,
    };
    let config = infer_config(&shapes, ic_start)?;
    check_tensor_set(&shapes, &config)?;

    let mut host: HashMap<String, HostTensor> = HashMap::with_capacity(net.len());
    for (name, t) in &net {
        host.insert(name.clone(), HostTensor { shape: t.shape().to_vec(), data: read_f32(&format!("net.{name}"), t)? });
    }
    drop(net);
    let model = state_dict::load(Jit::new(&config, &Device::flex())?, |k| host.remove(k))?;

    let default_noise = match config.input_size {
        s if s >= 1024 => 4.0,
        s if s >= 512 => 2.0,
        _ => 1.0,
    };
    let d = DiffusionConfig::default();
    let diffusion = DiffusionConfig {
        p_mean: arg_f("P_mean").unwrap_or(d.p_mean),
        p_std: arg_f("P_std").unwrap_or(d.p_std),
        noise_scale: o.noise_scale.or(arg_f("noise_scale")).unwrap_or(default_noise),
        t_eps: arg_f("t_eps").unwrap_or(d.t_eps),
        label_drop_prob: arg_f("label_drop_prob").unwrap_or(d.label_drop_prob),
        ..d
    };
    diffusion.validate().context("the diffusion settings in args")?;
    let method = args
        .and_then(|a| a.get("sampling_method"))
        .and_then(Py::as_str)
        .and_then(|m| m.parse::<Method>().ok())
        .unwrap_or(SamplerConfig::default().method);
    let steps = match arg_f("num_sampling_steps") {
        None => SamplerConfig::default().steps,
        Some(v) if v.is_finite() && (1.0..=1e6).contains(&v) => v as usize,
        Some(v) => bail!("args.num_sampling_steps is {v}, expected 1 to 1000000"),
    };
    let s = SamplerConfig::default();
    let sampler = SamplerConfig {
        method,
        steps,
        cfg: arg_f("cfg").unwrap_or(s.cfg),
        interval: (arg_f("interval_min").unwrap_or(s.interval.0), arg_f("interval_max").unwrap_or(s.interval.1)),
    };
    sampler.validate().context("the sampler settings in args")?;
    let mut meta = CheckpointMeta::new(config, diffusion, sampler);
    meta.extra.insert(
        "imported_from".into(),
        serde_json::json!({
            "file": path.display().to_string(), "copy": key, "epoch": epoch, "model": preset_name,
        }),
    );
    Ok(Imported { key, epoch, meta, model })
}
