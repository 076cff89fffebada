//! One file per subcommand: its flags and a `run` that calls into `jit_core` and the
//! native helpers.

pub mod bench;
pub mod eval;
pub mod export;
pub mod fid;
pub mod import;
pub mod info;
pub mod sample;
pub mod toy;
pub mod train;
