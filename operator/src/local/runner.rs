//! `ferrotrain run`: a TrainingJob on one machine. The manifest is admitted exactly as in a
//! cluster, then the same [`decide`] that drives pods drives local worker processes: gang start,
//! whole-gang restarts with budgets, deadline, stall detection, suspension on Ctrl-C.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrotrain_crds::env::WorkerEnv;
use ferrotrain_crds::{CheckpointSpec, Phase, RunPolicy, TrainingJob, TrainingJobStatus};
use jiff::Timestamp;

use crate::decide::job::{Action, FailureCause, Observed, WorkerState, WorkerView, decide};
use crate::manifest::{Admission, ManifestError, parse_documents};
use crate::progress::{ProgressTracker, bearer, random_token};
use crate::vocabulary::{MAX_FAILURE_MESSAGE, TERMINATION_GRACE_SECONDS, last_error, shorten};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stream JSON lines instead of drawing a progress bar.
    pub json: bool,
    /// Where job state, logs, tokens and default checkpoints live (`.ferrotrain`).
    pub state_dir: PathBuf,
    /// Program and arguments that start one worker (`ferrotrain worker`).
    pub worker: Vec<String>,
    /// How often to observe and decide.
    pub tick: Duration,
    /// Start more workers than the machine has CPUs.
    pub oversubscribe: bool,
    /// Print nothing (a sweep shows its trials itself).
    pub quiet: bool,
    /// Receives every status the run computes (a sweep watches its trials through it).
    pub observer: Option<Arc<Mutex<TrainingJobStatus>>>,
    /// Compute threads of each worker; none: the CPUs shared out among the job's workers.
    pub threads_per_worker: Option<usize>,
}

impl RunOptions {
    /// Options for a run in the foreground: the progress bar (or JSON lines), every CPU.
    pub fn new(state_dir: PathBuf, worker: Vec<String>, json: bool, oversubscribe: bool) -> Self {
        Self {
            json,
            state_dir,
            worker,
            tick: Duration::from_millis(200),
            oversubscribe,
            quiet: false,
            observer: None,
            threads_per_worker: None,
        }
    }
}

/// Refuses a gang with more workers than CPUs: the ranks run in lockstep, so they all wait for
/// the slowest, and a thousand trainers on a laptop exhaust its memory long before they train.
pub fn check_fits(replicas: i32, cpus: usize, oversubscribe: bool) -> Result<(), RunError> {
    let replicas = usize::try_from(replicas.max(0)).unwrap_or(0);
    if replicas > cpus && !oversubscribe {
        return Err(RunError::Preflight(format!(
            "spec.workers.replicas: {replicas} workers do not fit this machine's {cpus} CPUs (the ranks train in lockstep, so more workers than CPUs is slower, and each holds its own copy of the data); lower replicas, or pass --oversubscribe"
        )));
    }
    Ok(())
}

/// Memory a worker needs besides its data: the trainer's runtime, buffers and model (an MNIST
/// MLP worker peaks at about 240 MiB resident, 27 MiB over its data).
const WORKER_BASE_BYTES: u64 = 64 << 20;
/// The built-in MNIST as every worker holds it: 70,000 images of 784 f32 features.
const MNIST_BYTES: u64 = 70_000 * 784 * 4;

/// About how much memory one worker of `spec` needs: every worker holds the whole dataset as
/// f32 features (an IDX byte or a CSV field of a few characters becomes 4 bytes; a gzipped file
/// holds about five times its size), plus its runtime. Datasets in object storage are not
/// counted (their size is not known up front).
pub fn worker_memory_estimate(spec: &ferrotrain_crds::TrainerSpec) -> u64 {
    let dataset = &spec.dataset;
    let file_bytes = |uri: &Option<String>| {
        let Some(path) = uri.as_deref().and_then(|u| u.strip_prefix("file://")) else {
            return 0;
        };
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if path.ends_with(".gz") {
            size.saturating_mul(5)
        } else {
            size
        }
    };
    let data = match dataset.kind {
        ferrotrain_crds::DatasetKind::Mnist => MNIST_BYTES,
        ferrotrain_crds::DatasetKind::Idx | ferrotrain_crds::DatasetKind::Csv => [
            &dataset.images,
            &dataset.test_images,
            &dataset.uri,
            &dataset.test_uri,
        ]
        .into_iter()
        .map(file_bytes)
        .sum::<u64>()
        .saturating_mul(4),
    };
    WORKER_BASE_BYTES.saturating_add(data)
}

