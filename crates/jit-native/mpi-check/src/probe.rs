//! What `mpi-sys` needs from the machine, looked for the way its probes look: an MPI compiler
//! wrapper (`$MPICC`, else `mpicc` on `PATH`) or a pkg-config entry (`mpich`, `ompi`); and, on
//! Linux, `libclang` where bindgen's loader searches (`LIBCLANG_PATH`, `LD_LIBRARY_PATH`, the
//! system library folders, LLVM's versioned folders).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The packages that provide both, by system.
pub const INSTALL: &str = "Debian/Ubuntu: sudo apt-get install openmpi-bin libopenmpi-dev libclang-dev; \
     Fedora: sudo dnf install openmpi-devel clang-libs (then `module load mpi/openmpi`); \
     macOS: brew install open-mpi llvm; a cluster: `module load openmpi` (or your MPI)";

/// What the check reads from the machine.
pub struct Host {
    /// `$MPICC`.
    pub mpicc: Option<OsString>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// Whether pkg-config knows a package.
    pub pkg_config: fn(&str) -> bool,
    /// Folders that may hold `libclang.so*`; `None` where libclang is not checked (not Linux).
    pub libclang_dirs: Option<Vec<PathBuf>>,
}

impl Host {
    /// This machine, from the environment.
    pub fn from_env() -> Self {
        let libclang_dirs = cfg!(target_os = "linux").then(|| {
            let mut dirs: Vec<PathBuf> = ["LIBCLANG_PATH", "LD_LIBRARY_PATH"]
                .iter()
                .filter_map(std::env::var_os)
                .flat_map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
                .collect();
            for system in
                ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
            {
                dirs.push(system.into());
            }
            // LLVM's versioned installs: /usr/lib/llvm-19/lib, /usr/lib64/llvm19/lib, …
            for root in ["/usr/lib", "/usr/lib64", "/usr/local"] {
                if let Ok(entries) = std::fs::read_dir(root) {
                    for entry in entries.flatten() {
                        if entry.file_name().to_string_lossy().starts_with("llvm") {
                            dirs.push(entry.path().join("lib"));
                        }
                    }
                }
            }
            dirs
        });
        Self { mpicc: std::env::var_os("MPICC"), path: std::env::var_os("PATH"), pkg_config, libclang_dirs }
    }

    /// `Ok` when the MPI build can go ahead, else the one-line message that says what to install.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.has_mpi() {
            missing.push(
                "an MPI library (no `$MPICC`, no `mpicc` on PATH, and pkg-config knows neither `mpich` nor `ompi`)",
            );
        }
        if self.libclang_dirs.as_ref().is_some_and(|dirs| !dirs.iter().any(|d| has_libclang(d))) {
            missing.push(
                "libclang, which generates the MPI bindings (set LIBCLANG_PATH to its folder if it is installed)",
            );
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "jit-native's `mpi` feature needs {}. Install them ({INSTALL}), or build without `--features mpi`",
            missing.join(" and ")
        ))
    }

    /// As mpi-sys's probe: a wrapper (`$MPICC`, or `mpicc` on `PATH` when it is unset), else
    /// pkg-config.
    fn has_mpi(&self) -> bool {
        let wrapper = match &self.mpicc {
            Some(mpicc) => is_file(Path::new(mpicc)) || self.on_path(mpicc),
            None => self.on_path(&OsString::from("mpicc")),
        };
        wrapper || ["mpich", "ompi"].into_iter().any(self.pkg_config)
    }

    fn on_path(&self, name: &OsString) -> bool {
        let Some(path) = &self.path else { return false };
        std::env::split_paths(path).any(|dir| is_file(&dir.join(name)))
    }
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

/// Whether `dir` holds a `libclang.so` or `libclang-N.so…` (or `libclang.so.N…`).
fn has_libclang(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("libclang") && !name.starts_with("libclang_") && name.contains(".so") && !name.ends_with(".a")
    })
}

/// `pkg-config --exists NAME`; false where pkg-config is missing.
fn pkg_config(name: &str) -> bool {
    Command::new("pkg-config").args(["--exists", name]).status().is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &str) -> bool {
        false
    }

    fn only_ompi(name: &str) -> bool {
        name == "ompi"
    }

    fn folder_with(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        dir
    }

    #[test]
    fn nothing_installed_names_both_and_the_packages() {
        let empty = folder_with(&[]);
        let host = Host {
            mpicc: None,
            path: Some(empty.path().to_path_buf().into()),
            pkg_config: never,
            libclang_dirs: Some(vec![empty.path().to_path_buf()]),
        };
        let e = host.check().unwrap_err();
        assert!(e.contains("an MPI library") && e.contains("libclang"), "{e}");
        assert!(e.contains("apt-get install openmpi-bin libopenmpi-dev libclang-dev"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn mpicc_on_path_or_pkg_config_is_enough() {
        let bin = folder_with(&["mpicc"]);
        let lib = folder_with(&["libclang-19.so.1"]);
        let dirs = Some(vec![lib.path().to_path_buf()]);
        let on_path = Host {
            mpicc: None,
            path: Some(bin.path().to_path_buf().into()),
            pkg_config: never,
            libclang_dirs: dirs.clone(),
        };
        assert_eq!(on_path.check(), Ok(()));
        let pkg = Host { mpicc: None, path: None, pkg_config: only_ompi, libclang_dirs: dirs.clone() };
        assert_eq!(pkg.check(), Ok(()));
        // An MPICC that names nothing, with mpicc on PATH and no pkg-config entry: missing (the
        // probe does not fall back to PATH when MPICC is set).
        let bad = Host {
            mpicc: Some("/nonexistent/mpicc".into()),
            path: Some(bin.path().into()),
            pkg_config: never,
            libclang_dirs: dirs,
        };
        let e = bad.check().unwrap_err();
        assert!(e.contains("an MPI library") && !e.contains("libclang,"), "{e}");
    }

    #[test]
    fn libclang_is_found_by_its_library_name_only() {
        let bin = folder_with(&["mpicc"]);
        let path = Some(OsString::from(bin.path().to_path_buf()));
        let static_only = folder_with(&["libclang.a", "libclang_rt.asan.so"]);
        let host = Host {
            mpicc: None,
            path: path.clone(),
            pkg_config: never,
            libclang_dirs: Some(vec![static_only.path().to_path_buf()]),
        };
        assert!(host.check().unwrap_err().contains("libclang"));
        let shared = folder_with(&["libclang.so"]);
        let host = Host {
            mpicc: None,
            path: path.clone(),
            pkg_config: never,
            libclang_dirs: Some(vec![shared.path().to_path_buf()]),
        };
        assert_eq!(host.check(), Ok(()));
        let unchecked = Host { mpicc: None, path, pkg_config: never, libclang_dirs: None };
        assert_eq!(unchecked.check(), Ok(()));
    }
}
