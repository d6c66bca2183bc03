//! `ferrotrain run` and `ferrotrain sweep`: a manifest run on this machine, its final status
//! written next to its state and echoed, and the exit code that says how it ended.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cli::error::{CommandError, doing};
use crate::local::preflight::load_job;
use crate::local::runner::{self, RunOptions, RunOutcome};
use crate::local::sweep::{SweepOutcome, load_sweep, run_sweep};

/// How a local run or sweep ended.
enum Ending {
    Succeeded,
    Failed(Option<String>),
    Suspended,
}

/// `ferrotrain run FILE`: exit 0 when the job succeeded, 1 when it failed or was refused, 130
/// when it was suspended.
pub fn run_job(
    file: &Path,
    json: bool,
    state_dir: PathBuf,
    oversubscribe: bool,
) -> Result<ExitCode, CommandError> {
    let job = match load_job(file) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let interrupts = interrupt_counter()?;
    let options = RunOptions::new(state_dir.clone(), worker_command()?, json, oversubscribe);
    let name = job.metadata.name.clone().unwrap_or_default();
    let outcome = match runner::run(job, &options, interrupts) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("{}", e.for_file(file));
            return Ok(ExitCode::FAILURE);
        }
    };
    let (status, ending) = match &outcome {
        RunOutcome::Succeeded(s) => (s, Ending::Succeeded),
        RunOutcome::Failed(s) => (s, Ending::Failed(s.message.clone())),
        RunOutcome::Suspended(s) => (s, Ending::Suspended),
    };
    conclude(
        &state_dir,
        &name,
        status,
        ending,
        "resume from the emergency checkpoint",
        if json { Echo::JsonLine } else { Echo::Yaml },
    )
}

/// `ferrotrain sweep FILE`: the same exit codes as [`run_job`].
pub fn run_sweep_file(
    file: &Path,
    json: bool,
    state_dir: PathBuf,
    oversubscribe: bool,
) -> Result<ExitCode, CommandError> {
    let sweep = match load_sweep(file) {
        Ok(sweep) => sweep,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let interrupts = interrupt_counter()?;
    let options = RunOptions::new(state_dir.clone(), worker_command()?, json, oversubscribe);
    let name = sweep.metadata.name.clone().unwrap_or_default();
    let outcome = match run_sweep(sweep, &options, interrupts) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("{}", e.for_file(file));
            return Ok(ExitCode::FAILURE);
        }
    };
    let (status, ending) = match &outcome {
        SweepOutcome::Succeeded(s) => (s, Ending::Succeeded),
        SweepOutcome::Failed(s) => (s, Ending::Failed(s.message.clone())),
        SweepOutcome::Suspended(s) => (s, Ending::Suspended),
    };
    conclude(
        &state_dir,
        &name,
        status,
        ending,
        "resume the trials from their checkpoints",
        if json { Echo::JsonLine } else { Echo::No },
    )
}

/// How the final status is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// Only in `status.yaml`.
    No,
    /// Also on stdout, as YAML.
    Yaml,
    /// Also on stdout, as one JSON line `{"event":"finalStatus","status":…}`.
    JsonLine,
}

/// Writes the final status to `<state dir>/<name>/status.yaml` (and, as `echo` says, to stdout)
/// and the one-line outcome to stderr; returns the exit code (0, 1, or 130 when suspended).
fn conclude(
    state_dir: &Path,
    name: &str,
    status: &impl serde::Serialize,
    ending: Ending,
    resume: &str,
    echo: Echo,
) -> Result<ExitCode, CommandError> {
    let (code, summary) = match ending {
        Ending::Succeeded => (ExitCode::SUCCESS, "Succeeded".to_string()),
        Ending::Failed(message) => (
            ExitCode::FAILURE,
            format!("Failed: {}", message.unwrap_or_default()),
        ),
        Ending::Suspended => (
            ExitCode::from(130),
            format!("Suspended: run the same command again to {resume}"),
        ),
    };
    let yaml = serde_yaml::to_string(&serde_json::json!({ "status": status }))
        .map_err(doing("writing the final status as YAML"))?;
    let path = state_dir.join(name).join("status.yaml");
    std::fs::write(&path, &yaml).map_err(doing(format!("writing {}", path.display())))?;
    // The reader of stdout may be gone (`… | head -1`); the status is in status.yaml too.
    let shown = match echo {
        Echo::No => None,
        Echo::Yaml => Some(yaml),
        Echo::JsonLine => {
            serde_json::to_string(&serde_json::json!({"event": "finalStatus", "status": status}))
                .ok()
                .map(|line| line + "\n")
        }
    };
    match shown {
        Some(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            eprintln!("{name}: {summary}");
        }
        None => eprintln!("{name}: {summary} (status in {})", path.display()),
    }
    Ok(code)
}

/// Counts SIGINT and SIGTERM: the first stops the work in order, the second kills it.
fn interrupt_counter() -> Result<Arc<AtomicUsize>, CommandError> {
    let interrupts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&interrupts);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(doing("handling SIGINT and SIGTERM"))?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    Ok(interrupts)
}

/// The command that starts one local worker: this binary's hidden `worker` subcommand.
fn worker_command() -> Result<Vec<String>, CommandError> {
    let exe = std::env::current_exe().map_err(doing("finding this program's path"))?;
    Ok(vec![exe.display().to_string(), "worker".into()])
}
