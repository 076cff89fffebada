//! The check that jit-native's `mpi` feature runs at build time ([`probe::Host::check`]): an MPI
//! compiler wrapper or pkg-config entry, and (on Linux) libclang for the MPI bindings. The build
//! script is this crate's only use; the library exists so that the check is tested.

pub mod probe;
