//! Typed errors of the library.

use thiserror::Error;

/// Everything that can go wrong in `jit-core`; each message says what to do.
#[derive(Debug, Error)]
pub enum JitError {
    /// A model preset name that does not exist.
    #[error("unknown model preset '{0}' (the paper's JiT-B, -L and -H over patches of 16 or 32; ours, JiT-T and -S, over 2, 4, 8 or 16: {known})", known = crate::config::PRESETS.join(", "))]
    UnknownPreset(String),
    /// Sizes or settings that do not fit together.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// Input tensors of the wrong shape.
    #[error("wrong input shape: {0}")]
    Shape(String),
    /// The bytes are not a safetensors file.
    #[error("not a JiT checkpoint: {0}")]
    NotACheckpoint(String),
    /// A safetensors file without our metadata.
    #[error("checkpoint has no JiT config in its metadata (was it written by jit-native export/train?)")]
    MissingMetadata,
    /// Metadata that does not parse.
    #[error("checkpoint metadata is not valid: {0}")]
    BadMetadata(String),
    /// A tensor the network needs is absent.
    #[error("checkpoint lacks tensor '{0}' (file from another model version or truncated?)")]
    MissingTensor(String),
    /// A tensor whose shape does not match the config.
    #[error("tensor '{name}' has shape {found:?} but the config needs {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A tensor the network does not have.
    #[error("checkpoint has unexpected tensor '{0}' (does the config match the weights?)")]
    UnexpectedTensor(String),
    /// A stored dtype we cannot read.
    #[error("tensor '{name}' has unsupported dtype {dtype}")]
    UnsupportedDtype { name: String, dtype: String },
    /// A backend failed to execute or read back.
    #[error("backend error: {0}")]
    Backend(String),
    /// A model or batch that would need more memory than the limit allows.
    #[error("{what} needs about {need_gib:.2} GiB, over the memory limit of {limit_gib:.2} GiB (raise the limit if the machine has the memory)", need_gib = *need as f64 / 1073741824.0, limit_gib = *limit as f64 / 1073741824.0)]
    TooLarge { what: String, need: u64, limit: u64 },
    /// Weights that are NaN or infinite.
    #[error("weights '{0}' contain NaN or infinite values")]
    NonFinite(String),
    /// Sampling was cancelled by the callback.
    #[error("cancelled")]
    Cancelled,
}
