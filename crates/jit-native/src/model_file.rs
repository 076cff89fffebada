//! Reading model files (training checkpoints and exports) from disk: only regular files, the
//! safetensors header read and checked first (its size, its JSON, the body size it declares
//! against the file's size and the memory limit), then the whole file; errors name the file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::Device;
use jit_core::checkpoint::{self, CheckpointMeta, WeightCopy};
use jit_core::{Jit, MemoryLimit};
use serde_json::Value;

use crate::fsutil::open_regular;
use crate::refuse;

/// The largest header a model file may have (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// A safetensors file's header, read without its body.
#[derive(Debug)]
pub struct Header {
    /// The header's JSON.
    json: Value,
    /// The file, positioned after the header.
    file: File,
    /// Bytes of the whole file.
    pub file_len: u64,
    /// Bytes the header says the whole file has.
    declared_len: u64,
    /// The 8-byte length and the header, as in the file.
    raw: Vec<u8>,
}

impl Header {
    /// Reads and checks the header of `path` (its size and JSON; not yet whether the body it
    /// declares is the rest of the file: see [`Self::read_all`]).
    pub fn read(path: &Path) -> Result<Self> {
        let not = |why: &str| crate::exit::refused(format!("{} is not a model file: {why}", path.display()));
        let (mut file, file_len) = open_regular(path)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| not("too short"))?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || 8 + n > file_len {
            return Err(not(&format!("its header claims {n} bytes in a file of {file_len}")));
        }
        let mut raw = len.to_vec();
        (&mut file).take(n).read_to_end(&mut raw).with_context(|| format!("cannot read {}", path.display()))?;
        if raw.len() as u64 != 8 + n {
            return Err(not("truncated header"));
        }
        let json: Value = serde_json::from_slice(&raw[8..]).map_err(|_| not("its header is not JSON"))?;
        let Some(entries) = json.as_object() else { return Err(not("its header is not a JSON object")) };
        let mut body = 0u64;
        for (name, entry) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
            let end = entry.get("data_offsets").and_then(|o| o.get(1)).and_then(Value::as_u64);
            body = body.max(end.ok_or_else(|| not(&format!("tensor '{name}' has no data offsets")))?);
        }
        Ok(Self { json, file, file_len, declared_len: (8 + n).saturating_add(body), raw })
    }

    /// A string of the header's `__metadata__`.
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.json.get("__metadata__")?.get(key)?.as_str().map(str::to_string)
    }

    /// The whole file, once its size is the one the header declares and the memory limit
    /// allows it.
    pub fn read_all(mut self, path: &Path, limit: MemoryLimit) -> Result<Vec<u8>> {
        if self.declared_len != self.file_len {
            refuse!(
                "{} is not a model file: its header describes {} bytes but the file has {} (truncated or padded)",
                path.display(),
                self.declared_len,
                self.file_len
            );
        }
        limit.check_bytes(format!("loading {}", path.display()), self.file_len)?;
        let mut bytes = Vec::with_capacity(self.file_len as usize);
        bytes.append(&mut self.raw);
        self.file
            .take(self.file_len - bytes.len() as u64)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if bytes.len() as u64 != self.file_len {
            refuse!("{} changed while it was being read", path.display());
        }
        Ok(bytes)
    }
}

/// Reads a model file whole, after checking its header and size (see [`Header`]).
pub fn read(path: &Path, limit: MemoryLimit) -> Result<Vec<u8>> {
    Header::read(path)?.read_all(path, limit)
}

/// Loads the `weights` copy of the network in `path` on `device`.
pub fn load(path: &Path, weights: WeightCopy, device: &Device, limit: MemoryLimit) -> Result<(Jit, CheckpointMeta)> {
    let bytes = read(path, limit)?;
    let ctx = || format!("{} is not a usable JiT checkpoint", path.display());
    let meta = checkpoint::read_meta(&bytes).with_context(ctx)?;
    let copy = weights.pick(&meta).with_context(ctx)?;
    if copy.is_empty() && weights != WeightCopy::Ema1 {
        eprintln!(
            "note: {} is an exported model with one set of weights; --weights {} applies to training checkpoints",
            path.display(),
            weights.prefix()
        );
    }
    checkpoint::load_limited(&bytes, &copy, device, limit).with_context(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, header: &str, body: usize) -> std::path::PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + body, 0);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn headers_are_checked_before_the_body_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"v"}}"#;
        let ok = write(dir.path(), "ok.safetensors", h, 8);
        let header = Header::read(&ok).unwrap();
        assert_eq!(header.metadata("k").as_deref(), Some("v"));
        assert_eq!(read(&ok, MemoryLimit::default()).unwrap().len() as u64, 8 + h.len() as u64 + 8);
        let e = read(&ok, MemoryLimit(10)).unwrap_err().to_string();
        assert!(e.contains("memory limit"), "{e}");
        let short = write(dir.path(), "short.safetensors", h, 7);
        assert!(read(&short, MemoryLimit::default()).unwrap_err().to_string().contains("truncated or padded"));
        let huge = dir.path().join("huge");
        std::fs::write(&huge, u64::MAX.to_le_bytes()).unwrap();
        assert!(Header::read(&huge).unwrap_err().to_string().contains("header claims"));
        #[cfg(unix)]
        assert!(Header::read(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
    }
}
