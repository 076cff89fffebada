//! Our checkpoint format: one safetensors file whose metadata key `jit` holds the JSON
//! [`CheckpointMeta`] (network, diffusion, sampler defaults, class names, step) and whose tensors
//! are named as in the reference's state dict, in PyTorch layout (see [`crate::state_dict`]).
//!
//! A file holds one or more copies of the network: a single unprefixed copy (what `export`
//! writes for the browser) or prefixed copies such as `net.`, `ema1.`, `ema2.` (training
//! checkpoints). Weights are stored as f32, f16 or bf16 and always loaded as f32. Loading works
//! from a byte slice, so the browser needs no filesystem.

use std::collections::{BTreeMap, HashMap};

use burn::tensor::Device;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::config::{DiffusionConfig, JitConfig, MemoryLimit, SamplerConfig};
use crate::error::JitError;
use crate::host::{HostTensor, StoredFloat};
use crate::model::Jit;
use crate::state_dict;

/// Format tag written into every file.
pub const FORMAT: &str = "jit-checkpoint/1";
/// The safetensors metadata key holding [`CheckpointMeta`] as JSON.
pub const META_KEY: &str = "jit";
/// Name prefix of the opaque byte blobs (optimizer state, parameter ids) in training files.
pub const BLOB_PREFIX: &str = "__";

/// The network copies of a training checkpoint (an exported file holds one unprefixed copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum WeightCopy {
    /// The first EMA (what the reference samples with).
    Ema1,
    /// The second EMA.
    Ema2,
    /// The raw trained weights (the reference's `model`).
    #[cfg_attr(feature = "clap", value(alias = "raw"))]
    Net,
}

impl WeightCopy {
    /// The tensor-name prefix of this copy in a training checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Ema1 => "ema1",
            Self::Ema2 => "ema2",
            Self::Net => "net",
        }
    }

    /// The copy to load from a file with `meta`: this one in training checkpoints, the only
    /// one (`""`) in exported files.
    pub fn pick(self, meta: &CheckpointMeta) -> Result<String, JitError> {
        if meta.copies.iter().any(|c| c.is_empty()) {
            return Ok(String::new());
        }
        let want = self.prefix();
        if meta.copies.iter().any(|c| c == want) {
            Ok(want.into())
        } else {
            Err(JitError::BadMetadata(format!("no '{want}' weights in this file (it has: {})", meta.copies.join(", "))))
        }
    }
}

/// Everything besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// The network.
    pub network: JitConfig,
    /// The training objective (also fixes noise_scale, t_eps and the prediction target for
    /// sampling).
    pub diffusion: DiffusionConfig,
    /// Default sampler settings.
    pub sampler: SamplerConfig,
    /// One name per class (may be empty).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Optimizer steps the weights were trained for.
    #[serde(default)]
    pub step: u64,
    /// Prefixes of the network copies in the file (`""` for a single unprefixed copy).
    pub copies: Vec<String>,
    /// Free-form extras (training settings, provenance).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl CheckpointMeta {
    /// Metadata for a network with the given settings and no copies yet.
    pub fn new(network: JitConfig, diffusion: DiffusionConfig, sampler: SamplerConfig) -> Self {
        Self {
            format: FORMAT.into(),
            network,
            diffusion,
            sampler,
            class_names: Vec::new(),
            step: 0,
            copies: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

/// Storage precision of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    /// 32-bit float (bit-exact round trip).
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl std::str::FromStr for StoreDtype {
    type Err = JitError;
    fn from_str(s: &str) -> Result<Self, JitError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(JitError::InvalidConfig(format!("unknown dtype '{s}' (use f32, f16 or bf16)"))),
        }
    }
}

