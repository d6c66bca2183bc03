//! One trial of a local sweep: the job that runs it on a thread of its own, and what it reported.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferrotrain_crds::{Phase, TrainingJobStatus};

use crate::decide::sweep::TrialObservation;
use crate::local::error::RunError;
use crate::local::runner::RunOutcome;

/// A trial running in this process.
pub(crate) struct LocalTrial {
    pub(crate) interrupts: Arc<AtomicUsize>,
    pub(crate) status: Arc<Mutex<TrainingJobStatus>>,
    pub(crate) handle: Option<JoinHandle<Result<RunOutcome, RunError>>>,
    /// Its end: the final status, or why it could not run.
    pub(crate) ended: Option<Result<RunOutcome, String>>,
    /// Total steps of one complete trial, once reported.
    pub(crate) total_steps: Option<i64>,
    /// Every evaluation seen: step → objective.
    pub(crate) curve: BTreeMap<i64, f64>,
}

impl LocalTrial {
    pub(crate) fn observe(&mut self, key: &str) -> TrialObservation {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = self.handle.take()
        {
            self.ended = Some(match handle.join() {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the trial's runner panicked".to_string()),
            });
        }
        let (status, phase_override, message) = match &self.ended {
            None => (
                self.status.lock().map(|s| s.clone()).unwrap_or_default(),
                None,
                None,
            ),
            Some(Ok(
                RunOutcome::Succeeded(status)
                | RunOutcome::Failed(status)
                | RunOutcome::Suspended(status),
            )) => ((**status).clone(), None, None),
            Some(Err(message)) => (
                TrainingJobStatus::default(),
                Some(Phase::Failed),
                Some(message.clone()),
            ),
        };
        let progress = status.progress.clone().unwrap_or_default();
        if let Some(total) = progress.total_steps {
            self.total_steps = Some(total);
        }
        for evaluation in &progress.evaluations {
            if let Some(value) = evaluation.metrics.get(key) {
                self.curve.insert(evaluation.step, *value);
            }
        }
        TrialObservation {
            phase: phase_override.or(status.phase),
            step: progress.step,
            total_steps: progress.total_steps,
            completed_at: status.completion_time.map(|t| t.0),
            metrics: progress.metrics.clone(),
            evaluations: progress.evaluations.clone(),
            checkpoint: status.checkpoint.as_ref().and_then(|c| c.uri.clone()),
            message: message.or(status.message),
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.handle.is_some()
    }
}
