//! `ferrotrain-trainer`: reads its configuration and training data.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ferrotrain_trainer::{config, exit};

#[derive(Parser)]
#[command(
    name = "ferrotrain-trainer",
    version,
    about = "Ferrotrain's training worker"
)]
struct Args {
    /// A `spec.trainer` YAML file; without it the env contract set by the operator is read.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let spec = match &args.config {
        Some(path) => config::from_file(path),
        None => config::from_env(|k| std::env::var(k).ok()).map(|w| w.trainer),
    };
    let spec = match spec {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("ferrotrain-trainer: {e}");
            return ExitCode::from(exit::BAD_CONFIG);
        }
    };
    eprintln!(
        "ferrotrain-trainer: configuration for a {:?} model on {:?} is valid, but this build has no training loop yet",
        spec.model.kind, spec.dataset.kind
    );
    ExitCode::from(exit::INTERNAL)
}