fn encode(data: &[f32], dtype: StoreDtype) -> (Dtype, Vec<u8>) {
    match dtype {
        StoreDtype::F32 => (Dtype::F32, data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        StoreDtype::F16 => (Dtype::F16, data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect()),
        StoreDtype::Bf16 => (Dtype::BF16, data.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect()),
    }
}

/// Decodes a stored tensor to f32 (f32, f16, bf16, f64 and integer types are accepted),
/// checking its byte length against its shape first.
pub fn decode(name: &str, view: &TensorView<'_>) -> Result<HostTensor, JitError> {
    let format = match view.dtype() {
        Dtype::F32 => StoredFloat::F32,
        Dtype::F16 => StoredFloat::F16,
        Dtype::BF16 => StoredFloat::BF16,
        Dtype::F64 => StoredFloat::F64,
        Dtype::I64 => StoredFloat::I64,
        Dtype::I32 => StoredFloat::I32,
        other => return Err(JitError::UnsupportedDtype { name: name.into(), dtype: format!("{other:?}") }),
    };
    let bytes = view.data();
    let elements = view.shape().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    match elements.and_then(|n| n.checked_mul(format.size())) {
        Some(len) if len == bytes.len() => {}
        _ => {
            return Err(JitError::NotACheckpoint(format!(
                "tensor '{name}' has {} bytes for shape {:?}",
                bytes.len(),
                view.shape()
            )));
        }
    }
    let data = format.decode(bytes).ok_or_else(|| JitError::NotACheckpoint(format!("tensor '{name}' is truncated")))?;
    Ok(HostTensor { shape: view.shape().to_vec(), data })
}

/// Parses a safetensors buffer, with a clear error when it is not one.
pub fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>, JitError> {
    SafeTensors::deserialize(bytes).map_err(|e| JitError::NotACheckpoint(format!("{e}")))
}

/// Reads the metadata of a checkpoint without touching the weights.
pub fn read_meta(bytes: &[u8]) -> Result<CheckpointMeta, JitError> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| JitError::NotACheckpoint(format!("{e}")))?;
    let json = metadata.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or(JitError::MissingMetadata)?;
    let mut meta: CheckpointMeta = serde_json::from_str(json).map_err(|e| JitError::BadMetadata(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(JitError::BadMetadata(format!("format '{}' is not '{FORMAT}'", meta.format)));
    }
    meta.network.validate()?;
    meta.diffusion.validate()?;
    meta.sampler.validate()?;
    for name in &mut meta.class_names {
        *name = printable(name);
    }
    Ok(meta)
}

