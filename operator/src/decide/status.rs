//! Helpers for status fields shared by the decisions: conditions with their transition times, and
//! the seconds between two instants.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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

/// The job's current gang attempt (from 1; 1 before any status).
pub fn current_attempt(job: &ferrotrain_crds::TrainingJob) -> u32 {
    job.status
        .as_ref()
        .and_then(|s| s.attempt)
        .unwrap_or(1)
        .max(1) as u32
}

/// Seconds from `from` to `to` (negative when `to` is earlier); `None` when not finite.
pub fn seconds_between(from: Timestamp, to: Timestamp) -> Option<f64> {
    let seconds = to.duration_since(from).as_secs_f64();
    seconds.is_finite().then_some(seconds)
}
