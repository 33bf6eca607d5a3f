use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gemba",
    version,
    about = "Omni-modal model daemon for the factory floor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the input tensors a phi4mm bundle's sessions would receive to an .npz file.
    Preprocess(gemba::model::processor::cli::PreprocessArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time image and audio pre-processing (optionally against ORT-GenAI's processor).
    Preprocess(gemba::model::processor::cli::BenchPreprocessArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Preprocess(args) => gemba::model::processor::cli::run(args),
        Command::Bench(BenchCommand::Preprocess(args)) => {
            gemba::model::processor::cli::run_bench(args)
        }
    }
}
