//! Runs before `mpi-sys`'s build script (this crate has no dependencies to wait for, `mpi-sys`'s
//! script waits for bindgen), so a machine without MPI or libclang gets one message naming the
//! packages to install instead of mpi-sys's list of probe failures; cargo starts nothing after
//! a failed build script.

#[path = "src/probe.rs"]
mod probe;

fn main() {
    for var in ["PATH", "MPICC", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR", "LIBCLANG_PATH", "LD_LIBRARY_PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if let Err(message) = probe::Host::from_env().check() {
        println!("cargo::error={message}");
    }
}
