//! The build script's refusal, end to end: `cargo check` of this crate on a machine that has no
//! MPI (an `MPICC` that names nothing, an empty pkg-config database) fails with the one-line
//! message, before anything else is compiled.

use std::process::Command;

#[test]
fn a_machine_without_mpi_gets_one_message_naming_the_packages() {
    let target = tempfile::tempdir().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["check", "--quiet", "--offline", "-p", "jit-mpi-check"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target.path())
        .env("MPICC", "/nonexistent/mpicc")
        .env("PKG_CONFIG_LIBDIR", "/nonexistent")
        .env_remove("PKG_CONFIG_PATH")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build went ahead: {stderr}");
    let line =
        stderr.lines().find(|l| l.contains("`mpi` feature needs")).unwrap_or_else(|| panic!("no message: {stderr}"));
    assert!(
        line.contains("an MPI library") && line.contains("apt-get install openmpi-bin libopenmpi-dev libclang-dev"),
        "{line}"
    );
}
