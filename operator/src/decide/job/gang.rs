//! The gang: creating an attempt's workers, waiting until every one of them runs (never Running
//! with a partial gang), the gang timeout with its backoff or an elastic resize, and releasing a
//! gang for the next attempt.

use std::time::Duration;

use ferrotrain_crds::{Phase, RestartCounts, WorkerCounts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Decider;
use super::decision::Action;
use super::failures::first_failure;
use super::observed::{Observed, WorkerState};
use crate::decide::status::seconds_between;

/// First backoff after a gang-schedule timeout; doubles up to [`MAX_GANG_BACKOFF`].
pub const GANG_BACKOFF: Duration = Duration::from_secs(10);
/// Longest backoff between gang attempts.
pub const MAX_GANG_BACKOFF: Duration = Duration::from_secs(300);

impl Decider<'_> {
    /// Creates the gang once every older worker is gone (worker names repeat across attempts).
    pub(super) fn start_gang(&mut self, observed: &Observed) {
        self.actions.push(Action::EnsureSupport {
            attempt: self.attempt(),
        });
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

    pub(super) fn scheduling(&mut self, observed: &Observed) {
        let current = self.current(observed);
        // Workers not observed yet are still being created, not missing.
        if let Some(failed) = first_failure(&current, None, &[]) {
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
            // Waiting in a queue is not failing to schedule: no gang timeout until admitted. But
            // a queue admits a pod group whole or not at all: an elastic job that has waited a
            // gang timeout asks again at its minimum size, which may fit.
            let queued = self
                .status
                .attempt_start_time
                .as_ref()
                .and_then(|t| seconds_between(t.0, self.now))
                .unwrap_or(0.0);
            let min = self.job.spec.workers.min_replicas.map(|m| m.max(1) as u32);
            if let Some(min) = min
                && min < self.desired()
                && queued >= timeout
            {
                let message = format!(
                    "the queue did not admit {} workers in {timeout}s; asking it for {min} (minReplicas)",
                    self.desired()
                );
                self.event(false, "ElasticResize", &message);
                self.add_goodput(0.0, queued);
                self.release_gang(observed, min);
                self.transition(
                    Phase::Restarting,
                    "ElasticResize",
                    &format!("restarting with world size {min}"),
                );
                return;
            }
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
        } else if self.status.attempt_start_time.is_none() {
            // The write that recorded the attempt's start was lost: counting from now delays
            // the timeout by one look at most; waiting for a start that never comes would never
            // time out.
            self.status.attempt_start_time = Some(Time(self.now));
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
        let scheduled = current.iter().filter(|w| w.state.is_scheduled()).count() as u32;
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

    /// Deletes the current gang and prepares the next attempt with `world_size` workers.
    pub(super) fn release_gang(&mut self, observed: &Observed, world_size: u32) {
        self.delete_gracefully(self.current(observed));
        self.new_attempt(world_size);
        self.requeue_in(2.0);
    }

    pub(super) fn new_attempt(&mut self, world_size: u32) {
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
        self.status.completed_ranks.clear();
        let counts = self
            .status
            .workers
            .get_or_insert_with(WorkerCounts::default);
        counts.desired = world_size as i32;
    }
}