/// Refuses a gang whose workers together would need more memory than the machine has
/// available: the kernel's OOM killer would end them one by one instead.
pub fn check_memory(
    replicas: i32,
    per_worker: u64,
    available: Option<u64>,
    oversubscribe: bool,
) -> Result<(), RunError> {
    let Some(available) = available else {
        return Ok(());
    };
    let replicas = u64::try_from(replicas.max(0)).unwrap_or(0);
    let needed = per_worker.saturating_mul(replicas);
    if needed > available && !oversubscribe {
        let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
        return Err(RunError::Preflight(format!(
            "spec.workers.replicas: {replicas} workers need about {:.1} GiB of memory (about {:.0} MiB each: every worker holds the training data and its own runtime), and this machine has {:.1} GiB available; lower replicas, or pass --oversubscribe",
            gib(needed),
            per_worker as f64 / f64::from(1u32 << 20),
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo, in bytes; `None` where there is no such file.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How a local run ended.
#[derive(Debug, PartialEq)]
pub enum RunOutcome {
    /// The job reached Succeeded.
    Succeeded(Box<TrainingJobStatus>),
    /// The job reached Failed.
    Failed(Box<TrainingJobStatus>),
    /// Ctrl-C: the workers checkpointed and stopped; the same command resumes.
    Suspended(Box<TrainingJobStatus>),
}

/// Why the run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The manifest is not a valid TrainingJob.
    #[error("{}", render(.file, .errors))]
    Invalid {
        /// The file.
        file: String,
        /// Its problems.
        errors: Vec<ManifestError>,
    },
    /// Something needed is missing or unreachable.
    #[error("{0}")]
    Preflight(String),
    /// Local I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another `ferrotrain run` of the same job in the same state directory is running.
    #[error(
        "job {job} is already running under PID {pid} (lock {lock}); stop it first, or use another --state-dir"
    )]
    AlreadyRunning {
        /// The job.
        job: String,
        /// The PID that holds the lock, as it wrote it.
        pid: String,
        /// The lock file.
        lock: String,
    },
    /// Workers of an earlier run of the job are still alive.
    #[error(
        "workers of an earlier run of {job} are still alive after {seconds}s (lock {lock}); stop them first"
    )]
    EarlierWorkersAlive {
        /// The job.
        job: String,
        /// How long was waited.
        seconds: u64,
        /// The gang lock file.
        lock: String,
    },
}

/// How long a new run waits for the workers of an earlier one (orphaned by a killed runner) to
/// finish their emergency checkpoint and exit.
const EARLIER_WORKERS_WAIT: Duration = Duration::from_secs(60);

