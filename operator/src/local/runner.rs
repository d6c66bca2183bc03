//! `ferrotrain run`: a TrainingJob on one machine. The manifest is admitted exactly as in a
//! cluster, then the same [`decide`] that drives pods drives local worker processes: gang start,
//! whole-gang restarts with budgets, deadline, stall detection, suspension on Ctrl-C.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrotrain_crds::env::WorkerEnv;
use ferrotrain_crds::{Phase, RunPolicy, TrainingJob, TrainingJobStatus};
use jiff::Timestamp;

use crate::decide::job::{Action, Observed, WorkerState, WorkerView, decide};
use crate::local::display::Display;
use crate::local::error::RunError;
use crate::local::preflight::{
    available_memory, check_fits, check_memory, job_name, local_checkpoint, preflight,
    worker_memory_estimate,
};
use crate::local::processes::{
    Worker, compute_threads_per_worker, create_state_dir, gpu_device_nodes, gpu_of_worker,
    kill_past_grace, lock_job, reap, wait_for_earlier_workers, write_private,
};
use crate::local::progress_server::{Inbox, serve_progress};
use crate::progress::random_token;

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

/// The status a suspended run of the job left in `<job dir>/status.yaml`, if it was suspended.
/// The job's identity under this state directory, kept across runs: its writer lease on the
/// checkpoint location is this job's, and a run of the same job from another state directory is
/// another writer. Random, made the first time.
fn local_job_uid(job_dir: &std::path::Path) -> Result<String, RunError> {
    let path = job_dir.join("uid");
    if let Ok(uid) = std::fs::read_to_string(&path) {
        let uid = uid.trim();
        if !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(uid.to_string());
        }
    }
    let uid: String = random_token()
        .ok_or_else(|| RunError::Preflight("no system randomness for the job's identity".into()))?
        .chars()
        .take(32)
        .collect();
    write_private(&path, &uid)?;
    Ok(uid)
}

fn suspended_status(job_dir: &std::path::Path) -> Option<TrainingJobStatus> {
    #[derive(serde::Deserialize)]
    struct Saved {
        status: TrainingJobStatus,
    }
    let text = std::fs::read_to_string(job_dir.join("status.yaml")).ok()?;
    let saved: Saved = serde_yaml::from_str(&text).ok()?;
    (saved.status.phase == Some(Phase::Suspended)).then_some(saved.status)
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
    if options.state_dir.exists() && !options.state_dir.is_dir() {
        return Err(RunError::Preflight(format!(
            "--state-dir {}: not a directory",
            options.state_dir.display()
        )));
    }
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
    )?;
    create_state_dir(&options.state_dir, &job_dir.join("logs"))?;
    let _run_lock = lock_job(&job_dir, &name)?;
    let gang_lock = job_dir.join("gang.lock");

    let (Some(token), Some(gang_key)) = (random_token(), random_token()) else {
        return Err(RunError::Preflight(
            "no system randomness for the progress token and gang key".into(),
        ));
    };
    let token_path = job_dir.join("progress-token");
    write_private(&token_path, &token)?;
    let gang_key_path = job_dir.join("gang-key");
    write_private(&gang_key_path, &gang_key)?;
    let job_uid = local_job_uid(&job_dir)?;
    // A run that was suspended resumes where it stopped: the state machine goes on from its
    // status (attempts, restarts, goodput), as on a cluster.
    if let Some(previous) = suspended_status(&job_dir) {
        job.status = Some(previous);
    }
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let attempt_now = Arc::new(AtomicU32::new(
        job.status
            .as_ref()
            .and_then(|s| s.attempt)
            .map_or(1, |a| a.max(1) as u32),
    ));
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
            // The runner writes every report into the status it decides on: nothing lags.
            last_report: None,
            step_seconds: inbox
                .lock()
                .ok()
                .and_then(|i| i.tracker.median_step_seconds()),
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
            // Processes have no names to share with anyone.
            name_conflicts: Vec::new(),
        };
        {
            let status = job.status.get_or_insert_with(TrainingJobStatus::default);
            let rejected_before = status.checkpoint.as_ref().and_then(|c| c.message.clone());
            if let Ok(inbox) = inbox.lock() {
                let output_uri = job.spec.output.as_ref().map(|o| o.uri.as_str());
                inbox.tracker.apply(status, batch_size, output_uri, now);
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
                Action::EnsureSupport { .. } | Action::DeleteJob => {}
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
                    // One that no outgoing connection can take before rank 0 listens.
                    let port = ferrotrain_crds::loopback_port::pick()?;
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
                            job_uid: Some(job_uid.clone()),
                            trainer: job.spec.trainer.clone(),
                            checkpoint: Some(checkpoint.clone()),
                            output: job.spec.output.clone(),
                            progress_url: Some(progress_url.clone()),
                            progress_token_path: Some(token_path.display().to_string()),
                            gang_key_path: Some(gang_key_path.display().to_string()),
                            progress_ca: None,
                            scratch_dir: None,
                        };
                        // Appended: a log of the same attempt is never overwritten.
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
