//! The progress report rank 0 POSTs to the operator (or the local runner): one JSON object per
//! report, with the job's bearer token. The operator validates it against this type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest report body the operator accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Evaluations a report carries, newest last.
pub const MAX_REPORTED_EVALUATIONS: usize = 16;
/// Metric names a report (and each of its evaluations) may carry: they become status fields and
/// Prometheus series, so a pod must not be able to grow them without bound.
pub const MAX_METRICS: usize = 32;
/// Longest metric name, in bytes; names use letters, digits and `_ . - /`.
pub const MAX_METRIC_NAME_BYTES: usize = 63;

/// Whether a set of metric names stays within [`MAX_METRICS`], [`MAX_METRIC_NAME_BYTES`] and the
/// name alphabet, with finite values.
pub fn metrics_within_bounds<'a>(
    metrics: impl ExactSizeIterator<Item = (&'a String, &'a f64)>,
) -> bool {
    metrics.len() <= MAX_METRICS
        && metrics.into_iter().all(|(name, value)| {
            !name.is_empty()
                && name.len() <= MAX_METRIC_NAME_BYTES
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
                && value.is_finite()
        })
}

/// One progress report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProgressReport {
    /// Gang attempt that sent it; reports of older attempts are ignored.
    pub attempt: u32,
    /// World size of that attempt.
    pub world_size: u32,
    /// Global optimiser step.
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Latest training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Latest evaluation metrics (valLoss, valAccuracy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// The most recent evaluations with their steps, oldest first (at most
    /// [`MAX_REPORTED_EVALUATIONS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluations: Vec<crate::status::Evaluation>,
    /// Training throughput the trainer measured (the operator computes its own as well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Seconds the latest step took (the first step of an attempt included): until the operator
    /// has measured steps between reports, it sets the default progress deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_seconds: Option<f64>,
    /// Latest committed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointReport>,
    /// Whether training has finished (the last report of a successful run).
    #[serde(default)]
    pub done: bool,
    /// Checkpoints that failed verification when this attempt looked for one to resume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_checkpoints: Option<RejectedCheckpoints>,
    /// The files of spec.output, written before the last report of a successful run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<crate::output::OutputFile>,
}

/// Whether reported output files are files an output may hold, each once.
pub fn output_within_bounds(files: &[crate::output::OutputFile]) -> bool {
    let known = crate::output::OutputSpec::known_files();
    files.len() <= known.len()
        && files.iter().enumerate().all(|(i, f)| {
            known.contains(&f.name.as_str()) && !files[..i].iter().any(|g| g.name == f.name)
        })
}

/// Checkpoints a resume had to pass over because their data did not verify.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejectedCheckpoints {
    /// How many.
    pub count: u32,
    /// Step of the newest one.
    pub newest_step: u64,
    /// Why the newest one was rejected.
    pub problem: String,
    /// Step the attempt resumed from instead; none: it started from step 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
}

impl RejectedCheckpoints {
    /// One line for status and events.
    pub fn describe(&self) -> String {
        let what = if self.count == 1 {
            "1 checkpoint".to_string()
        } else {
            format!("{} checkpoints", self.count)
        };
        let then = match self.resumed_from {
            Some(step) => format!("resumed from the older checkpoint of step {step}"),
            None => "training restarted from step 0".to_string(),
        };
        format!(
            "{what} failed verification (newest, step {}: {}); {then}",
            self.newest_step, self.problem
        )
    }
}

/// A committed checkpoint, as reported.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointReport {
    /// Step it captures.
    pub step: u64,
    /// Manifest URI.
    pub uri: String,
    /// Commit time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}
