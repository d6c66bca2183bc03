//! What the state machine decides: the next status, the changes to make, the events to record and
//! when to look again.

use std::time::Duration;

use ferrotrain_crds::TrainingJobStatus;

/// A change to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the Secret of `attempt` (its progress token and gang key) unless the job has it
    /// already. (On a cluster the headless Service and NetworkPolicy are created before the
    /// decision, whose `Observed::name_conflicts` says whether their names are the job's.)
    EnsureSupport {
        /// The attempt the Secret is for.
        attempt: u32,
    },
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
    /// The sweep trial (a TrainingJob's name) the event is about: its events form a series of
    /// their own, apart from other trials' events with the same reason.
    pub trial: Option<String>,
}

impl Event {
    /// A routine phase change (a gang created, a gang running): shown where the job runs
    /// locally, not recorded on a cluster, where the phase says it.
    pub fn is_routine(&self) -> bool {
        !self.warning && matches!(self.reason.as_str(), "Scheduling" | "Running")
    }

    /// An event about one of a sweep's trials.
    pub fn about_trial(warning: bool, reason: &str, message: &str, trial: &str) -> Self {
        Self {
            warning,
            reason: reason.into(),
            message: message.into(),
            trial: Some(trial.into()),
        }
    }
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