/// Takes the job's run lock for the life of the returned file: a second `ferrotrain run` of the
/// same job and state directory is refused, naming the PID that runs it.
fn lock_job(job_dir: &Path, job: &str) -> Result<std::fs::File, RunError> {
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
fn wait_for_earlier_workers(
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

fn render(file: &str, errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(|e| e.in_file(file))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and admits the one TrainingJob in `path`.
pub fn load_job(path: &Path) -> Result<TrainingJob, RunError> {
    load_one(path, "TrainingJob", Admission::admit)
}

/// Reads the one document in `path` and admits it with `admit` as a `kind`.
pub fn load_one<T>(
    path: &Path,
    kind: &str,
    admit: impl Fn(&Admission, &serde_json::Value) -> Result<T, Vec<ManifestError>>,
) -> Result<T, RunError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Preflight(format!("{file}: cannot read: {e}")))?;
    let documents = parse_documents(&text);
    let [(_, document)] = documents.as_slice() else {
        return Err(RunError::Preflight(format!(
            "{file}: expected exactly one {kind} document, found {}",
            documents.len()
        )));
    };
    let admission = Admission::new().map_err(|e| RunError::Preflight(e.to_string()))?;
    let value = document.clone().map_err(|e| RunError::Invalid {
        file: file.clone(),
        errors: vec![e],
    })?;
    admit(&admission, &value).map_err(|errors| RunError::Invalid { file, errors })
}

/// The checkpoint a local run uses: the manifest's, or a directory under the state dir.
pub fn local_checkpoint(job: &TrainingJob, state_dir: &Path) -> CheckpointSpec {
    job.spec
        .checkpoint
        .clone()
        .unwrap_or_else(|| CheckpointSpec {
            uri: format!(
                "file://{}",
                state_dir.join(job_name(job)).join("checkpoints").display()
            ),
            endpoint: None,
            region: None,
            secret_ref: None,
            every_steps: None,
            every_seconds: Some(30),
            keep: Some(3),
            resume: None,
        })
}

fn job_name(job: &TrainingJob) -> String {
    job.metadata.name.clone().unwrap_or_else(|| "job".into())
}

/// A worker process and what became of it.
struct Worker {
    rank: u32,
    attempt: u32,
    child: Child,
    exited: Option<WorkerState>,
    deleting_since: Option<Timestamp>,
    log: PathBuf,
    /// Its last logged error and the log's path, once it failed.
    message: Option<String>,
}

/// Loss and accuracy over the run, for the curve.
#[derive(Default)]
struct Curve {
    points: Vec<crate::local::curve::Point>,
    last_metrics: BTreeMap<String, f64>,
}

impl Curve {
    fn observe(&mut self, status: &TrainingJobStatus) {
        let Some(progress) = &status.progress else {
            return;
        };
        let step = progress.step as f64;
        if self.points.last().is_some_and(|p| p.step == step) {
            return;
        }
        // Metrics stay in the status between evaluations; plot each evaluation once.
        let accuracy = (progress.metrics != self.last_metrics)
            .then(|| progress.metrics.get("valAccuracy").copied())
            .flatten();
        self.last_metrics = progress.metrics.clone();
        self.points.push(crate::local::curve::Point {
            step,
            loss: progress.loss,
            accuracy,
        });
    }
}

/// Progress reports received by the local endpoint.
#[derive(Default)]
struct Inbox {
    tracker: ProgressTracker,
    accepted: u64,
    rejected: BTreeMap<&'static str, u64>,
}

/// Runs the job until it finishes or is suspended. `interrupts` counts Ctrl-C presses.
pub fn run(
    mut job: TrainingJob,
    options: &RunOptions,
    interrupts: Arc<AtomicUsize>,
) -> Result<RunOutcome, RunError> {
    let name = job_name(&job);
    let namespace = job
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let job_dir = options.state_dir.join(&name);
    let checkpoint = local_checkpoint(&job, &options.state_dir);
    job.spec.checkpoint = Some(checkpoint.clone());
    preflight(&job)?;
    check_fits(
        job.spec.workers.replicas,
        std::thread::available_parallelism().map_or(1, usize::from),
        options.oversubscribe,
    )?;
    check_memory(
        job.spec.workers.replicas,
        worker_memory_estimate(&job.spec.trainer),
        available_memory(),
        options.oversubscribe,
    )?;
    std::fs::create_dir_all(job_dir.join("logs"))?;
    let _run_lock = lock_job(&job_dir, &name)?;
    let gang_lock = job_dir.join("gang.lock");

    let token = random_token()
        .ok_or_else(|| RunError::Preflight("no system randomness for the progress token".into()))?;
    let token_path = job_dir.join("progress-token");
    write_private(&token_path, &token)?;
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let attempt_now = Arc::new(AtomicU32::new(1));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let progress_url = format!(
        "http://{}/v1/namespaces/{namespace}/trainingjobs/{name}/progress",
        listener.local_addr()?
    );
    {
        let (inbox, attempt_now, token) =
            (Arc::clone(&inbox), Arc::clone(&attempt_now), token.clone());
        std::thread::spawn(move || serve_progress(listener, &token, &inbox, &attempt_now));
    }

    let display = Display::new(options.json, options.quiet, Arc::clone(&interrupts));
    wait_for_earlier_workers(&gang_lock, &name, &display)?;
    let batch_size = job.spec.trainer.batch_size.max(1) as u64;
    let mut workers: Vec<Worker> = Vec::new();
    let mut suspended_by_user = false;
    let mut last_attempt = 0;
    let mut curve = Curve::default();
    let curve_path = job_dir.join("curve.png");
    loop {
        let presses = interrupts.load(Ordering::SeqCst);
        if presses >= 2 {
            for w in &mut workers {
                let _ = w.child.kill();
            }
            display.line("second Ctrl-C: workers killed without a checkpoint");
            return Ok(RunOutcome::Suspended(Box::new(
                job.status.unwrap_or_default(),
            )));
        }
        if presses == 1 && !suspended_by_user {
            suspended_by_user = true;
            job.spec.run_policy = Some(RunPolicy {
                suspend: Some(true),
                ..job.spec.run_policy.clone().unwrap_or_default()
            });
            display.line("Ctrl-C: stopping the workers after an emergency checkpoint (press again to kill them)");
        }
        let now = Timestamp::now();
        reap(&mut workers, &display);
        kill_past_grace(&mut workers, now);
        let observed = Observed {
            workers: workers
                .iter()
                .map(|w| WorkerView {
                    name: format!("{name}-worker-{}", w.rank),
                    rank: w.rank,
                    attempt: w.attempt,
                    state: match (w.deleting_since, w.exited) {
                        (Some(since), _) => WorkerState::Terminating {
                            since,
                            node_ready: true,
                            cause: None,
                        },
                        (None, Some(state)) => state,
                        (None, None) => WorkerState::Running { ready: true },
                    },
                    message: w.message.clone(),
                })
                .collect(),
        };
        {
            let status = job.status.get_or_insert_with(TrainingJobStatus::default);
            let rejected_before = status.checkpoint.as_ref().and_then(|c| c.message.clone());
            if let Ok(inbox) = inbox.lock() {
                inbox.tracker.apply(status, batch_size, now);
            }
            let rejected = status.checkpoint.as_ref().and_then(|c| c.message.as_ref());
            if let Some(message) = rejected.filter(|m| Some(*m) != rejected_before.as_ref()) {
                display.event(true, "CheckpointsRejected", message);
            }
        }
        let decision = decide(&job, &observed, now);
        for event in &decision.events {
            display.event(event.warning, &event.reason, &event.message);
        }
        for action in &decision.actions {
            match action {
                Action::EnsureSupport | Action::DeleteJob => {}
                Action::CreateWorkers {
                    attempt,
                    world_size,
                } => {
                    attempt_now.store(*attempt, Ordering::SeqCst);
                    if *attempt != last_attempt {
                        if let Ok(mut inbox) = inbox.lock() {
                            inbox.tracker.new_attempt();
                        }
                        last_attempt = *attempt;
                    }
                    let port = free_port()?;
                    for rank in 0..*world_size {
                        if interrupts.load(Ordering::SeqCst) > 0 {
                            // Ctrl-C while starting a large gang: stop starting; the next turn
                            // stops the started ones.
                            break;
                        }
                        let env = WorkerEnv {
                            rank,
                            world_size: *world_size,
                            rendezvous_addr: "127.0.0.1".into(),
                            rendezvous_port: port,
                            attempt: *attempt,
                            job_name: name.clone(),
                            job_namespace: namespace.clone(),
                            job_uid: None,
                            trainer: job.spec.trainer.clone(),
                            checkpoint: Some(checkpoint.clone()),
                            progress_url: Some(progress_url.clone()),
                            progress_token_path: Some(token_path.display().to_string()),
                            scratch_dir: None,
                        };
                        // Appended: a run resumed after a suspension numbers its attempts from 1
                        // again, and must not overwrite the logs of the run before.
                        let log_path = job_dir
                            .join("logs")
                            .join(format!("attempt-{attempt}-rank-{rank}.log"));
                        let mut log = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log_path)?;
                        writeln!(log, "--- ferrotrain run, started {now} ---")?;
                        let mut command = Command::new(&options.worker[0]);
                        command
                            .args(&options.worker[1..])
                            .envs(env.to_env())
                            .env(
                                ferrotrain_crds::env::SUPERVISOR_PID,
                                std::process::id().to_string(),
                            )
                            .env(ferrotrain_crds::env::GANG_LOCK, &gang_lock);
                        if let Some(gpu) = gpu_of_worker(
                            std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
                            gpu_device_nodes(),
                            rank,
                        ) {
                            command.env("CUDA_VISIBLE_DEVICES", gpu);
                        }
                        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
                            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                            let threads = options
                                .threads_per_worker
                                .unwrap_or_else(|| compute_threads_per_worker(cpus, *world_size));
                            command.env("RAYON_NUM_THREADS", threads.to_string());
                        }
                        // A process group of its own: a terminal's Ctrl-C reaches the runner
                        // alone, which then stops the workers in order (SIGTERM, grace, SIGKILL);
                        // a worker whose runner is gone stops by itself (SUPERVISOR_PID).
                        let child = command
                            .process_group(0)
                            .stdin(Stdio::null())
                            .stdout(log.try_clone()?)
                            .stderr(log)
                            .spawn()?;
                        workers.push(Worker {
                            rank,
                            attempt: *attempt,
                            child,
                            exited: None,
                            message: None,
                            deleting_since: None,
                            log: log_path,
                        });
                    }
                }
                Action::DeleteWorkers { names, force } => {
                    for w in workers.iter_mut().filter(|w| {
                        names.contains(&format!("{name}-worker-{}", w.rank))
                            && w.deleting_since.is_none()
                    }) {
                        if w.exited.is_none() {
                            if *force {
                                let _ = w.child.kill();
                            } else {
                                let _ = Command::new("kill")
                                    .args(["-TERM", &w.child.id().to_string()])
                                    .status();
                            }
                        }
                        w.deleting_since = Some(now);
                    }
                }
            }
        }
        job.status = Some(decision.status.clone());
        let status = job.status.clone().unwrap_or_default();
        display.status(&status);
        if let Some(observer) = &options.observer
            && let Ok(mut seen) = observer.lock()
        {
            *seen = status.clone();
        }
        curve.observe(&status);
        let live = workers.iter().any(|w| w.exited.is_none());
        let outcome = match status.phase {
            Some(Phase::Succeeded) if !live => Some(RunOutcome::Succeeded(Box::new(status))),
            Some(Phase::Failed) if !live => Some(RunOutcome::Failed(Box::new(status))),
            Some(Phase::Suspended) if !live && suspended_by_user => {
                Some(RunOutcome::Suspended(Box::new(status)))
            }
            _ => None,
        };
        if let Some(outcome) = outcome {
            display.flush_status();
            match crate::local::curve::write_png(&curve_path, &name, &curve.points) {
                Ok(()) => display.line(&format!("training curve: {}", curve_path.display())),
                Err(e) => display.line(&e.to_string()),
            }
            return Ok(outcome);
        }
        // Workers that exited after being deleted are gone, like deleted pods.
        workers.retain(|w| !(w.deleting_since.is_some() && w.exited.is_some()));
        std::thread::sleep(options.tick);
    }
}

