//! `jit-native`: train, sample, import, export and inspect JiT models on any GPU that wgpu
//! reaches (Vulkan, Metal, DX12) or on the CPU.

mod backend;
mod bench;
mod ckpt;
mod data;
mod eval;
mod export;
mod fsutil;
mod generate;
mod images;
mod import;
mod info;
mod pickle;
mod sample;
mod toy;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Sample(a) => sample::run(a),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Toy(a) => toy::run(a),
        Command::Eval(a) => eval::run(a).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
