//! A run folder that protects itself: `settings.json`, `ckpt-STEP.safetensors` (ordered by the
//! step in their metadata, not by name), `metrics.jsonl` and `samples-STEP.png`.
//!
//! - A new run never starts in a folder that holds another run.
//! - Temporary files that a crash left behind (`.NAME.tmp-PID`, see [`crate::fsutil`]) are
//!   removed when a run opens its folder, if their writer is gone.
//! - Old checkpoints are pruned by step, never the newest `keep`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use jit_core::checkpoint::{self, CheckpointMeta};

/// The run's settings file.
pub const SETTINGS: &str = "settings.json";
/// The run's metrics log.
pub const METRICS: &str = "metrics.jsonl";

/// A training checkpoint found in a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Optimizer step from the file's metadata.
    pub step: u64,
    /// The file.
    pub path: PathBuf,
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// A folder for a new run: created if missing; refused if it already holds a run.
    pub fn create(path: &Path) -> Result<Self> {
        let dir = Self { path: path.to_path_buf() };
        if path.join(SETTINGS).exists() || !dir.checkpoint_files()?.is_empty() {
            bail!(
                "{} already holds a training run; continue it with `train --resume {}` or choose a new --out folder",
                path.display(),
                path.display()
            );
        }
        std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        dir.sweep_temp_files();
        Ok(dir)
    }

    /// An existing run folder (for `--resume`).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join(SETTINGS).is_file() {
            bail!(
                "{} is not a run folder (no {SETTINGS}); start a run with `train --out {}`",
                path.display(),
                path.display()
            );
        }
        let dir = Self { path: path.to_path_buf() };
        dir.sweep_temp_files();
        dir.repair_metrics()?;
        Ok(dir)
    }

    /// Drops a torn last line of `metrics.jsonl` (a crash in the middle of a write), so the log
    /// stays valid JSON lines; the steps it described are logged again on resume.
    fn repair_metrics(&self) -> Result<()> {
        let path = self.path.join(METRICS);
        let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
        if bytes.last().is_some_and(|&b| b != b'\n') {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let file = std::fs::OpenOptions::new().write(true).open(&path).context("cannot repair metrics.jsonl")?;
            file.set_len(keep as u64).context("cannot repair metrics.jsonl")?;
        }
        Ok(())
    }

    /// A file in the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The file name of the checkpoint at `step`.
    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.path.join(format!("ckpt-{step:08}.safetensors"))
    }

    fn checkpoint_files(&self) -> Result<Vec<PathBuf>> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read run folder {}", self.path.display())),
        };
        Ok(entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                n.starts_with("ckpt-") && n.ends_with(".safetensors")
            })
            .collect())
    }

    /// Checkpoints whose header names a step, oldest first; files whose header cannot be read
    /// are reported on stderr and left alone.
    pub fn checkpoints(&self) -> Result<Vec<Found>> {
        let mut found = Vec::new();
        for path in self.checkpoint_files()? {
            match read_header_meta(&path) {
                Ok(meta) => found.push(Found { step: meta.step, path }),
                Err(e) => eprintln!("warning: skipping {} ({e:#})", path.display()),
            }
        }
        found.sort_by(|a, b| a.step.cmp(&b.step).then_with(|| a.path.cmp(&b.path)));
        Ok(found)
    }

    /// The newest checkpoint, for messages ("last good checkpoint: …").
    pub fn newest(&self) -> Option<PathBuf> {
        self.checkpoints().ok()?.pop().map(|f| f.path)
    }

    /// Removes all but the newest `keep` checkpoints.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let all = self.checkpoints()?;
        for old in &all[..all.len().saturating_sub(keep.max(1))] {
            std::fs::remove_file(&old.path)
                .with_context(|| format!("cannot remove old checkpoint {}", old.path.display()))?;
        }
        Ok(())
    }

    /// Removes `.NAME.tmp-PID` files whose writing process no longer runs.
    fn sweep_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.path) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).map(|(_, pid)| pid.to_string())
            else {
                continue;
            };
            let alive = pid.parse::<u32>().is_ok_and(|pid| pid == std::process::id() || process_alive(pid));
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                eprintln!("removed {} (left by an interrupted write)", entry.path().display());
            }
        }
    }
}

/// Whether a process with this id exists (Linux: /proc; elsewhere assume it does not).
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The metadata of a checkpoint, reading only its header (at most 100 MB, as safetensors).
pub fn read_header_meta(path: &Path) -> Result<CheckpointMeta> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).context("too short for a checkpoint")?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        bail!("header of {n} bytes is not a checkpoint's");
    }
    let mut buf = len.to_vec();
    file.take(n).read_to_end(&mut buf).context("cannot read the header")?;
    if buf.len() as u64 != 8 + n {
        bail!("truncated header");
    }
    let header: serde_json::Value = serde_json::from_slice(&buf[8..]).context("header is not JSON")?;
    let json = header
        .get("__metadata__")
        .and_then(|m| m.get(checkpoint::META_KEY))
        .and_then(|v| v.as_str())
        .context("no JiT metadata in the header")?;
    let meta: CheckpointMeta = serde_json::from_str(json).context("JiT metadata is not valid")?;
    Ok(meta)
}
