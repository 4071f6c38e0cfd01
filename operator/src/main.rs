//! The `voxel` command line. Local mode and the controllers arrive in later releases; this
//! release validates manifests with the same rules the trainer applies.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Voxel: train, compare and publish medical imaging models from Kubernetes manifests.
#[derive(Debug, Parser)]
#[command(name = "voxel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check an Experiment manifest against the schema and the cross-field rules.
    Validate {
        /// The manifest file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { file } => match voxel_crds::manifest::read_experiment(&file) {
            Ok(experiment) => {
                let name = experiment.metadata.name.unwrap_or_default();
                println!("{}: Experiment {name} is valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(78)
            }
        },
    }
}
