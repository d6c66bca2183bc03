//! Stopping workers and ending a job: deleting old attempts' workers, force-deleting pods stuck on
//! a dead node, suspension, failure, and what a finished job keeps (cleanPodPolicy, TTL).

use std::time::Duration;

use ferrotrain_crds::{CleanPodPolicy, Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Decider;
use super::decision::Action;
use super::observed::{Observed, WorkerState, WorkerView};
use crate::decide::status::seconds_between;

/// A pod stuck Terminating on a NotReady node is force-deleted after this long.
pub const FORCE_DELETE_AFTER: Duration = Duration::from_secs(300);

impl Decider<'_> {
    /// Old attempts' workers never run alongside the current gang.
    pub(super) fn delete_stale(&mut self, observed: &Observed) {
        let attempt = self.attempt();
        let stale: Vec<&WorkerView> = observed
            .workers
            .iter()
            .filter(|w| w.attempt != attempt)
            .collect();
        self.delete_gracefully(stale);
    }

    /// Deletes workers (SIGTERM first) unless they are already being deleted.
    pub(super) fn delete_gracefully(&mut self, workers: Vec<&WorkerView>) {
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
    pub(super) fn force_delete_stuck(&mut self, observed: &Observed) {
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

    pub(super) fn terminal(&mut self, observed: &Observed) {
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
    pub(super) fn clean_pods(&mut self, observed: &Observed) {
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

    pub(super) fn suspend(&mut self, observed: &Observed) {
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

    pub(super) fn fail(&mut self, observed: &Observed, reason: &str, message: String) {
        if self.phase() == Phase::Running {
            self.account_attempt_end(false);
        }
        self.status.completion_time = Some(Time(self.now));
        self.set_condition("Running", false, reason, &message);
        self.set_condition("Failed", true, reason, &message);
        self.transition(Phase::Failed, reason, &message);
        self.terminal(observed);
    }
}
