//! A worker's failure: which worker explains the gang's end, the short wait for the cause of a
//! peer-lost exit, the failure policy's verdict, and the restart budgets it is charged to.

use std::time::Duration;

use ferrotrain_crds::defaults::RuleSource;
use ferrotrain_crds::{FailureAction, Phase, RestartCounts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Decider;
use super::observed::{FailureCause, Observed, WorkerState, WorkerView};
use crate::decide::status::seconds_between;

/// How long a worker's "peer lost" exit waits for the failure that caused it to be reported.
pub const PEER_LOST_GRACE: Duration = Duration::from_secs(30);

/// An attempt that ran this long before failing was stable: the backoff starts over.
pub const STABLE_RUN: Duration = Duration::from_secs(600);

/// The wait before the attempt after the second failure in a row; it doubles with each further
/// one, up to [`MAX_FAILURE_BACKOFF`] (the Job controller's pod-failure backoff).
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// The longest wait between failed attempts.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(300);

impl Decider<'_> {
    /// A worker that exited because it lost its peer is a consequence, and kubelets report pods
    /// independently: the victim's own failure may show a moment later. While another worker of
    /// the gang still runs, wait up to [`PEER_LOST_GRACE`] for it (condition `GangDisrupted`).
    pub(super) fn wait_for_cause(&mut self, current: &[&WorkerView], cause: FailureCause) -> bool {
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

    pub(super) fn restart_after_failure(&mut self, observed: &Observed, failure: GangFailure) {
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
            // A hang is a stall found by the gang instead of the progress deadline.
            if failure.is_hang() {
                restarts.stall += 1;
            }
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
        let backoff = (!cause.is_preemption())
            .then(|| self.failure_backoff())
            .flatten();
        self.account_attempt_end(false);
        let next = match backoff {
            Some(wait) => {
                self.status.not_before =
                    Some(Time(self.now + jiff::SignedDuration::from_secs_f64(wait)));
                format!("; next attempt in {wait}s (failures in a row back off)")
            }
            None => String::new(),
        };
        self.set_condition(
            "Running",
            false,
            &cause.reason(),
            &format!("{message}{next}"),
        );
        self.release_gang(observed, self.replicas());
        self.transition(
            Phase::Restarting,
            &cause.reason(),
            &format!("restarting the gang from the latest checkpoint{next}"),
        );
    }

    /// Counts this failure in the run of quick failures and returns the wait before the next
    /// attempt: none for the first, then 10 s doubling up to 5 min. An attempt that ran for
    /// [`STABLE_RUN`] starts the count over.
    fn failure_backoff(&mut self) -> Option<f64> {
        let ran = self
            .status
            .attempt_start_time
            .as_ref()
            .and_then(|t| seconds_between(t.0, self.now));
        let restarts = self
            .status
            .restarts
            .get_or_insert_with(RestartCounts::default);
        if ran.is_some_and(|ran| ran >= STABLE_RUN.as_secs_f64()) {
            restarts.consecutive_failures = 0;
        }
        restarts.consecutive_failures += 1;
        let earlier = restarts.consecutive_failures - 1;
        (earlier > 0).then(|| {
            let wait = FAILURE_BACKOFF.as_secs_f64() * 2f64.powi((earlier - 1).clamp(0, 16));
            wait.min(MAX_FAILURE_BACKOFF.as_secs_f64())
        })
    }

    pub(super) fn budget_exhausted(&self, infra: bool) -> bool {
        let restarts = self.status.restarts.clone().unwrap_or_default();
        if infra {
            restarts.infra > self.policy.max_infra_restarts_or_default()
        } else {
            restarts.app > self.policy.max_app_restarts_or_default()
        }
    }
}

/// The failure that explains a gang's end: which worker, why, and what it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GangFailure {
    worker: String,
    pub(super) cause: FailureCause,
    message: Option<String>,
    /// The worker did not fail: it stopped answering, and this is how its peer gave up on it.
    hung: Option<Box<GangFailure>>,
}
impl GangFailure {
    /// When every other worker lost its peer and this one still runs once the grace is over, it
    /// is the one that stopped answering (frozen, deadlocked, on a partitioned node): the failure
    /// is its own, not that of the peer that timed out on it.
    pub(super) fn blame_the_silent(self, current: &[&WorkerView]) -> Self {
        if self.cause != FailureCause::ExitCode(ferrotrain_crds::env::EXIT_PEER_LOST) {
            return self;
        }
        let silent = current
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Running { .. }))
            .min_by_key(|w| w.rank);
        match silent {
            Some(w) => GangFailure {
                worker: w.name.clone(),
                cause: self.cause,
                message: None,
                hung: Some(Box::new(self)),
            },
            None => self,
        }
    }

    /// Whether the failure is a worker that stopped answering.
    pub(super) fn is_hang(&self) -> bool {
        self.hung.is_some()
    }

    /// `worker j-worker-1 failed: ExitCode3 (its last error)`.
    fn describe(&self) -> String {
        if let Some(peer) = &self.hung {
            return format!(
                "worker {} stopped answering: its peers timed out waiting for it ({})",
                self.worker,
                peer.describe()
            );
        }
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
/// (with `desired`; ranks in `completed` finished and are not missing), then the lowest rank.
pub(super) fn first_failure(
    current: &[&WorkerView],
    desired: Option<u32>,
    completed: &[i32],
) -> Option<GangFailure> {
    let peer_lost = FailureCause::ExitCode(ferrotrain_crds::env::EXIT_PEER_LOST);
    let failure = |w: &WorkerView, cause| GangFailure {
        worker: w.name.clone(),
        cause,
        message: w.message.clone(),
        hung: None,
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
    let present: Vec<u32> = current.iter().map(|w| w.rank).collect();
    let missing = desired.and_then(|desired| {
        (0..desired).find(|r| !present.contains(r) && !completed.contains(&(*r as i32)))
    });
    if let Some(missing) = missing {
        failed.push((
            2,
            missing,
            GangFailure {
                worker: format!("rank {missing}"),
                cause: FailureCause::Missing,
                message: None,
                hung: None,
            },
        ));
    }
    failed.sort_by_key(|(order, rank, _)| (*order, *rank));
    failed.into_iter().next().map(|(_, _, failure)| failure)
}
