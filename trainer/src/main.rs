//! `ferrotrain-trainer`: one rank of a Ferrotrain training job.

use std::process::ExitCode;

use clap::Parser;
use ferrotrain_trainer::cli::{WorkerArgs, run_worker};

#[derive(Parser)]
#[command(
    name = "ferrotrain-trainer",
    version,
    about = "One rank of a Ferrotrain training job"
)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

fn main() -> ExitCode {
    ExitCode::from(run_worker(Cli::parse().args))
}