/// `name` with every control character (escape sequences, newlines, the bell) replaced by
/// U+FFFD: class names come from files and go to terminals and web pages.
pub fn printable(name: &str) -> String {
    name.chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

fn prefixed(copy: &str, key: &str) -> String {
    if copy.is_empty() { key.to_string() } else { format!("{copy}.{key}") }
}

/// Serialises `copies` (prefix, network) with `meta` into safetensors bytes. `meta.copies` is
/// filled in from `copies`. Reads the weights back synchronously (native use).
pub fn save(meta: &CheckpointMeta, copies: &[(&str, &Jit)], dtype: StoreDtype) -> Result<Vec<u8>, JitError> {
    save_with_blobs(meta, copies, dtype, &[])
}

/// [`save`] plus opaque byte blobs (e.g. optimizer state), stored as `u8` tensors named
/// `__{name}` so that one file holds a whole training state.
pub fn save_with_blobs(
    meta: &CheckpointMeta,
    copies: &[(&str, &Jit)],
    dtype: StoreDtype,
    blobs: &[(&str, &[u8])],
) -> Result<Vec<u8>, JitError> {
    let mut meta = meta.clone();
    meta.copies = copies.iter().map(|(p, _)| p.to_string()).collect();
    let mut encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (copy, net) in copies {
        if net.config != meta.network {
            return Err(JitError::InvalidConfig(format!("copy '{copy}' has a different config than the metadata")));
        }
        for (key, host) in state_dict::export(net)? {
            if !host.data.iter().all(|v| v.is_finite()) {
                return Err(JitError::NonFinite(prefixed(copy, &key)));
            }
            let (dt, bytes) = encode(&host.data, dtype);
            encoded.push((prefixed(copy, &key), dt, host.shape, bytes));
        }
    }
    for (name, bytes) in blobs {
        encoded.push((format!("{BLOB_PREFIX}{name}"), Dtype::U8, vec![bytes.len()], bytes.to_vec()));
    }
    let views = encoded
        .iter()
        .map(|(k, dt, shape, bytes)| TensorView::new(*dt, shape.clone(), bytes).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| JitError::Backend(e.to_string()))?;
    let json = serde_json::to_string(&meta).map_err(|e| JitError::BadMetadata(e.to_string()))?;
    let info = HashMap::from([(META_KEY.to_string(), json)]);
    safetensors::serialize(views, Some(info)).map_err(|e| JitError::Backend(e.to_string()))
}

/// Builds the network copy `copy` (`""` for an unprefixed file; `"ema1"` etc.) from checkpoint
/// bytes on `device`, within the default [`MemoryLimit`]. Every missing, misshapen, non-finite
/// or unexpected tensor is an error naming it.
pub fn load(bytes: &[u8], copy: &str, device: &Device) -> Result<(Jit, CheckpointMeta), JitError> {
    load_limited(bytes, copy, device, MemoryLimit::default())
}

/// [`load`] with an explicit memory limit for the network (checked before it is built).
pub fn load_limited(
    bytes: &[u8],
    copy: &str,
    device: &Device,
    limit: MemoryLimit,
) -> Result<(Jit, CheckpointMeta), JitError> {
    let meta = read_meta(bytes)?;
    limit.check(&meta.network, 1)?;
    if !meta.copies.iter().any(|c| c == copy) {
        return Err(JitError::BadMetadata(format!(
            "no copy '{copy}' in this checkpoint (it has: {})",
            meta.copies.iter().map(|c| if c.is_empty() { "<plain>" } else { c }).collect::<Vec<_>>().join(", ")
        )));
    }
    let tensors = parse(bytes)?;
    let model = load_from(&tensors, copy, &meta.network, device)?;
    Ok((model, meta))
}

/// Builds a network for `config` from the tensors `"{copy}.{key}"` (or plain `key` when `copy`
/// is empty) of a parsed safetensors file. Used for our checkpoints and for the golden vectors.
pub fn load_from(tensors: &SafeTensors<'_>, copy: &str, config: &JitConfig, device: &Device) -> Result<Jit, JitError> {
    let model = Jit::new(config, device)?;
    let expected: std::collections::HashSet<String> =
        state_dict::expected_shapes(&model).into_iter().map(|(k, _)| prefixed(copy, &k)).collect();
    let own = |name: &str| !name.starts_with(BLOB_PREFIX) && (copy.is_empty() || name.starts_with(&format!("{copy}.")));
    if let Some(extra) = tensors.names().into_iter().find(|n| own(n) && !expected.contains(*n)) {
        return Err(JitError::UnexpectedTensor(extra.to_string()));
    }
    let mut error = None;
    let model = state_dict::load(model, |key| {
        let name = prefixed(copy, key);
        let view = tensors.tensor(&name).ok()?;
        match decode(&name, &view) {
            Ok(t) if t.data.iter().all(|v| v.is_finite()) => Some(t),
            Ok(_) => {
                error = Some(JitError::NonFinite(name));
                None
            }
            Err(e) => {
                error = Some(e);
                None
            }
        }
    });
    match (model, error) {
        (_, Some(e)) => Err(e),
        (m, None) => m,
    }
}

/// The blob `name` stored by [`save_with_blobs`], if present.
pub fn blob(bytes: &[u8], name: &str) -> Result<Option<Vec<u8>>, JitError> {
    let tensors = parse(bytes)?;
    Ok(tensors.tensor(&format!("{BLOB_PREFIX}{name}")).ok().map(|v| v.data().to_vec()))
}
