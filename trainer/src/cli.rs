//! The worker's command line, shared by `ferrotrain-trainer` and `ferrotrain worker`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::run::{Options, Role, default_data_dir, run};
use crate::{config, exit};

/// Arguments of one worker process.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// A `spec.trainer` YAML file for a standalone single-process run; without it the env
    /// contract set by the operator or `ferrotrain run` is read.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Standalone runs: checkpoint URI (`file://…` or `s3://…`).
    #[arg(long, requires = "config")]
    pub checkpoint: Option<String>,
    /// Standalone runs: checkpoint every N steps.
    #[arg(long, default_value_t = 500, requires = "checkpoint")]
    pub checkpoint_every_steps: i64,
    /// Seconds to wait for every rank to join.
    #[arg(long, default_value_t = 300)]
    pub rendezvous_timeout_seconds: u64,
    /// Seconds a collective may wait on a peer before this rank exits with "peer lost".
    #[arg(long, default_value_t = 60)]
    pub peer_timeout_seconds: u64,
    /// Seconds allowed for the emergency checkpoint after SIGTERM.
    #[arg(long, default_value_t = 25)]
    pub grace_seconds: u64,
    /// Minimum seconds between progress reports.
    #[arg(long, default_value_t = 2.0)]
    pub report_every_seconds: f64,
    /// Stop as if preempted right after this step (drills).
    #[arg(long, hide = true)]
    pub stop_after_step: Option<u64>,
    /// Directory of the built-in datasets (default: $FERROTRAIN_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Runs one worker with `args` and returns its exit code.
pub fn run_worker(args: WorkerArgs) -> u8 {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init()
        .ok();
    let role = match &args.config {
        Some(path) => config::from_file(path).map(|spec| Role::Standalone {
            spec: Box::new(spec),
            checkpoint: args.checkpoint.as_ref().map(|uri| {
                Box::new(ferrotrain_crds::CheckpointSpec {
                    uri: uri.clone(),
                    endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
                    region: None,
                    secret_ref: None,
                    every_steps: Some(args.checkpoint_every_steps),
                    every_seconds: None,
                    keep: None,
                    resume: None,
                })
            }),
        }),
        None => config::from_env(|k| std::env::var(k).ok()).map(|env| Role::Worker(Box::new(env))),
    };
    let role = match role {
        Ok(role) => role,
        Err(e) => {
            eprintln!("ferrotrain-trainer: {e}");
            return exit::BAD_CONFIG;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("ferrotrain-trainer: cannot install the signal handler: {e}");
            return exit::INTERNAL;
        }
    }
    // Under `ferrotrain run`: hold the gang lock while alive, and stop when orphaned.
    let _gang = std::env::var_os(ferrotrain_crds::env::GANG_LOCK).and_then(|path| {
        let file = std::fs::File::open(&path).ok()?;
        file.lock_shared().ok()?;
        Some(file)
    });
    if let Some(pid) = std::env::var(ferrotrain_crds::env::SUPERVISOR_PID)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        watch_supervisor(pid, Arc::clone(&stop));
    }
    let options = Options {
        rendezvous_timeout: Duration::from_secs(args.rendezvous_timeout_seconds),
        peer_timeout: Duration::from_secs(args.peer_timeout_seconds),
        grace: Duration::from_secs(args.grace_seconds),
        report_every: Duration::from_secs_f64(args.report_every_seconds.max(0.0)),
        stop_after_step: args.stop_after_step,
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
    };
    run(role, &options, stop)
}

/// Stops the worker (as SIGTERM does: emergency checkpoint, then exit 75) once its parent is no
/// longer `supervisor`: the runner was killed and the worker was re-parented. Without this an
/// orphaned gang would train on and race with the next run of the job.
fn watch_supervisor(supervisor: u32, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != supervisor {
                tracing::warn!(
                    supervisor,
                    "the supervising `ferrotrain run` is gone: stopping after an emergency checkpoint"
                );
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}
