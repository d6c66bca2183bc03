//! The TrainingJob state machine: one pure function, [`decide`], from (job, observed workers, now)
//! to the next status, the actions to take, the events to emit and when to look again. The
//! Kubernetes controller runs it over pods; `ferrotrain run` runs it over local processes.
//!
//! Rules (docs/lifecycle.md has the prose):
//! - the gang runs only when every worker of the attempt runs; never Running with a partial gang;
//! - a gang that does not fully schedule within the gang timeout is released and retried with
//!   backoff (or, with `minReplicas`, restarted at the size that did schedule);
//! - any worker failure restarts the whole gang as a new attempt, after the old pods are gone;
//!   infrastructure causes and application failures have separate budgets;
//! - Succeeded and Failed are terminal: nothing recreates workers afterwards;
//! - suspension stops the workers (SIGTERM: emergency checkpoint) and resumes without a charge.

use std::time::Duration;

use ferrotrain_crds::defaults::{Failure, RuleSource};
use ferrotrain_crds::{
    CleanPodPolicy, FailureAction, FailureReason, GoodputStatus, Phase, RestartCounts, RunPolicy,
    TrainingJob, TrainingJobStatus, WorkerCounts,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A pod stuck Terminating on a NotReady node is force-deleted after this long.
pub const FORCE_DELETE_AFTER: Duration = Duration::from_secs(300);
/// First backoff after a gang-schedule timeout; doubles up to [`MAX_GANG_BACKOFF`].
pub const GANG_BACKOFF: Duration = Duration::from_secs(10);
/// Longest backoff between gang attempts.
pub const MAX_GANG_BACKOFF: Duration = Duration::from_secs(300);
/// How long a worker's "peer lost" exit waits for the failure that caused it to be reported.
pub const PEER_LOST_GRACE: Duration = Duration::from_secs(30);

/// Why a worker ended badly, as far as the platform can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// The kubelet evicted the pod (node pressure).
    Evicted,
    /// A higher-priority pod preempted it.
    Preempted,
    /// The pod carried a `DisruptionTarget` condition (drain, taint manager, preemption).
    DisruptionTarget,
    /// Its node went away.
    NodeLost,
    /// Killed for exceeding its memory limit (exit 137 / OOMKilled).
    OomKilled,
    /// The trainer stopped on SIGTERM after committing a checkpoint (exit 75).
    PreemptedAfterCheckpoint,
    /// The worker vanished (deleted by someone else).
    Missing,
    /// Someone other than the operator deleted the worker (no disruption reason given).
    Deleted,
    /// A local worker process was killed by this signal (for example the kernel's OOM killer).
    Signal(i32),
    /// The trainer exited with this code.
    ExitCode(i32),
}

impl FailureCause {
    /// Whether the infrastructure budget pays for it (else the application budget).
    pub fn is_infrastructure(self) -> bool {
        !matches!(self, FailureCause::ExitCode(_))
    }

    /// The failure as `runPolicy.failurePolicy` rules match it.
    pub fn as_policy_failure(self) -> Failure {
        Failure::Reason(match self {
            FailureCause::ExitCode(code) => return Failure::ExitCode(code),
            FailureCause::Signal(_) => return Failure::Other,
            FailureCause::Evicted => FailureReason::Evicted,
            FailureCause::Preempted => FailureReason::Preempted,
            FailureCause::DisruptionTarget => FailureReason::DisruptionTarget,
            FailureCause::NodeLost => FailureReason::NodeLost,
            FailureCause::OomKilled => FailureReason::OomKilled,
            FailureCause::PreemptedAfterCheckpoint => FailureReason::PreemptedAfterCheckpoint,
            FailureCause::Missing => FailureReason::WorkerMissing,
            FailureCause::Deleted => FailureReason::WorkerDeleted,
        })
    }

    /// Whether it counts as a preemption.
    pub fn is_preemption(self) -> bool {
        matches!(
            self,
            FailureCause::Preempted
                | FailureCause::DisruptionTarget
                | FailureCause::PreemptedAfterCheckpoint
        )
    }

    /// CamelCase reason for events and conditions.
    pub fn reason(self) -> String {
        match self {
            FailureCause::Evicted => "Evicted".into(),
            FailureCause::Preempted => "Preempted".into(),
            FailureCause::DisruptionTarget => "DisruptionTarget".into(),
            FailureCause::NodeLost => "NodeLost".into(),
            FailureCause::OomKilled => "OOMKilled".into(),
            FailureCause::PreemptedAfterCheckpoint => "PreemptedAfterCheckpoint".into(),
            FailureCause::Missing => "WorkerMissing".into(),
            FailureCause::Deleted => "WorkerDeleted".into(),
            FailureCause::Signal(signal) => format!("KilledBySignal{signal}"),
            FailureCause::ExitCode(code) => format!("ExitCode{code}"),
        }
    }
}

