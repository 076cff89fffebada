//! With the `mpi` feature: the machine check of `jit-mpi-check` again, at jit-native's own build.
//! `jit-mpi-check` runs it first in its build script; being a build-dependency here too puts
//! that script ahead of mpi-sys's probe in cargo's queue (cargo starts the units with the most
//! dependents first, and starts nothing after a failed build script), so a machine without MPI
//! gets this message, not mpi-sys's.

fn main() {
    #[cfg(feature = "mpi")]
    if let Err(message) = jit_mpi_check::probe::Host::from_env().check() {
        println!("cargo::error={message}");
    }
}
