//! Evaluation on the held-out split, early stopping on its metric, and the progress reports rank
//! 0 sends.

use std::collections::BTreeMap;

use ferrotrain_crds::progress::{CheckpointReport, ProgressReport, RejectedCheckpoints};
use ferrotrain_crds::{EarlyStoppingMode, Evaluation, TrainerSpec};

use crate::checkpoint::layout::TrainingState;
use crate::checkpoint::store::Committed;
use crate::data::load::Splits;
use crate::dist::ring::Ring;
use crate::engine::{self, Engine};
use crate::nn::model::BatchStats;
use crate::train::job::TrainError;

/// Rows per evaluation chunk.
pub(crate) const EVAL_CHUNK: usize = 1000;

/// Loss and accuracy on the evaluation split, each rank taking every world-th row.
pub(crate) fn evaluate(
    engine: &mut dyn Engine,
    params: &[f32],
    data: &Splits,
    ring: &mut Ring,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let (rank, world) = (ring.rank() as usize, ring.world_size() as usize);
    let rows: Vec<usize> = (rank..data.eval.len()).step_by(world).collect();
    let mut total = BatchStats::default();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for chunk in rows.chunks(EVAL_CHUNK) {
        data.eval.gather(chunk, &mut x, &mut y);
        let s = engine::guarded(|| engine.evaluate(params, &x, &y))?;
        total.loss_sum += s.loss_sum;
        total.correct += s.correct;
        total.count += s.count;
    }
    let mut sums = [
        total.loss_sum as f32,
        total.correct as f32,
        total.count as f32,
    ];
    ring.all_reduce_sum(&mut sums)?;
    let count = f64::from(sums[2]).max(1.0);
    Ok(BTreeMap::from([
        ("valLoss".to_string(), f64::from(sums[0]) / count),
        ("valAccuracy".to_string(), f64::from(sums[1]) / count),
    ]))
}

/// Records an evaluation; returns whether training should stop.
pub(crate) fn update_early_stopping(
    spec: &TrainerSpec,
    state: &mut TrainingState,
    metrics: &BTreeMap<String, f64>,
) -> bool {
    let Some(early) = &spec.early_stopping else {
        return false;
    };
    let key = match early.metric {
        ferrotrain_crds::EarlyStoppingMetric::ValLoss => "valLoss",
        ferrotrain_crds::EarlyStoppingMetric::ValAccuracy => "valAccuracy",
    };
    let Some(&value) = metrics.get(key) else {
        return false;
    };
    let delta = early.min_delta_or_default();
    let improved = match (state.best_metric, early.mode_or_default()) {
        (None, _) => true,
        (Some(best), EarlyStoppingMode::Min) => value < best - delta,
        (Some(best), EarlyStoppingMode::Max) => value > best + delta,
    };
    if improved {
        state.best_metric = Some(value);
        state.evals_without_improvement = 0;
    } else {
        state.evals_without_improvement += 1;
    }
    state.evals_without_improvement >= early.patience_or_default().max(1) as u32
}

/// What an attempt's reports carry besides the loop state.
pub(crate) struct Reported {
    pub(crate) attempt: u32,
    /// Checkpoints its resume passed over: every report of the attempt names them.
    pub(crate) rejected_checkpoints: Option<RejectedCheckpoints>,
    /// Its latest evaluations, oldest first.
    pub(crate) evaluations: std::collections::VecDeque<Evaluation>,
    /// Seconds the latest step took.
    pub(crate) step_seconds: Option<f64>,
}

pub(crate) fn progress(
    reported: &Reported,
    state: &TrainingState,
    total_steps: u64,
    samples: u64,
    seconds: f64,
    checkpoint: Option<&Committed>,
    done: bool,
) -> ProgressReport {
    ProgressReport {
        attempt: reported.attempt,
        world_size: state.world_size,
        step: state.step,
        total_steps,
        epoch: state.epoch,
        loss: state.loss,
        metrics: state.metrics.clone(),
        samples_per_second: (seconds > 0.0).then(|| samples as f64 / seconds),
        step_seconds: reported.step_seconds,
        checkpoint: checkpoint.map(|c| CheckpointReport {
            step: c.step,
            uri: c.manifest_uri.clone(),
            unix_ms: c.unix_ms,
        }),
        done,
        rejected_checkpoints: reported.rejected_checkpoints.clone(),
        evaluations: reported.evaluations.iter().cloned().collect(),
        output: Vec::new(),
    }
}
