//! What the state machine sees of a job's workers, pods or processes alike: each worker's state
//! and, when it ended badly, why.

use ferrotrain_crds::FailureReason;
use ferrotrain_crds::defaults::Failure;
use jiff::Timestamp;

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
    /// Killed for exceeding its memory limit (the kubelet's reason OOMKilled).
    OomKilled,
    /// The trainer stopped on SIGTERM after committing a checkpoint (exit 75).
    PreemptedAfterCheckpoint,
    /// The worker vanished (deleted by someone else).
    Missing,
    /// Someone other than the operator deleted the worker (no disruption reason given).
    Deleted,
    /// Killed by this signal without an OOM kill reported: a local process (for example by the
    /// kernel's OOM killer, which a process runner cannot tell apart), or a container that exited
    /// 137 without the kubelet's OOMKilled (a SIGKILL from the runtime or from someone on the node).
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

impl WorkerState {
    /// Bound to a node (or past that).
    pub fn is_scheduled(self) -> bool {
        !matches!(
            self,
            WorkerState::Pending { scheduled: false } | WorkerState::Gated
        )
    }
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Workers of any attempt.
    pub workers: Vec<WorkerView>,
    /// Objects the job would create under names that something else holds (kind and
    /// namespace/name, for example "Service team-a/web"): the job touches none of them.
    pub name_conflicts: Vec<String>,
    /// When the operator last received a progress report of the current attempt (kept in
    /// memory; the written status lags it); for a replica that has led for less time than that
    /// silence, when it became leader. `None`: no report seen.
    pub last_report: Option<Timestamp>,
    /// The median seconds per step of the current attempt, measured by whoever receives its
    /// progress reports; `None` until measured. Sets the default progress deadline.
    pub step_seconds: Option<f64>,
}
