//! `ferrotrain`: the Ferrotrain command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrotrain::cli;
use ferrotrain::manifest::Admission;

#[derive(Parser)]
#[command(
    name = "ferrotrain",
    version,
    about = "Distributed training on Kubernetes, or on one machine"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check TrainingJob manifests against the CRD schema, its CEL rules and Ferrotrain's checks.
    Validate {
        /// YAML files (multi-document files are fine).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the TrainingJob CustomResourceDefinition.
    Crd,
}

fn main() -> anyhow::Result<ExitCode> {
    match Args::parse().command {
        Command::Validate { files } => {
            let admission = Admission::new()?;
            let mut out = std::io::stdout().lock();
            let summary = cli::validate_files(&admission, &files, &mut out)?;
            Ok(if summary.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Crd => {
            print!(
                "{}",
                ferrotrain_crds::crd::crd_yaml().context("rendering the CRD")?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
