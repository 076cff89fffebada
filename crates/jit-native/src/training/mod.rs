//! What a training run needs besides the core's [`jit_core::TrainState`]: its settings and its
//! run folder.

pub mod run_dir;
pub mod settings;
