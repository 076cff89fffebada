//! Files in and out: crash-safe writes, reads that open only regular files and check sizes
//! first, and the checks every output path passes before a command starts.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};

use crate::refuse;
pub use crate::regular::open_regular;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder is written and
/// fsynced, renamed over `path`, and the folder is fsynced, so a crash leaves either the old file
/// or the new one, never a torn one. Missing folders above `path` are made.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a regular file whole, refusing one over `max` bytes before reading it; `what` names
/// the file's role in messages ("config", "class names").
pub fn read_regular(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max {
        refuse!("{what} {} is {len} bytes, over the {max} a {what} may have", path.display());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > max {
        refuse!("{what} {} grew past {max} bytes while being read", path.display());
    }
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_text(path: &Path, max: u64, what: &str) -> Result<String> {
    String::from_utf8(read_regular(path, max, what)?)
        .map_err(|_| crate::exit::refused(format!("{what} {} is not UTF-8 text", path.display())))
}

/// Checks an output path before any work is done. Always refused: a file of a training run
/// (see [`crate::training::run_dir::run_owning`]), one of the command's own `inputs`, anything
/// that exists and is not a regular file, and a path below a file (its folder cannot be made).
/// A regular file that exists is replaced only with `force`.
pub fn check_output(out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    if let Some(file) = out.ancestors().skip(1).find(|a| a.is_file()) {
        refuse!(
            "{} is a file, so {} cannot be written below it; choose another output path",
            file.display(),
            out.display()
        );
    }
    if let Some(run) = crate::training::run_dir::run_owning(out) {
        refuse!(
            "{} is a file of the training run in {} (its name is one the run writes); write to another name or folder",
            out.display(),
            run.display()
        );
    }
    let Ok(meta) = std::fs::metadata(out) else { return Ok(()) };
    if inputs.iter().any(|input| same_file(out, input)) {
        refuse!("{} is also this command's input; write to another file", out.display());
    }
    if !meta.is_file() {
        refuse!("{} exists and is not a regular file; choose another output path", out.display());
    }
    if !force {
        refuse!("{} exists; pass --force to replace it, or choose another output path", out.display());
    }
    Ok(())
}

/// Checks a cache file the user names (read if it is one, else written): refused when it is a
/// file of a training run or exists and is not a regular file.
pub fn check_cache(path: &Path) -> Result<()> {
    if let Some(run) = crate::training::run_dir::run_owning(path) {
        refuse!("{} is a file of the training run in {}; name a cache file elsewhere", path.display(), run.display());
    }
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        refuse!("{} exists and is not a regular file; name another cache file", path.display());
    }
    Ok(())
}

/// Whether two paths name the same file (hard links and symlinks included).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let e = read_regular(Path::new("/dev/zero"), 1 << 20, "config").unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            // A FIFO with no writer: opening it must not block.
            let fifo = dir.path().join("x.png");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: `c` is a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            assert!(open_regular(&fifo).unwrap_err().to_string().contains("not a regular file"));
        }
        let f = dir.path().join("big.toml");
        std::fs::write(&f, vec![b'#'; 100]).unwrap();
        assert!(read_regular(&f, 99, "config").unwrap_err().to_string().contains("over the 99"));
        assert_eq!(read_regular(&f, 100, "config").unwrap().len(), 100);
    }

    #[test]
    fn outputs_never_replace_inputs_or_run_files_and_others_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.safetensors");
        std::fs::write(&input, b"x").unwrap();
        let link = dir.path().join("link.safetensors");
        std::fs::hard_link(&input, &link).unwrap();
        for force in [false, true] {
            let e = check_output(&link, &[&input], force).unwrap_err().to_string();
            assert!(e.contains("input"), "{e}");
        }
        let other = dir.path().join("other.safetensors");
        check_output(&other, &[&input], false).unwrap();
        std::fs::write(&other, b"y").unwrap();
        assert!(check_output(&other, &[&input], false).unwrap_err().to_string().contains("--force"));
        check_output(&other, &[&input], true).unwrap();
        assert!(check_output(dir.path(), &[], true).unwrap_err().to_string().contains("not a regular file"));
        // Below a file no folder can be made; a missing folder is made when the file is written.
        let below = input.join("x.json");
        assert!(check_output(&below, &[], true).unwrap_err().to_string().contains("cannot be written below it"));
        let deep = dir.path().join("new/deeper/x.json");
        check_output(&deep, &[], false).unwrap();
        write_atomic(&deep, b"{}").unwrap();
        assert_eq!(std::fs::read(&deep).unwrap(), b"{}");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("settings.json"), b"{}").unwrap();
        for name in ["ckpt-00000040.safetensors", "settings.json", "metrics.jsonl", "samples-00000040.png"] {
            let e = check_output(&run.join(name), &[], true).unwrap_err().to_string();
            assert!(e.contains("training run"), "{name}: {e}");
        }
        check_output(&run.join("web.safetensors"), &[], false).unwrap();
    }
}
