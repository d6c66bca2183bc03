//! A running gang: completion, stall detection against the progress deadline, and goodput (the
//! productive and the lost seconds of each attempt).

use ferrotrain_crds::{GoodputStatus, Phase, RestartCounts};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Decider;
use super::failures::first_failure;
use super::observed::{Observed, WorkerState};
use crate::decide::status::seconds_between;

/// The default progress deadline is this many median step times…
pub const DEFAULT_DEADLINE_STEP_TIMES: f64 = 10.0;
/// …and never shorter than this (seconds): a slow evaluation or checkpoint is not a stall.
pub const DEFAULT_DEADLINE_MIN_SECONDS: f64 = 60.0;

/// The progress deadline that applies: `progressDeadlineSeconds` when set; otherwise, once the
/// job's step time is measured, [`DEFAULT_DEADLINE_STEP_TIMES`] × the median step time, at least
/// [`DEFAULT_DEADLINE_MIN_SECONDS`]. Returns the seconds and how they were chosen.
pub fn progress_deadline(
    explicit: Option<i64>,
    step_seconds: Option<f64>,
) -> Option<(f64, String)> {
    if let Some(seconds) = explicit {
        return Some((seconds as f64, format!("progressDeadlineSeconds {seconds}")));
    }
    let step = step_seconds.filter(|s| s.is_finite() && *s >= 0.0)?;
    let seconds = (DEFAULT_DEADLINE_STEP_TIMES * step)
        .max(DEFAULT_DEADLINE_MIN_SECONDS)
        .ceil();
    Some((
        seconds,
        format!(
            "default deadline {seconds:.0}s: {DEFAULT_DEADLINE_STEP_TIMES:.0} × the median step time of {}, at least {DEFAULT_DEADLINE_MIN_SECONDS:.0}s",
            step_time(step)
        ),
    ))
}

/// A step time as people read it: milliseconds under a second.
fn step_time(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1}s")
    }
}

impl Decider<'_> {
    pub(super) fn running(&mut self, observed: &Observed) {
        let current = self.current(observed);
        // A rank that exited 0 is done for this attempt, whatever happens to its pod later.
        for worker in current.iter().filter(|w| w.state == WorkerState::Succeeded) {
            let rank = worker.rank as i32;
            if !self.status.completed_ranks.contains(&rank) {
                self.status.completed_ranks.push(rank);
                self.status.completed_ranks.sort_unstable();
            }
        }
        let completed = self.status.completed_ranks.clone();
        let current: Vec<_> = current
            .into_iter()
            .filter(|w| !completed.contains(&(w.rank as i32)) || w.state == WorkerState::Succeeded)
            .collect();
        if let Some(failed) = first_failure(&current, Some(self.desired()), &completed) {
            if !self.wait_for_cause(&current, failed.cause) {
                let failed = failed.blame_the_silent(&current);
                self.restart_after_failure(observed, failed);
            }
            return;
        }
        let desired = self.desired() as usize;
        if completed.len() >= desired {
            self.account_attempt_end(true);
            self.status.completion_time = Some(Time(self.now));
            self.set_condition("Running", false, "Completed", "training finished");
            self.set_condition("Succeeded", true, "Completed", "every worker exited 0");
            self.transition(Phase::Succeeded, "Succeeded", "training finished");
            self.terminal(observed);
            return;
        }
        if let Some((deadline, rule)) = self.progress_deadline() {
            let last = self.last_progress();
            if let Some(silent) = last.and_then(|t| seconds_between(t, self.now))
                && silent >= deadline
            {
                let restarts = self
                    .status
                    .restarts
                    .get_or_insert_with(RestartCounts::default);
                restarts.stall += 1;
                restarts.app += 1;
                let message = format!("no progress for {silent:.0}s ({rule})");
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

    /// When progress was last seen: the latest report written or received (the write lags),
    /// or the start of this Running stretch.
    pub(super) fn last_progress(&self) -> Option<Timestamp> {
        let written = self
            .status
            .progress
            .as_ref()
            .and_then(|p| p.last_update_time.as_ref())
            .map(|t| t.0);
        [written, self.last_report, self.condition_since("Running")]
            .into_iter()
            .flatten()
            .max()
    }

    fn progress_deadline(&self) -> Option<(f64, String)> {
        progress_deadline(self.policy.progress_deadline_seconds, self.step_seconds)
    }

    pub(super) fn stall_requeue(&mut self) {
        if let Some((deadline, _)) = self.progress_deadline() {
            let silent = self
                .last_progress()
                .and_then(|t| seconds_between(t, self.now))
                .unwrap_or(0.0);
            self.requeue_in((deadline - silent).max(1.0));
        }
    }

    /// Goodput at the end of a Running stretch: with `kept`, all of it was productive (success,
    /// or a suspension that checkpoints); otherwise only the part up to the last checkpoint.
    pub(super) fn account_attempt_end(&mut self, kept: bool) {
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

    pub(super) fn add_goodput(&mut self, productive: f64, lost: f64) {
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
}
