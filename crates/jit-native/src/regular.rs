//! Opening only regular files: a FIFO, a device (`/dev/zero`) or a folder given where a file
//! is expected could block forever or never end. Self-contained (no other module of the
//! crate), so the `.pth` fuzz test compiles it with the importer.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A path that is not a regular file (a refusal: exit code 2).
#[derive(Debug)]
pub struct NotRegular(pub PathBuf);

impl fmt::Display for NotRegular {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a regular file (a folder, FIFO or device); give the path of a file", self.0.display())
    }
}

impl std::error::Error for NotRegular {}

/// Opens `path` for reading if it is a regular file. On Unix the file is opened without
/// blocking (a FIFO with no writer would block `open` itself) and checked after opening, so
/// nothing can be swapped in between. Returns the file and its size in bytes.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        return Err(NotRegular(path.to_path_buf()).into());
    }
    Ok((file, meta.len()))
}
