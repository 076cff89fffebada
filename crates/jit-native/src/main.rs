//! `jit-native`: train, sample, import, export and inspect JiT models on any GPU that wgpu
//! reaches (Vulkan, Metal, DX12) or on the CPU.
//!
//! Where things are: [`commands`] has one thin file per subcommand (flags → `jit_core`);
//! [`training`] the run's settings (flags, TOML, `settings.json`, defaults) and its run folder;
//! [`data`] the datasets and the batch loader; [`science`] the toy experiment, the eval
//! classifier and the Fréchet distance; [`pth`] reading official PyTorch checkpoints safely;
//! [`backend`] the device choice; [`lanes`] sampling's batch split over the CPU cores;
//! [`model_file`], [`generate`], [`images`] and [`fsutil`] loading models, sampling to the host, PNGs and
//! atomic writes. The network, objective, sampler and training state live in `jit_core`.

mod backend;
mod commands;
mod data;
mod dist;
mod exit;
mod fsutil;
mod generate;
mod images;
mod lanes;
mod model_file;
mod pth;
mod regular;
mod science;
mod signals;
mod training;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use commands::{bench, eval, export, import, info, sample, toy, train};

#[derive(Parser)]
#[command(name = "jit-native", version, about = "JiT (Just image Transformers) diffusion on any GPU or the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: a small JiT on the built-in shapes dataset).
    Train(Box<train::TrainArgs>),
    /// Generate images from a checkpoint.
    Sample(sample::SampleArgs),
    /// Convert an official PyTorch checkpoint-last.pth into our format.
    Import(import::ImportArgs),
    /// Write the file the web page loads (f16 by default).
    Export(export::ExportArgs),
    /// Print a checkpoint's config, parameter count and step.
    Info(info::InfoArgs),
    /// Measure training and sampling throughput.
    Bench(bench::BenchArgs),
    /// Sample quality for small datasets: FD on a trained classifier's features, class accuracy.
    Eval(eval::EvalArgs),
    /// The paper's toy experiment: x- vs ε- vs v-prediction as the ambient dimension grows.
    Toy(toy::ToyArgs),
}

/// glibc's malloc returns every block over 128 KiB to the kernel when it is freed, so each of
/// the thousands of activation tensors of a step costs fresh page faults and zeroing (19 % of
/// CPU time in `scripts/profile-cpu.sh`). Keeping freed memory in the heap for reuse made CPU
/// sampling 10–30 % and S/4 training about 16 % faster (docs/cpu.md). Environment settings (`MALLOC_*`) still
/// win, as glibc reads them first and these calls only run when they are absent.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_")) {
        return;
    }
    // SAFETY: mallopt only changes allocator thresholds; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// On a machine without a desktop session (a server, a container, a cluster node) the GPU
/// drivers' window-system code, loaded while wgpu probes adapters, prints "error:
/// XDG_RUNTIME_DIR is invalid or not set" once per probe: an error of nobody's, before ours.
/// With no Wayland session to find, pointing that variable at the temporary folder keeps the
/// probe quiet; `RUST_LOG` (asking for the drivers' logs) leaves everything as it is.
#[cfg(target_os = "linux")]
fn quiet_headless_probing() {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if !set("XDG_RUNTIME_DIR") && !set("WAYLAND_DISPLAY") && !set("RUST_LOG") {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    quiet_headless_probing();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_memory();
    #[cfg(feature = "persistence")]
    backend::cache_compiled_kernels();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Train(a) => train::run(*a, matches.subcommand_matches("train").expect("train was parsed")),
        Command::Sample(a) => sample::run(a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Toy(a) => toy::run(a),
        Command::Eval(a) => eval::run(a).map(|_| ()),
    };
    exit::report(result)
}
