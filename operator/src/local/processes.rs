//! The worker processes of a local run: one run per job and state directory, waiting for the
//! workers of an earlier run, reaping exits into the state machine's view, SIGKILL after the grace
//! period, and how CPUs and GPUs are shared between workers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::decide::job::{FailureCause, WorkerState};
use crate::local::display::Display;
use crate::local::error::RunError;
use crate::vocabulary::{MAX_FAILURE_MESSAGE, TERMINATION_GRACE_SECONDS, last_error, shorten};

/// How long a new run waits for the workers of an earlier one (orphaned by a killed runner) to
/// finish their emergency checkpoint and exit.
pub(crate) const EARLIER_WORKERS_WAIT: Duration = Duration::from_secs(60);

/// Creates `dir` under the state directory `state_dir`; a failure names `--state-dir` and the
/// path (a state directory that is a regular file says only "Not a directory" otherwise).
pub(crate) fn create_state_dir(state_dir: &Path, dir: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(|e| {
        RunError::Preflight(format!(
            "--state-dir {}: cannot create {}: {e}",
            state_dir.display(),
            dir.display()
        ))
    })
}

/// Takes the job's run lock for the life of the returned file: a second `ferrotrain run` of the
/// same job and state directory is refused, naming the PID that runs it.
pub(crate) fn lock_job(job_dir: &Path, job: &str) -> Result<std::fs::File, RunError> {
    use std::io::Seek;
    let path = job_dir.join("run.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.flush()?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(RunError::AlreadyRunning {
                job: job.to_string(),
                pid: if pid.trim().is_empty() {
                    "unknown".into()
                } else {
                    pid.trim().to_string()
                },
                lock: path.display().to_string(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Waits until no worker of an earlier run holds the gang lock (workers hold it shared).
pub(crate) fn wait_for_earlier_workers(
    gang_lock: &Path,
    job: &str,
    display: &Display,
) -> Result<(), RunError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(gang_lock)?;
    let started = Instant::now();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                file.unlock()?;
                return Ok(());
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if started.elapsed() >= EARLIER_WORKERS_WAIT {
                    return Err(RunError::EarlierWorkersAlive {
                        job: job.to_string(),
                        seconds: EARLIER_WORKERS_WAIT.as_secs(),
                        lock: gang_lock.display().to_string(),
                    });
                }
                if !told {
                    display
                        .line("waiting for the workers of an earlier run to checkpoint and exit");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// A worker process and what became of it.
pub(crate) struct Worker {
    pub(crate) rank: u32,
    pub(crate) attempt: u32,
    pub(crate) child: Child,
    pub(crate) exited: Option<WorkerState>,
    pub(crate) deleting_since: Option<Timestamp>,
    pub(crate) log: PathBuf,
    /// Its last logged error and the log's path, once it failed.
    pub(crate) message: Option<String>,
}

/// The runner is the kubelet of its workers: one still alive a grace period after its SIGTERM
/// (stopped, or ignoring the signal) is killed, as a kubelet would, so a restart or a suspension
/// never waits on it forever.
pub(crate) fn kill_past_grace(workers: &mut [Worker], now: Timestamp) {
    for w in workers.iter_mut().filter(|w| w.exited.is_none()) {
        if let Some(since) = w.deleting_since
            && now.duration_since(since).as_secs() >= TERMINATION_GRACE_SECONDS
        {
            let _ = w.child.kill();
        }
    }
}

/// Workers on one machine share its CPUs: each gets an equal share of compute threads, at least
/// one.
pub fn compute_threads_per_worker(cpus: usize, workers: u32) -> usize {
    (cpus / usize::try_from(workers.max(1)).unwrap_or(1)).max(1)
}

/// Notes the workers that exited; a failure is shown with its cause from the worker's log.
pub(crate) fn reap(workers: &mut [Worker], display: &Display) {
    for w in workers.iter_mut().filter(|w| w.exited.is_none()) {
        if let Ok(Some(status)) = w.child.try_wait() {
            let state = classify_exit(status);
            if let WorkerState::Failed(cause) = state
                && w.deleting_since.is_none()
            {
                let text = std::fs::read_to_string(&w.log).unwrap_or_default();
                let error = last_error(&text).unwrap_or_else(|| "no error in its log".into());
                display.line(&format!(
                    "rank {} (attempt {}) failed with {}: {error} (log: {})",
                    w.rank,
                    w.attempt,
                    cause.reason(),
                    w.log.display()
                ));
                w.message = Some(format!(
                    "{}; log: {}",
                    shorten(&error, MAX_FAILURE_MESSAGE),
                    w.log.display()
                ));
            }
            w.exited = Some(state);
        }
    }
}

/// Maps a worker's exit status to the lifecycle's view of it.
pub fn classify_exit(status: std::process::ExitStatus) -> WorkerState {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => WorkerState::Succeeded,
        (Some(ferrotrain_crds::env::EXIT_PREEMPTED_AFTER_CHECKPOINT), _) => {
            WorkerState::Failed(FailureCause::PreemptedAfterCheckpoint)
        }
        (Some(code), _) => WorkerState::Failed(FailureCause::ExitCode(code)),
        (None, Some(signal)) => WorkerState::Failed(FailureCause::Signal(signal)),
        (None, None) => WorkerState::Failed(FailureCause::Missing),
    }
}

pub(crate) fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())
}

/// GPU device nodes (`/dev/nvidiaN`) on this machine, as the trainer's device probe counts them.
#[cfg(feature = "worker")]
pub(crate) fn gpu_device_nodes() -> usize {
    ferrotrain_trainer::engine::device::probe_under(std::path::Path::new("/"), None, None)
        .visible_gpus
}

/// Without the embedded trainer there are no local workers to place.
#[cfg(not(feature = "worker"))]
pub(crate) fn gpu_device_nodes() -> usize {
    0
}

/// The GPU a local worker gets when the machine has several: ranks are spread over the visible
/// GPUs (the entries of `CUDA_VISIBLE_DEVICES`, or every GPU device node), so the gang does not
/// all land on GPU 0. With one GPU or none, nothing is set.
pub fn gpu_of_worker(visible: Option<&str>, device_nodes: usize, rank: u32) -> Option<String> {
    let listed: Vec<String> = match visible {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect(),
        None => (0..device_nodes).map(|i| i.to_string()).collect(),
    };
    (listed.len() > 1).then(|| listed[rank as usize % listed.len()].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_workers_are_spread_over_the_gpus() {
        assert_eq!(gpu_of_worker(None, 0, 3), None);
        assert_eq!(
            gpu_of_worker(None, 1, 3),
            None,
            "one GPU: every worker shares it"
        );
        assert_eq!(gpu_of_worker(None, 2, 3).as_deref(), Some("1"));
        assert_eq!(gpu_of_worker(Some("4,6"), 8, 0).as_deref(), Some("4"));
        assert_eq!(gpu_of_worker(Some("4,6"), 8, 3).as_deref(), Some("6"));
        assert_eq!(gpu_of_worker(Some("GPU-5d7c"), 8, 1), None);
    }

    #[test]
    fn workers_share_the_cpus() {
        assert_eq!(compute_threads_per_worker(16, 4), 4);
        assert_eq!(compute_threads_per_worker(2, 2), 1);
        assert_eq!(compute_threads_per_worker(2, 3), 1);
        assert_eq!(compute_threads_per_worker(7, 2), 3);
        assert_eq!(compute_threads_per_worker(8, 0), 8);
    }
}