/// The runner is the kubelet of its workers: one still alive a grace period after its SIGTERM
/// (stopped, or ignoring the signal) is killed, as a kubelet would, so a restart or a suspension
/// never waits on it forever.
fn kill_past_grace(workers: &mut [Worker], now: Timestamp) {
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
fn reap(workers: &mut [Worker], display: &Display) {
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

/// Checks what the workers will need before starting any: the built-in data, local data files
/// and a reachable checkpoint store.
fn preflight(job: &TrainingJob) -> Result<(), RunError> {
    let dataset = &job.spec.trainer.dataset;
    let uris = [
        &dataset.images,
        &dataset.labels,
        &dataset.test_images,
        &dataset.test_labels,
        &dataset.uri,
        &dataset.test_uri,
    ];
    for uri in uris.into_iter().flatten() {
        if let Some(path) = uri.strip_prefix("file://")
            && !Path::new(path).exists()
        {
            return Err(RunError::Preflight(format!(
                "dataset file {uri} does not exist"
            )));
        }
    }
    #[cfg(feature = "worker")]
    {
        if dataset.kind == ferrotrain_crds::DatasetKind::Mnist {
            let dir = ferrotrain_trainer::run::default_data_dir().join("mnist");
            if !dir.join("train-images-idx3-ubyte.gz").exists() {
                return Err(RunError::Preflight(format!(
                    "the built-in MNIST is missing from {}; set FERROTRAIN_DATA_DIR",
                    dir.display()
                )));
            }
        }
        if let Some(checkpoint) = &job.spec.checkpoint
            && checkpoint.uri.starts_with("s3://")
        {
            check_s3(checkpoint)?;
        }
    }
    Ok(())
}

#[cfg(feature = "worker")]
fn check_s3(checkpoint: &CheckpointSpec) -> Result<(), RunError> {
    use futures::StreamExt as _;
    let options = ferrotrain_trainer::storage::S3Options {
        endpoint: checkpoint.endpoint.clone(),
        region: checkpoint.region.clone(),
    };
    let where_ = checkpoint
        .endpoint
        .clone()
        .unwrap_or_else(|| "AWS S3".into());
    let location = ferrotrain_trainer::storage::open(&checkpoint.uri, &options)
        .map_err(|e| RunError::Preflight(format!("checkpoint storage {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let probe = runtime.block_on(async {
        let mut listing = location.store.list(Some(&location.prefix));
        tokio::time::timeout(Duration::from_secs(10), listing.next()).await
    });
    match probe {
        Err(_) => Err(RunError::Preflight(format!(
            "checkpoint storage {} at {where_} did not answer within 10 s",
            checkpoint.uri
        ))),
        Ok(Some(Err(e))) => Err(RunError::Preflight(format!(
            "checkpoint storage {} at {where_} is unreachable: {e}",
            checkpoint.uri
        ))),
        Ok(_) => Ok(()),
    }
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A minimal HTTP/1.1 endpoint on loopback for the trainer's progress POSTs.
fn serve_progress(listener: TcpListener, token: &str, inbox: &Mutex<Inbox>, attempt: &AtomicU32) {
    for stream in listener.incoming().flatten() {
        let answer = handle_progress(stream.try_clone(), token, inbox, attempt);
        let mut stream = stream;
        let reason = match answer {
            200 => "OK",
            401 => "Unauthorized",
            413 => "Payload Too Large",
            409 => "Conflict",
            _ => "Bad Request",
        };
        let _ = stream.write_all(
            format!("HTTP/1.1 {answer} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        );
    }
}

fn handle_progress(
    stream: std::io::Result<TcpStream>,
    token: &str,
    inbox: &Mutex<Inbox>,
    attempt: &AtomicU32,
) -> u16 {
    let Ok(stream) = stream else { return 400 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream);
    let mut headers = BTreeMap::new();
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("POST ") {
        return 400;
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if length > ferrotrain_crds::progress::MAX_BODY_BYTES {
        return 413;
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return 400;
    }
    let Ok(mut inbox) = inbox.lock() else {
        return 400;
    };
    let result = inbox.tracker.accept(
        bearer(headers.get("authorization").map(String::as_str)),
        token,
        &body,
        attempt.load(Ordering::SeqCst),
        Timestamp::now(),
    );
    match result {
        Ok(()) => {
            inbox.accepted += 1;
            200
        }
        Err(rejection) => {
            *inbox.rejected.entry(rejection.label()).or_default() += 1;
            rejection.http_status()
        }
    }
}

/// Holds a stream of JSON status lines to one per period without losing what matters: a
/// change of phase or attempt goes out at once, and the newest line held back goes out on
/// [`flush`](Self::flush) when the run ends.
pub(crate) struct StatusThrottle {
    period: Duration,
    /// When the last line went out, the line and its phase key.
    last: Option<(Instant, String, String)>,
    held: Option<String>,
}

impl StatusThrottle {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held: None,
        }
    }

    /// The line to print now, if any. `key` names the phase (and attempt) of `line`.
    pub(crate) fn offer(&mut self, now: Instant, key: &str, line: String) -> Option<String> {
        if let Some((at, text, last_key)) = &self.last {
            if *text == line {
                self.held = None;
                return None;
            }
            if last_key == key && now.saturating_duration_since(*at) < self.period {
                self.held = Some(line);
                return None;
            }
        }
        self.held = None;
        self.last = Some((now, line.clone(), key.to_string()));
        Some(line)
    }

    /// The newest line held back, once.
    pub(crate) fn flush(&mut self) -> Option<String> {
        let line = self.held.take()?;
        if let Some(last) = &mut self.last {
            last.1.clone_from(&line);
        }
        Some(line)
    }
}

/// Terminal output: a progress bar, or JSON lines.
struct Display {
    json: bool,
    bar: indicatif::ProgressBar,
    status_lines: Mutex<StatusThrottle>,
    /// Counted as one Ctrl-C when the reader of stdout goes away (`… | head -1`).
    interrupts: Arc<AtomicUsize>,
    stdout_closed: std::sync::atomic::AtomicBool,
    /// The terminal's settings before the bar turned off its echo of control characters.
    terminal: Option<nix::sys::termios::Termios>,
}

/// Turns off the terminal's echo of control characters (`stty -echoctl`) and returns the
/// settings to restore. The echoed `^C` of a Ctrl-C lands on the bar's line behind the bar's
/// back, which then cannot clear that line and leaves a stale copy of itself on screen.
fn quiet_control_echo() -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return None;
    }
    let original = tcgetattr(&stdin).ok()?;
    if !original.local_flags.contains(LocalFlags::ECHOCTL) {
        return None;
    }
    let mut quiet = original.clone();
    quiet.local_flags.remove(LocalFlags::ECHOCTL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).ok()?;
    Some(original)
}

impl Display {
    fn new(json: bool, quiet: bool, interrupts: Arc<AtomicUsize>) -> Self {
        // A hidden bar prints nothing, its `println` lines included.
        let json = json && !quiet;
        let bar = if json || quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(1)
        };
        let style =
            // wide_msg: the message is cut to the terminal's width instead of wrapping.
            indicatif::ProgressStyle::with_template("{spinner} [{bar:20}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            json,
            bar,
            status_lines: Mutex::new(StatusThrottle::new(Duration::from_secs(1))),
            interrupts,
            stdout_closed: std::sync::atomic::AtomicBool::new(false),
            terminal: if json || quiet {
                None
            } else {
                quiet_control_echo()
            },
        }
    }

    /// Writes one line to stdout. A reader that went away stops the run as Ctrl-C does (the
    /// workers checkpoint and stop) instead of a panic that would orphan them.
    fn emit(&self, line: &str) {
        use std::io::Write;
        if self.stdout_closed.load(Ordering::SeqCst) {
            return;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            self.stdout_closed.store(true, Ordering::SeqCst);
            self.interrupts.fetch_max(1, Ordering::SeqCst);
        }
    }

    fn line(&self, text: &str) {
        if self.json {
            self.emit(&serde_json::json!({"event": "message", "message": text}).to_string());
        } else {
            self.bar.println(text);
        }
    }

    fn event(&self, warning: bool, reason: &str, message: &str) {
        if self.json {
            self.emit(
                &serde_json::json!({"event": "event", "type": if warning { "Warning" } else { "Normal" }, "reason": reason, "message": message})
                    .to_string(),
            );
        } else {
            self.bar.println(format!(
                "{} {reason}: {message}",
                if warning { "!" } else { "-" }
            ));
        }
    }

    /// Prints the newest status line the throttle held back: the stream ends on the final one.
    fn flush_status(&self) {
        let held = self.status_lines.lock().ok().and_then(|mut l| l.flush());
        if let Some(line) = held {
            self.emit(&line);
        }
    }

    fn status(&self, status: &TrainingJobStatus) {
        let progress = status.progress.clone().unwrap_or_default();
        let restarts = status.restarts.clone().unwrap_or_default();
        if self.json {
            let line = serde_json::json!({
                "event": "status",
                "phase": status.phase,
                "attempt": status.attempt,
                "step": progress.step,
                "totalSteps": progress.total_steps,
                "epoch": progress.epoch,
                "loss": progress.loss,
                "metrics": progress.metrics,
                "samplesPerSecond": progress.samples_per_second,
                "etaSeconds": progress.eta_seconds,
                "restarts": restarts,
            })
            .to_string();
            let key = format!("{:?}/{}", status.phase, status.attempt.unwrap_or(1));
            let due = self
                .status_lines
                .lock()
                .ok()
                .and_then(|mut lines| lines.offer(Instant::now(), &key, line));
            if let Some(line) = due {
                self.emit(&line);
            }
            return;
        }
        if let Some(total) = progress.total_steps {
            self.bar.set_length(total.max(1) as u64);
        }
        self.bar.set_position(progress.step.max(0) as u64);
        let accuracy = progress
            .metrics
            .get("valAccuracy")
            .map(|a| format!(" acc {:.2}%", a * 100.0))
            .unwrap_or_default();
        self.bar.set_message(format!(
            "{:?} epoch {} loss {}{} {} samples/s ETA {} attempt {} restarts {}",
            status.phase.unwrap_or(Phase::Pending),
            progress.epoch.unwrap_or(0),
            progress.loss.map_or("-".into(), |l| format!("{l:.4}")),
            accuracy,
            progress
                .samples_per_second
                .map_or("-".into(), |s| format!("{s:.0}")),
            progress.eta.unwrap_or_else(|| "-".into()),
            status.attempt.unwrap_or(1),
            restarts.infra + restarts.app,
        ));
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        if let Some(original) = &self.terminal {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                original,
            );
        }
    }
}

/// GPU device nodes (`/dev/nvidiaN`) on this machine, as the trainer's device probe counts them.
#[cfg(feature = "worker")]
fn gpu_device_nodes() -> usize {
    ferrotrain_trainer::engine::device::probe_under(std::path::Path::new("/"), None, None)
        .visible_gpus
}

/// Without the embedded trainer there are no local workers to place.
#[cfg(not(feature = "worker"))]
fn gpu_device_nodes() -> usize {
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
    fn the_json_status_stream_is_throttled_but_keeps_every_phase_and_the_last_line() {
        let period = Duration::from_secs(1);
        let mut throttle = StatusThrottle::new(period);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            throttle.offer(at(0), "Running", "step 1".into()).as_deref(),
            Some("step 1")
        );
        assert_eq!(throttle.offer(at(10), "Running", "step 1".into()), None);
        assert_eq!(throttle.offer(at(100), "Running", "step 2".into()), None);
        assert_eq!(throttle.offer(at(200), "Running", "step 3".into()), None);
        // A phase change is never held back, however soon it comes.
        assert_eq!(
            throttle
                .offer(at(300), "Succeeded", "done".into())
                .as_deref(),
            Some("done")
        );
        assert_eq!(
            throttle.flush(),
            None,
            "nothing held after the phase change"
        );
        assert_eq!(
            throttle.offer(at(400), "Succeeded", "done, final".into()),
            None
        );
        // The run ends: the newest line held back is printed, once.
        assert_eq!(throttle.flush().as_deref(), Some("done, final"));
        assert_eq!(throttle.flush(), None);
        assert_eq!(
            throttle.offer(at(500), "Succeeded", "done, final".into()),
            None
        );
        // After the period a new line goes out and nothing older is held.
        assert_eq!(throttle.offer(at(600), "Succeeded", "later".into()), None);
        assert_eq!(
            throttle
                .offer(at(1500), "Succeeded", "latest".into())
                .as_deref(),
            Some("latest")
        );
        assert_eq!(throttle.flush(), None);
    }

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
    fn a_gang_larger_than_the_machine_needs_oversubscribe() {
        assert!(check_fits(2, 2, false).is_ok());
        let refused = check_fits(1024, 8, false).expect_err("1024 workers on 8 CPUs");
        let message = refused.to_string();
        assert!(
            message.starts_with("spec.workers.replicas: 1024"),
            "{message}"
        );
        assert!(message.contains("--oversubscribe"), "{message}");
        assert!(check_fits(1024, 8, true).is_ok());
    }

    #[test]
    fn a_gang_that_needs_more_memory_than_is_available_needs_oversubscribe() {
        let spec: ferrotrain_crds::TrainerSpec = serde_yaml::from_str(
            "model: {type: mlp}\ndataset: {type: mnist}\nbatchSize: 8\nepochs: 1\n",
        )
        .expect("spec");
        let per_worker = worker_memory_estimate(&spec);
        assert_eq!(per_worker, (64 << 20) + 70_000 * 784 * 4);
        let gib = 1u64 << 30;
        assert!(check_memory(2, per_worker, Some(2 * gib), false).is_ok());
        let refused = check_memory(16, per_worker, Some(2 * gib), false)
            .expect_err("16 MNIST workers in 2 GiB")
            .to_string();
        assert!(
            refused.starts_with(
                "spec.workers.replicas: 16 workers need about 4.3 GiB of memory (about 273 MiB each"
            ),
            "{refused}"
        );
        assert!(refused.contains("2.0 GiB available"), "{refused}");
        assert!(check_memory(16, per_worker, Some(2 * gib), true).is_ok());
        // Local files count by size; a gzipped one as about five times its size.
        let dir = std::env::temp_dir().join(format!("ferrotrain-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("d.csv.gz"), vec![0u8; 1000]).expect("write");
        let spec: ferrotrain_crds::TrainerSpec = serde_yaml::from_str(&format!(
            "model: {{type: mlp}}\ndataset: {{type: csv, uri: 'file://{}/d.csv.gz'}}\nbatchSize: 8\nepochs: 1\n",
            dir.display()
        ))
        .expect("spec");
        assert_eq!(worker_memory_estimate(&spec), (64 << 20) + 1000 * 5 * 4);
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            check_memory(16, per_worker, None, false).is_ok(),
            "unknown: no check"
        );
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
