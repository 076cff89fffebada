//! A run folder that protects itself: `settings.json`, `ckpt-STEP.safetensors` (ordered by the
//! step in their metadata, not by name), `metrics.jsonl` and `samples-STEP.png`.
//!
//! - One process writes a run at a time: `train` and `train --resume` hold an exclusive OS
//!   lock on `.lock` in the folder for as long as they live (the OS releases it on any exit, a
//!   crash or `kill -9` included, so no stale lock is ever left); a second one is refused with
//!   the holder's PID.
//! - A new run never starts in a folder that holds another run.
//! - Temporary files that a crash left behind (`.NAME.tmp-PID`, see [`crate::fsutil`]) are
//!   removed when a run opens its folder, if their writer is gone.
//! - Old checkpoints are pruned by step, never the newest `keep`.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use jit_core::checkpoint::{self, CheckpointMeta};

use crate::refuse;

/// The run's settings file.
pub const SETTINGS: &str = "settings.json";
/// The run's metrics log.
pub const METRICS: &str = "metrics.jsonl";
/// The file a running process holds locked (it holds that process's PID).
pub const LOCK: &str = ".lock";

/// Whether `name` is one a run writes into its folder.
fn is_run_name(name: &str) -> bool {
    name == SETTINGS
        || name == METRICS
        || name == LOCK
        || (name.starts_with("ckpt-") && name.ends_with(".safetensors"))
        || (name.starts_with("samples-") && name.ends_with(".png"))
}

/// The run folder that owns `path`, if `path` is named as a file of a run (checkpoint,
/// settings, metrics, sample grid, lock) in a folder holding `settings.json`: no command but
/// `train` may write such a file.
pub fn run_owning(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    (is_run_name(name) && dir.join(SETTINGS).exists()).then(|| dir.to_path_buf())
}

/// An exclusive lock on a run folder, held until dropped or the process ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `dir` (which must exist), or refuses with the PID of the process holding it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the run lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder =
                    if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                refuse!(
                    "{} is in use by {holder} (a training run writes it); wait for it to end or stop it, or use another folder",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock the run folder {}", dir.display()));
            }
        }
        // The holder's PID, for the message of whoever is refused.
        file.set_len(0).and_then(|_| file.rewind()).and_then(|_| writeln!(file, "{}", std::process::id())).ok();
        Ok(Self { _file: file })
    }
}

/// A training checkpoint found in a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Optimizer step from the file's metadata.
    pub step: u64,
    /// The file.
    pub path: PathBuf,
}

/// A run folder, locked for this process (see [`RunLock`]).
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
    _lock: Arc<RunLock>,
}

impl RunDir {
    /// A folder for a new run: created if missing and locked; refused if it already holds a
    /// run or another process holds it.
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            refuse!("{} exists and is not a folder; choose a new --out folder", path.display());
        }
        std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        let dir = Self { path: path.to_path_buf(), _lock: Arc::new(RunLock::acquire(path)?) };
        if path.join(SETTINGS).exists() || !dir.checkpoint_files()?.is_empty() {
            refuse!(
                "{} already holds a training run; continue it with `train --resume {}` or choose a new --out folder",
                path.display(),
                path.display()
            );
        }
        dir.sweep_temp_files();
        Ok(dir)
    }

    /// An existing run folder (for `--resume`), locked; refused while another process holds it.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            refuse!("{} is a file; --resume takes a run's folder (the one holding {SETTINGS})", path.display());
        }
        if path.join(SETTINGS).exists() && !path.join(SETTINGS).is_file() {
            refuse!("{} in {} is not a regular file; restore the run's settings file", SETTINGS, path.display());
        }
        if !path.join(SETTINGS).is_file() {
            refuse!(
                "{} is not a run folder (no {SETTINGS}); start a run with `train --out {}`",
                path.display(),
                path.display()
            );
        }
        let dir = Self { path: path.to_path_buf(), _lock: Arc::new(RunLock::acquire(path)?) };
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

/// The metadata of a checkpoint, reading only its header (see [`crate::model_file::Header`]).
pub fn read_header_meta(path: &Path) -> Result<CheckpointMeta> {
    let header = crate::model_file::Header::read(path)?;
    let json = header.metadata(checkpoint::META_KEY).context("no JiT metadata in the header")?;
    let meta: CheckpointMeta = serde_json::from_str(&json).context("JiT metadata is not valid")?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_is_refused_while_the_first_holds_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run");
        let first = RunDir::create(&path).unwrap();
        std::fs::write(path.join(SETTINGS), b"{}").unwrap();
        // A second open file description conflicts as a second process would.
        let e = RunDir::open(&path).unwrap_err().to_string();
        assert!(e.contains(&format!("in use by process {}", std::process::id())), "{e}");
        let e = RunDir::create(&path).unwrap_err().to_string();
        assert!(e.contains("in use"), "{e}");
        drop(first);
        RunDir::open(&path).unwrap();
        // Unlocked but holding a run: a new run is refused, a resume is not.
        let e = RunDir::create(&path).unwrap_err().to_string();
        assert!(e.contains("already holds a training run"), "{e}");
    }

    #[test]
    fn run_files_are_recognised_only_in_run_folders() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(run_owning(&tmp.path().join("ckpt-00000001.safetensors")), None);
        std::fs::write(tmp.path().join(SETTINGS), b"{}").unwrap();
        assert_eq!(run_owning(&tmp.path().join("ckpt-00000001.safetensors")), Some(tmp.path().to_path_buf()));
        assert_eq!(run_owning(&tmp.path().join("export.safetensors")), None);
    }
}