/// Why a scheduled worker's container cannot start: the kubelet's waiting reason. None of them
/// goes away by recreating the gang (a wrong image or a missing Secret key stays wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StuckReason {
    /// The image cannot be pulled.
    ErrImagePull,
    /// Pulls keep failing; the kubelet backs off.
    ImagePullBackOff,
    /// The image reference is malformed.
    InvalidImageName,
    /// `imagePullPolicy: Never` and the image is not on the node.
    ErrImageNeverPull,
    /// The container's configuration cannot be built (a missing Secret or key, for example).
    CreateContainerConfigError,
    /// The runtime refused to create the container.
    CreateContainerError,
}

impl StuckReason {
    /// Reads a container's waiting reason; `None` for the ordinary ones (ContainerCreating).
    pub fn parse(reason: &str) -> Option<Self> {
        Some(match reason {
            "ErrImagePull" => Self::ErrImagePull,
            "ImagePullBackOff" => Self::ImagePullBackOff,
            "InvalidImageName" => Self::InvalidImageName,
            "ErrImageNeverPull" => Self::ErrImageNeverPull,
            "CreateContainerConfigError" => Self::CreateContainerConfigError,
            "CreateContainerError" => Self::CreateContainerError,
            _ => return None,
        })
    }

    /// The reason as the kubelet writes it.
    pub fn reason(self) -> &'static str {
        match self {
            Self::ErrImagePull => "ErrImagePull",
            Self::ImagePullBackOff => "ImagePullBackOff",
            Self::InvalidImageName => "InvalidImageName",
            Self::ErrImageNeverPull => "ErrImageNeverPull",
            Self::CreateContainerConfigError => "CreateContainerConfigError",
            Self::CreateContainerError => "CreateContainerError",
        }
    }
}

/// What a worker (pod or process) is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Created, not running yet; `scheduled` once bound to a node.
    Pending {
        /// Bound to a node.
        scheduled: bool,
    },
    /// Held by a scheduling gate: a queue (Kueue) has not admitted it yet.
    Gated,
    /// Bound to a node, but its container cannot start.
    Stuck(StuckReason),
    /// Running; `ready` when its readiness check passes.
    Running {
        /// Ready.
        ready: bool,
    },
    /// Exited 0.
    Succeeded,
    /// Ended badly.
    Failed(FailureCause),
    /// Being deleted since `since`; `node_ready` is false when its node is NotReady.
    Terminating {
        /// Deletion start.
        since: Timestamp,
        /// Whether its node is Ready.
        node_ready: bool,
        /// Why, when the cluster said so (a `DisruptionTarget` condition or a Failed phase).
        cause: Option<FailureCause>,
    },
}

/// One worker as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// Pod or process name.
    pub name: String,
    /// Rank.
    pub rank: u32,
    /// Attempt it belongs to.
    pub attempt: u32,
    /// State.
    pub state: WorkerState,
    /// The last error the worker reported, when it failed (the container's termination message
    /// on a cluster, the last error of its log under `ferrotrain run`).
    pub message: Option<String>,
}

/// Everything observed about a job's children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Workers of any attempt.
    pub workers: Vec<WorkerView>,
}

/// A change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create or update the headless Service and the progress-token Secret.
    EnsureSupport,
    /// Create the workers of `attempt`, ranks `0..world_size`.
    CreateWorkers {
        /// Attempt number.
        attempt: u32,
        /// World size.
        world_size: u32,
    },
    /// Delete these workers: gracefully (SIGTERM first) or, when `force`, at once.
    DeleteWorkers {
        /// Names.
        names: Vec<String>,
        /// Skip the grace period.
        force: bool,
    },
    /// Delete the TrainingJob itself (TTL after finishing).
    DeleteJob,
}

/// An event to record on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The next status.
    pub status: TrainingJobStatus,
    /// Changes to make, in order.
    pub actions: Vec<Action>,
    /// Events to record.
    pub events: Vec<Event>,
    /// Look again after this long even if nothing changes.
    pub requeue_after: Option<Duration>,
}

/// Decides what to do next. Pure: no I/O, no clock.
pub fn decide(job: &TrainingJob, observed: &Observed, now: Timestamp) -> Decision {
    let policy = job.spec.run_policy.clone().unwrap_or_default();
    let mut d = Decider {
        job,
        policy,
        now,
        status: job.status.clone().unwrap_or_default(),
        actions: Vec::new(),
        events: Vec::new(),
        requeue: None,
    };
    d.status.observed_generation = job.metadata.generation;
    if d.status.attempt.is_none() {
        d.status.attempt = Some(1);
    }
    if d.status.restarts.is_none() {
        d.status.restarts = Some(RestartCounts::default());
    }
    d.step(observed);
    d.finish(observed)
}

