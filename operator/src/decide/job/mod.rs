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

mod decision;
mod ending;
mod failures;
mod gang;
mod observed;
mod running;
#[cfg(test)]
mod tests;

pub use decision::{Action, Decision, Event};
pub use observed::{FailureCause, Observed, StuckReason, WorkerState, WorkerView};

use std::time::Duration;

use ferrotrain_crds::{
    Phase, RestartCounts, RunPolicy, TrainingJob, TrainingJobStatus, WorkerCounts,
};
use jiff::Timestamp;

use crate::decide::status::{seconds_between, set_condition};

/// Decides what to do next. Pure: no I/O, no clock.
pub fn decide(job: &TrainingJob, observed: &Observed, now: Timestamp) -> Decision {
    let policy = job.spec.run_policy.clone().unwrap_or_default();
    let mut d = Decider {
        job,
        policy,
        now,
        last_report: observed.last_report,
        step_seconds: observed.step_seconds,
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
    /// When the operator last received a progress report (see [`Observed::last_report`]).
    last_report: Option<Timestamp>,
    /// The measured median step time (see [`Observed::step_seconds`]).
    step_seconds: Option<f64>,
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
            Phase::Pending | Phase::Restarting if !observed.name_conflicts.is_empty() => {
                self.wait_for_names(&observed.name_conflicts)
            }
            Phase::Pending | Phase::Restarting => self.start_gang(observed),
            Phase::Scheduling => self.scheduling(observed),
            Phase::Running => self.running(observed),
            Phase::Suspended | Phase::Succeeded | Phase::Failed => {}
        }
    }

    /// Another owner holds a name the job needs: nothing is created, changed or deleted until
    /// the name is free (a job never adopts or overwrites what it does not control).
    fn wait_for_names(&mut self, conflicts: &[String]) {
        let message = format!(
            "{} exists and is not controlled by this TrainingJob; the job waits until it is \
             removed (or create the job under another name)",
            conflicts.join(", ")
        );
        if self.condition_reason("WorkersCreated") != Some("NameConflict") {
            self.event(true, "NameConflict", &message);
        }
        self.set_condition("WorkersCreated", false, "NameConflict", &message);
        self.status.message = Some(message);
        self.requeue_in(10.0);
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
            trial: None,
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
            scheduled: count(&|s| s.is_scheduled()),
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
