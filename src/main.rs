use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gemba", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reports in the store: list, show, html, export.
    Report {
        /// The report store directory.
        #[arg(long, env = "GEMBA_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        #[command(subcommand)]
        cmd: gemba::report::ReportCommand,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Report { data_dir, cmd } => gemba::report::run_report_command(&data_dir, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemba: {e}");
            ExitCode::FAILURE
        }
    }
}