struct Decider<'a> {
    job: &'a TrainingJob,
    policy: RunPolicy,
    now: Timestamp,
    status: TrainingJobStatus,
    actions: Vec<Action>,
    events: Vec<Event>,
    requeue: Option<Duration>,
}

impl Decider<'_> {
    fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Pending)
    }

    fn attempt(&self) -> u32 {
        self.status.attempt.unwrap_or(1).max(1) as u32
    }

    fn replicas(&self) -> u32 {
        self.job.spec.workers.replicas.max(1) as u32
    }

    fn desired(&self) -> u32 {
        self.status
            .workers
            .as_ref()
            .map(|w| w.desired)
            .filter(|d| *d > 0)
            .map_or(self.replicas(), |d| d as u32)
    }

    fn current<'o>(&self, observed: &'o Observed) -> Vec<&'o WorkerView> {
        observed
            .workers
            .iter()
            .filter(|w| w.attempt == self.attempt())
            .collect()
    }

    fn step(&mut self, observed: &Observed) {
        self.force_delete_stuck(observed);
        self.delete_stale(observed);
        if matches!(self.phase(), Phase::Succeeded | Phase::Failed) {
            self.terminal(observed);
            return;
        }
        if let (Some(deadline), Some(start)) = (
            self.policy.active_deadline_seconds,
            self.status.start_time.as_ref(),
        ) && let Some(elapsed) = seconds_between(start.0, self.now)
        {
            if elapsed >= deadline as f64 {
                self.fail(
                    observed,
                    "DeadlineExceeded",
                    format!("the job ran longer than activeDeadlineSeconds ({deadline}s)"),
                );
                return;
            }
            self.requeue_in(deadline as f64 - elapsed);
        }
        if self.policy.suspend_or_default() {
            self.suspend(observed);
            return;
        }
        if self.phase() == Phase::Suspended {
            self.set_condition("Suspended", false, "Resumed", "the job was resumed");
            self.event(false, "Resumed", "resuming from the latest checkpoint");
            self.new_attempt(self.replicas());
            self.transition(
                Phase::Restarting,
                "Resumed",
                "waiting for the suspended workers to exit",
            );
        }
        match self.phase() {
            Phase::Pending | Phase::Restarting => self.start_gang(observed),
            Phase::Scheduling => self.scheduling(observed),
            Phase::Running => self.running(observed),
            Phase::Suspended | Phase::Succeeded | Phase::Failed => {}
        }
    }

    /// Old attempts' workers never run alongside the current gang.
    fn delete_stale(&mut self, observed: &Observed) {
        let attempt = self.attempt();
        let stale: Vec<&WorkerView> = observed
            .workers
            .iter()
            .filter(|w| w.attempt != attempt)
            .collect();
        self.delete_gracefully(stale);
    }

    /// Deletes workers (SIGTERM first) unless they are already being deleted.
    fn delete_gracefully(&mut self, workers: Vec<&WorkerView>) {
        let names: Vec<String> = workers
            .into_iter()
            .filter(|w| !matches!(w.state, WorkerState::Terminating { .. }))
            .map(|w| w.name.clone())
            .collect();
        if !names.is_empty() {
            self.actions.push(Action::DeleteWorkers {
                names,
                force: false,
            });
        }
    }

    /// Pods stuck Terminating on a NotReady node never finish on their own.
    fn force_delete_stuck(&mut self, observed: &Observed) {
        let mut stuck = Vec::new();
        for w in &observed.workers {
            if let WorkerState::Terminating {
                since,
                node_ready: false,
                ..
            } = w.state
            {
                match seconds_between(since, self.now) {
                    Some(s) if s >= FORCE_DELETE_AFTER.as_secs_f64() => stuck.push(w.name.clone()),
                    Some(s) => self.requeue_in(FORCE_DELETE_AFTER.as_secs_f64() - s),
                    None => self.requeue_in(FORCE_DELETE_AFTER.as_secs_f64()),
                }
            }
        }
        if !stuck.is_empty() {
            self.event(
                true,
                "ForceDeleted",
                &format!("workers {stuck:?} were stuck terminating on a NotReady node"),
            );
            self.actions.push(Action::DeleteWorkers {
                names: stuck,
                force: true,
            });
        }
    }

    fn terminal(&mut self, observed: &Observed) {
        self.clean_pods(observed);
        if let (Some(ttl), Some(done)) = (
            self.policy.ttl_seconds_after_finished,
            self.status.completion_time.as_ref(),
        ) {
            let elapsed = seconds_between(done.0, self.now).unwrap_or(0.0);
            if elapsed >= ttl as f64 {
                self.actions.push(Action::DeleteJob);
            } else {
                self.requeue_in(ttl as f64 - elapsed);
            }
        }
    }

    /// Applies cleanPodPolicy to the current attempt's workers.
    fn clean_pods(&mut self, observed: &Observed) {
        let policy = self.policy.clean_pod_policy_or_default();
        let names: Vec<String> = self
            .current(observed)
            .into_iter()
            .filter(|w| match (policy, w.state) {
                (_, WorkerState::Terminating { .. }) | (CleanPodPolicy::None, _) => false,
                (CleanPodPolicy::All, _) => true,
                (CleanPodPolicy::Running, state) => matches!(
                    state,
                    WorkerState::Pending { .. }
                        | WorkerState::Gated
                        | WorkerState::Stuck(_)
                        | WorkerState::Running { .. }
                ),
            })
            .map(|w| w.name.clone())
            .collect();
        if !names.is_empty() {
            self.actions.push(Action::DeleteWorkers {
                names,
                force: false,
            });
        }
    }

    fn suspend(&mut self, observed: &Observed) {
        if self.phase() != Phase::Suspended {
            self.account_attempt_end(true);
            self.transition(
                Phase::Suspended,
                "Suspended",
                "workers stop after an emergency checkpoint",
            );
            self.set_condition(
                "Suspended",
                true,
                "Suspended",
                "spec.runPolicy.suspend is true",
            );
            self.set_condition("Running", false, "Suspended", "the job is suspended");
        }
        self.delete_gracefully(self.current(observed));
    }

    /// Creates the gang once every older worker is gone (worker names repeat across attempts).
    fn start_gang(&mut self, observed: &Observed) {
        self.actions.push(Action::EnsureSupport);
        if observed.workers.iter().any(|w| w.attempt != self.attempt()) {
            // Old workers still exiting (worker names repeat across attempts): look again soon.
            self.requeue_in(2.0);
            return;
        }
        if let Some(not_before) = self.status.not_before.as_ref()
            && let Some(wait) = seconds_between(self.now, not_before.0)
            && wait > 0.0
        {
            self.requeue_in(wait);
            return;
        }
        let world_size = self.desired();
        let present = self.current(observed).len() as u32;
        if present >= world_size {
            // Already created (a repeated decision before the pods were observed as such).
            self.transition(
                Phase::Scheduling,
                "GangCreated",
                "waiting for every worker to run",
            );
            return;
        }
        if present > 0 {
            // A creation that stopped part-way (quota, admission, API errors): creating is
            // idempotent, so create the rest and keep the attempt's clock if it started.
            self.actions.push(Action::CreateWorkers {
                attempt: self.attempt(),
                world_size,
            });
            if self.status.attempt_start_time.is_none() {
                self.status.attempt_start_time = Some(Time(self.now));
            }
            self.transition(
                Phase::Scheduling,
                "GangCreated",
                &format!("creating the missing workers of attempt {}", self.attempt()),
            );
            self.requeue_in(self.policy.schedule_timeout_seconds_or_default() as f64);
            return;
        }
        self.actions.push(Action::CreateWorkers {
            attempt: self.attempt(),
            world_size,
        });
        self.status.attempt_start_time = Some(Time(self.now));
        self.status.not_before = None;
        self.set_condition(
            "Scheduled",
            false,
            "GangCreated",
            &format!(
                "attempt {}: waiting for {world_size} workers to run",
                self.attempt()
            ),
        );
        self.transition(
            Phase::Scheduling,
            "GangCreated",
            &format!("attempt {} with {world_size} workers", self.attempt()),
        );
        self.requeue_in(self.policy.schedule_timeout_seconds_or_default() as f64);
    }

    fn scheduling(&mut self, observed: &Observed) {
        let current = self.current(observed);
        // Workers not observed yet are still being created, not missing.
        if let Some(failed) = first_failure(&current, None) {
            if !self.wait_for_cause(&current, failed.cause) {
                self.restart_after_failure(observed, failed);
            }
            return;
        }
        let desired = self.desired() as usize;
        if !current.is_empty() && current.len() < desired {
            // Part of the gang exists: the rest failed to be created (quota, admission).
            self.actions.push(Action::CreateWorkers {
                attempt: self.attempt(),
                world_size: self.desired(),
            });
        }
        let timeout = self.policy.schedule_timeout_seconds_or_default() as f64;
        let gated = current
            .iter()
            .filter(|w| w.state == WorkerState::Gated)
            .count();
        if gated > 0 {
            // Waiting in a queue is not failing to schedule: no gang timeout until admitted.
            self.set_condition(
                "Scheduled",
                false,
                "Queued",
                &format!("{gated} of {desired} workers wait for admission by the queue"),
            );
            self.requeue_in(timeout);
            return;
        }
        if self.condition_reason("Scheduled") == Some("Queued") {
            // Just admitted: the gang timeout counts from here.
            self.status.attempt_start_time = Some(Time(self.now));
            self.set_condition(
                "Scheduled",
                false,
                "Admitted",
                "the queue admitted the gang; waiting for every worker to run",
            );
        }
        let waited = self
            .status
            .attempt_start_time
            .as_ref()
            .and_then(|t| seconds_between(t.0, self.now))
            .unwrap_or(0.0);
        if let Some((worker, reason)) = current.iter().find_map(|w| match w.state {
            WorkerState::Stuck(reason) => Some((w.name.clone(), reason.reason())),
            _ => None,
        }) {
            // Recreating the gang cannot fix a wrong image or a missing Secret key.
            let message = format!("worker {worker} cannot start its container: {reason}");
            if waited >= timeout {
                self.fail(
                    observed,
                    reason,
                    format!("{message}; gave up after gang.scheduleTimeoutSeconds ({timeout}s)"),
                );
                return;
            }
            self.set_condition("Scheduled", false, reason, &message);
            self.requeue_in(timeout - waited);
            return;
        }
        let running = current
            .iter()
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Running { .. } | WorkerState::Succeeded
                )
            })
            .count();
        if running >= desired {
            if let Some(started) = self.status.attempt_start_time.as_ref()
                && let Some(waited) = seconds_between(started.0, self.now)
            {
                self.add_goodput(0.0, waited);
            }
            if self.status.start_time.is_none() {
                self.status.start_time = Some(Time(self.now));
            }
            self.set_condition(
                "Scheduled",
                true,
                "GangScheduled",
                &format!("all {desired} workers are running"),
            );
            self.set_condition(
                "Running",
                true,
                "GangRunning",
                &format!("attempt {} is training", self.attempt()),
            );
            self.transition(
                Phase::Running,
                "GangRunning",
                &format!(
                    "all {desired} workers of attempt {} are running",
                    self.attempt()
                ),
            );
            self.stall_requeue();
            return;
        }
        if waited < timeout {
            self.requeue_in(timeout - waited);
            return;
        }
        self.add_goodput(0.0, waited);
        let scheduled = current.iter().filter(|w| is_scheduled(w.state)).count() as u32;
        let min = self.job.spec.workers.min_replicas.map(|m| m.max(1) as u32);
        if let Some(min) = min
            && scheduled >= min
            && scheduled < self.desired()
        {
            self.event(false, "ElasticResize", &format!("only {scheduled} of {} workers scheduled in {timeout}s; running with {scheduled}", self.desired()));
            self.release_gang(observed, scheduled);
            self.transition(
                Phase::Restarting,
                "ElasticResize",
                &format!("restarting with world size {scheduled}"),
            );
            return;
        }
        let timeouts = {
            let restarts = self
                .status
                .restarts
                .get_or_insert_with(RestartCounts::default);
            restarts.schedule_timeouts += 1;
            restarts.schedule_timeouts
        };
        let backoff = GANG_BACKOFF.as_secs_f64() * 2f64.powi((timeouts - 1).clamp(0, 16));
        let backoff = backoff.min(MAX_GANG_BACKOFF.as_secs_f64());
        self.status.not_before = Some(Time(
            self.now + jiff::SignedDuration::from_secs_f64(backoff),
        ));
        self.set_condition(
            "Scheduled",
            false,
            "GangTimeout",
            &format!(
                "{scheduled} of {} workers scheduled within {timeout}s; retrying in {backoff}s",
                self.desired()
            ),
        );
        self.event(
            true,
            "GangTimeout",
            &format!(
                "released the gang: only {scheduled} of {} workers scheduled within {timeout}s",
                self.desired()
            ),
        );
        let full = self.replicas();
        self.release_gang(observed, full);
        self.transition(
            Phase::Restarting,
            "GangTimeout",
            &format!("retrying in {backoff}s"),
        );
    }

    fn running(&mut self, observed: &Observed) {
        let current = self.current(observed);
        if let Some(failed) = first_failure(&current, Some(self.desired())) {
            if !self.wait_for_cause(&current, failed.cause) {
                self.restart_after_failure(observed, failed);
            }
            return;
        }
        let desired = self.desired() as usize;
        let succeeded = current
            .iter()
            .filter(|w| w.state == WorkerState::Succeeded)
            .count();
        if succeeded >= desired {
            self.account_attempt_end(true);
            self.status.completion_time = Some(Time(self.now));
            self.set_condition("Running", false, "Completed", "training finished");
            self.set_condition("Succeeded", true, "Completed", "every worker exited 0");
            self.transition(Phase::Succeeded, "Succeeded", "training finished");
            self.terminal(observed);
            return;
        }
        if let Some(deadline) = self.policy.progress_deadline_seconds {
            let last = self.last_progress();
            if let Some(silent) = last.and_then(|t| seconds_between(t, self.now))
                && silent >= deadline as f64
            {
                let restarts = self
                    .status
                    .restarts
                    .get_or_insert_with(RestartCounts::default);
                restarts.stall += 1;
                restarts.app += 1;
                let message =
                    format!("no progress for {silent:.0}s (progressDeadlineSeconds {deadline})");
                self.set_condition("Progressing", false, "ProgressDeadlineExceeded", &message);
                if self.budget_exhausted(false) {
                    let max = self.policy.max_app_restarts_or_default();
                    self.fail(
                        observed,
                        "AppRestartBudgetExhausted",
                        format!("{message}; maxAppRestarts ({max}) is used up"),
                    );
                    return;
                }
                self.event(true, "Stalled", &message);
                self.account_attempt_end(false);
                self.release_gang(observed, self.replicas());
                self.transition(
                    Phase::Restarting,
                    "Stalled",
                    "restarting the gang from the latest checkpoint",
                );
                return;
            }
            self.set_condition(
                "Progressing",
                true,
                "ProgressReported",
                "progress is advancing",
            );
        }
        self.stall_requeue();
    }

    /// When progress was last seen: the latest report, or the start of this Running stretch.
    fn last_progress(&self) -> Option<Timestamp> {
        let report = self
            .status
            .progress
            .as_ref()
            .and_then(|p| p.last_update_time.as_ref())
            .map(|t| t.0);
        let running_since = self.condition_since("Running");
        match (report, running_since) {
            (Some(r), Some(s)) => Some(r.max(s)),
            (r, s) => r.or(s),
        }
    }

    fn stall_requeue(&mut self) {
        if let Some(deadline) = self.policy.progress_deadline_seconds {
            let silent = self
                .last_progress()
                .and_then(|t| seconds_between(t, self.now))
                .unwrap_or(0.0);
            self.requeue_in((deadline as f64 - silent).max(1.0));
        }
    }

    /// A worker that exited because it lost its peer is a consequence, and kubelets report pods
    /// independently: the victim's own failure may show a moment later. While another worker of
    /// the gang still runs, wait up to [`PEER_LOST_GRACE`] for it (condition `GangDisrupted`).
    fn wait_for_cause(&mut self, current: &[&WorkerView], cause: FailureCause) -> bool {
        let peer_lost = FailureCause::ExitCode(ferrotrain_crds::env::EXIT_PEER_LOST);
        let others_run = current.iter().any(|w| {
            matches!(
                w.state,
                WorkerState::Running { .. } | WorkerState::Pending { .. }
            )
        });
        if cause != peer_lost || !others_run {
            return false;
        }
        let grace = PEER_LOST_GRACE.as_secs_f64();
        let waited = self
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "GangDisrupted" && c.status == "True")
            .and_then(|c| seconds_between(c.last_transition_time.0, self.now));
        match waited {
            Some(waited) if waited >= grace => false,
            Some(waited) => {
                self.requeue_in(grace - waited);
                true
            }
            None => {
                self.set_condition(
                    "GangDisrupted",
                    true,
                    "PeerLost",
                    "a worker lost its peer; waiting for the cause to be reported",
                );
                self.requeue_in(grace);
                true
            }
        }
    }

    fn restart_after_failure(&mut self, observed: &Observed, failure: GangFailure) {
        let cause = failure.cause;
        let message = failure.describe();
        let (action, source) = self.policy.failure_action(cause.as_policy_failure());
        if action == FailureAction::FailJob {
            let why = match source {
                RuleSource::User(index) => format!("spec.runPolicy.failurePolicy.rules[{index}]"),
                RuleSource::Default(rule) => format!(
                    "exit code {} means {}, which a retry cannot fix (a failurePolicy rule can retry it)",
                    rule.exit_code, rule.why
                ),
                RuleSource::Fallthrough => "the failure policy".into(),
            };
            self.fail(
                observed,
                "FailedByPolicy",
                format!("{message}; {why} fails the job"),
            );
            return;
        }
        let infra = cause.is_infrastructure();
        let charged = action == FailureAction::RestartGang;
        {
            let restarts = self
                .status
                .restarts
                .get_or_insert_with(RestartCounts::default);
            if !charged {
                restarts.uncharged += 1;
            } else if infra {
                restarts.infra += 1;
            } else {
                restarts.app += 1;
            }
            if cause.is_preemption() {
                restarts.preemption += 1;
            }
        }
        if charged && self.budget_exhausted(infra) {
            let (reason, field, max) = if infra {
                (
                    "InfraRestartBudgetExhausted",
                    "maxInfraRestarts",
                    self.policy.max_infra_restarts_or_default(),
                )
            } else {
                (
                    "AppRestartBudgetExhausted",
                    "maxAppRestarts",
                    self.policy.max_app_restarts_or_default(),
                )
            };
            self.fail(
                observed,
                reason,
                format!("{message}; {field} ({max}) is used up"),
            );
            return;
        }
        let uncharged = match source {
            RuleSource::User(index) if !charged => {
                format!(" (spec.runPolicy.failurePolicy.rules[{index}]: no budget charged)")
            }
            _ => String::new(),
        };
        self.event(
            true,
            "WorkerFailed",
            &format!("{message}; restarting the gang from the latest checkpoint{uncharged}"),
        );
        self.account_attempt_end(false);
        self.set_condition("Running", false, &cause.reason(), &message);
        self.release_gang(observed, self.replicas());
        self.transition(
            Phase::Restarting,
            &cause.reason(),
            "restarting the gang from the latest checkpoint",
        );
    }

    fn budget_exhausted(&self, infra: bool) -> bool {
        let restarts = self.status.restarts.clone().unwrap_or_default();
        if infra {
            restarts.infra > self.policy.max_infra_restarts_or_default()
        } else {
            restarts.app > self.policy.max_app_restarts_or_default()
        }
    }

    /// Deletes the current gang and prepares the next attempt with `world_size` workers.
    fn release_gang(&mut self, observed: &Observed, world_size: u32) {
        self.delete_gracefully(self.current(observed));
        self.new_attempt(world_size);
        self.requeue_in(2.0);
    }

    fn new_attempt(&mut self, world_size: u32) {
        if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "GangDisrupted" && c.status == "True")
        {
            self.set_condition(
                "GangDisrupted",
                false,
                "GangReleased",
                "the disrupted gang was released",
            );
        }
        self.status.attempt = Some(self.attempt() as i32 + 1);
        self.status.attempt_start_time = None;
        let counts = self
            .status
            .workers
            .get_or_insert_with(WorkerCounts::default);
        counts.desired = world_size as i32;
    }

    fn fail(&mut self, observed: &Observed, reason: &str, message: String) {
        if self.phase() == Phase::Running {
            self.account_attempt_end(false);
        }
        self.status.completion_time = Some(Time(self.now));
        self.set_condition("Running", false, reason, &message);
        self.set_condition("Failed", true, reason, &message);
        self.transition(Phase::Failed, reason, &message);
        self.terminal(observed);
    }

    /// Goodput at the end of a Running stretch: with `kept`, all of it was productive (success,
    /// or a suspension that checkpoints); otherwise only the part up to the last checkpoint.
    fn account_attempt_end(&mut self, kept: bool) {
        let Some(since) = self
            .condition_since("Running")
            .filter(|_| self.phase() == Phase::Running)
        else {
            return;
        };
        let total = seconds_between(since, self.now).unwrap_or(0.0);
        if kept {
            self.add_goodput(total, 0.0);
            return;
        }
        let checkpoint = self
            .status
            .checkpoint
            .as_ref()
            .and_then(|c| c.time.as_ref())
            .map(|t| t.0)
            .filter(|t| *t >= since);
        let productive = checkpoint
            .and_then(|c| seconds_between(since, c))
            .unwrap_or(0.0)
            .min(total);
        self.add_goodput(productive, total - productive);
    }

    fn add_goodput(&mut self, productive: f64, lost: f64) {
        let g = self.status.goodput.get_or_insert(GoodputStatus {
            productive_seconds: 0.0,
            lost_seconds: 0.0,
            ratio: 1.0,
        });
        g.productive_seconds += productive.max(0.0);
        g.lost_seconds += lost.max(0.0);
        let total = g.productive_seconds + g.lost_seconds;
        g.ratio = if total > 0.0 {
            g.productive_seconds / total
        } else {
            1.0
        };
    }

    fn condition_reason(&self, kind: &str) -> Option<&str> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.reason.as_str())
    }

    fn condition_since(&self, kind: &str) -> Option<Timestamp> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
            .map(|c| c.last_transition_time.0)
    }

    fn transition(&mut self, phase: Phase, reason: &str, message: &str) {
        if self.status.phase != Some(phase) {
            let warning = matches!(phase, Phase::Failed | Phase::Restarting);
            self.event(
                warning,
                &format!("{phase:?}"),
                &format!("{reason}: {message}"),
            );
        }
        self.status.phase = Some(phase);
        self.status.message = Some(message.to_string());
    }

    fn set_condition(&mut self, kind: &str, status: bool, reason: &str, message: &str) {
        set_condition(
            &mut self.status.conditions,
            kind,
            status,
            reason,
            message,
            self.now,
            self.job.metadata.generation,
        );
    }

    fn event(&mut self, warning: bool, reason: &str, message: &str) {
        self.events.push(Event {
            warning,
            reason: reason.to_string(),
            message: message.to_string(),
        });
    }

    fn requeue_in(&mut self, seconds: f64) {
        let wanted = Duration::from_secs_f64(seconds.clamp(1.0, 86_400.0));
        self.requeue = Some(self.requeue.map_or(wanted, |r| r.min(wanted)));
    }

    fn finish(mut self, observed: &Observed) -> Decision {
        let attempt = self.attempt();
        let current: Vec<&WorkerView> = observed
            .workers
            .iter()
            .filter(|w| w.attempt == attempt)
            .collect();
        let count = |f: &dyn Fn(&WorkerState) -> bool| {
            current.iter().filter(|w| f(&w.state)).count() as i32
        };
        let desired = self.desired() as i32;
        let counts = WorkerCounts {
            desired,
            created: current.len() as i32,
            scheduled: count(&|s| is_scheduled(*s)),
            running: count(&|s| matches!(s, WorkerState::Running { .. })),
            ready: count(&|s| matches!(s, WorkerState::Running { ready: true })),
            succeeded: count(&|s| *s == WorkerState::Succeeded),
            failed: count(&|s| matches!(s, WorkerState::Failed(_))),
        };
        self.status.ready = Some(format!("{}/{desired}", counts.ready));
        self.status.workers = Some(counts);
        if self.status.phase.is_none() {
            self.status.phase = Some(Phase::Pending);
        }
        Decision {
            status: self.status,
            actions: self.actions,
            events: self.events,
            requeue_after: self.requeue,
        }
    }
}

/// Bound to a node (or past that).
fn is_scheduled(state: WorkerState) -> bool {
    !matches!(
        state,
        WorkerState::Pending { scheduled: false } | WorkerState::Gated
    )
}

/// The failure that explains a gang's end: which worker, why, and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GangFailure {
    worker: String,
    cause: FailureCause,
    message: Option<String>,
}

impl GangFailure {
    /// `worker j-worker-1 failed: ExitCode3 (its last error)`.
    fn describe(&self) -> String {
        match &self.message {
            Some(m) => format!(
                "worker {} failed: {} ({m})",
                self.worker,
                self.cause.reason()
            ),
            None => format!("worker {} failed: {}", self.worker, self.cause.reason()),
        }
    }
}

/// The failed worker that explains the gang's failure. The operator deletes the current
/// attempt's workers only after it has moved on to the next attempt, so a current worker being
/// deleted was disrupted (preemption, drain, node loss) or deleted by someone else. A worker that
/// merely lost its peer (exit 4) is a consequence, never the cause while another explanation
/// exists: in order, a failure of its own, a disruption, a worker missing from the running gang
/// (with `desired`), then the lowest rank.
fn first_failure(current: &[&WorkerView], desired: Option<u32>) -> Option<GangFailure> {
    let peer_lost = FailureCause::ExitCode(ferrotrain_crds::env::EXIT_PEER_LOST);
    let failure = |w: &WorkerView, cause| GangFailure {
        worker: w.name.clone(),
        cause,
        message: w.message.clone(),
    };
    let mut failed: Vec<(u8, u32, GangFailure)> = current
        .iter()
        .filter_map(|w| match w.state {
            WorkerState::Failed(cause) if cause == peer_lost => {
                Some((3, w.rank, failure(w, cause)))
            }
            WorkerState::Failed(cause) => Some((0, w.rank, failure(w, cause))),
            WorkerState::Terminating { cause, .. } => Some((
                1,
                w.rank,
                failure(w, cause.unwrap_or(FailureCause::Deleted)),
            )),
            _ => None,
        })
        .collect();
    if let Some(desired) = desired
        && (current.len() as u32) < desired
    {
        let present: Vec<u32> = current.iter().map(|w| w.rank).collect();
        let missing = (0..desired).find(|r| !present.contains(r)).unwrap_or(0);
        failed.push((
            2,
            missing,
            GangFailure {
                worker: format!("rank {missing}"),
                cause: FailureCause::Missing,
                message: None,
            },
        ));
    }
    failed.sort_by_key(|(order, rank, _)| (*order, *rank));
    failed.into_iter().next().map(|(_, _, failure)| failure)
}

/// Sets a condition, keeping lastTransitionTime when the status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let transition = conditions
        .iter()
        .find(|c| c.type_ == kind && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: kind.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: transition,
        observed_generation: generation,
    };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(existing) => *existing = condition,
        None => conditions.push(condition),
    }
}

fn seconds_between(from: Timestamp, to: Timestamp) -> Option<f64> {
    let seconds = to.duration_since(from).as_secs_f64();
    seconds.is_finite().then_some(seconds)
}

#[cfg(test)]
mod tests;
