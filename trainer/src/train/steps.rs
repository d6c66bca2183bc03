//! The training loop of one rank: synchronous data parallelism with a ring all-reduce every step,
//! evaluation, early stopping, asynchronous checkpoints and a gang-wide stop on SIGTERM.
//!
//! Asynchronous mode is local SGD with bounded staleness: every rank applies its own gradients
//! without waiting for the others, and parameters are averaged over the ring every
//! `maxStaleness + 1` steps, so no rank's model is more than `maxStaleness` local updates away from
//! the last consensus. Evaluation, checkpoints and the end of the run happen on averaged
//! parameters. Optimiser moments stay local.
//!
//! Determinism: parameters start from the seed; the epoch permutation, the dropout masks and the
//! batch of every (step, rank) are derived from (seed, epoch, step, rank) rather than carried
//! forward, and the all-reduce adds in a fixed order. A run resumed from a checkpoint therefore
//! computes exactly what the uninterrupted run computes, bit for bit, at the same world size.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrotrain_crds::progress::{
    CheckpointReport, MAX_REPORTED_EVALUATIONS, ProgressReport, RejectedCheckpoints,
};
use ferrotrain_crds::{EarlyStoppingMode, Evaluation, GradientCompression, ModeKind, TrainerSpec};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::checkpoint::layout::{Snapshot, TrainingState};
use crate::checkpoint::store::{CheckpointError, CheckpointStore, Committed};
use crate::data::load::Splits;
use crate::dist::ring::Ring;
use crate::dist::wire::CommError;
use crate::engine::device::Compute;
use crate::engine::{self, Engine, EngineError};
use crate::nn::model::{BatchStats, ModelError, Network};
use crate::optim::{Optimizer, clip_grad_norm, learning_rate};
use crate::progress::Reporter;
use crate::rng::{Rng, Stream};

/// Values appended to the gradient buffer and summed with it: stop flag, loss sum, correct, count,
/// and the number of ranks whose own gradients overflowed (fp16 in asynchronous mode).
const CONTROL: usize = 5;
/// Rows per evaluation chunk.
const EVAL_CHUNK: usize = 1000;

/// Checkpoint cadence and destination.
pub struct CheckpointPlan {
    /// The store.
    pub store: CheckpointStore,
    /// Every N steps.
    pub every_steps: Option<u64>,
    /// At least every N seconds.
    pub every_seconds: Option<u64>,
    /// Whether to resume from the newest checkpoint.
    pub resume: bool,
}

/// A warm start (`spec.trainer.initFrom`): where its checkpoint is and what to take from it.
pub struct WarmStart {
    /// The checkpoint location.
    pub store: CheckpointStore,
    /// The manifest, when the URI names one; else the newest that verifies.
    pub manifest_key: Option<String>,
    /// The URI as written, for messages.
    pub uri: String,
    /// Start the optimiser afresh.
    pub reset_optimizer: bool,
    /// Continue the checkpoint's step count and data position.
    pub continue_steps: bool,
}

/// Everything one rank needs to train.
pub struct Job {
    /// What to train.
    pub spec: TrainerSpec,
    /// Gang attempt (reported with progress).
    pub attempt: u32,
    /// Checkpoints, if any.
    pub checkpoint: Option<CheckpointPlan>,
    /// Where to start from when the job has no checkpoint of its own yet.
    pub warm_start: Option<WarmStart>,
    /// Progress reports (rank 0).
    pub reporter: Option<Reporter>,
    /// Minimum seconds between progress reports.
    pub report_every: Duration,
    /// Set by the SIGTERM handler.
    pub stop: Arc<AtomicBool>,
    /// Behave as if SIGTERM arrived right after this step (tests and drills).
    pub stop_after_step: Option<u64>,
    /// Behave as if the compute device failed in the step after this one (tests and drills).
    pub fail_after_step: Option<u64>,
    /// How long the emergency checkpoint may take.
    pub grace: Duration,
    /// The device that computes forward and backward passes.
    pub compute: Compute,
    /// Compute threads of this rank; 0 takes `RAYON_NUM_THREADS`, else every CPU the process may
    /// use (its cgroup's CPU limit in a pod).
    pub threads: usize,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// All epochs or steps done, or early stopping triggered.
    Completed(Summary),
    /// Stopped on request after committing an emergency checkpoint (rank 0) or with the gang.
    Preempted(Summary),
}

/// The final state of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Global step reached.
    pub step: u64,
    /// Epoch reached.
    pub epoch: u64,
    /// Total steps planned.
    pub total_steps: u64,
    /// Last training loss.
    pub loss: Option<f64>,
    /// Last evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Training samples per second across the gang in this attempt.
    pub samples_per_second: f64,
    /// Step this attempt started from.
    pub resumed_from: Option<u64>,
    /// Checkpoints the resume passed over because they did not verify (rank 0).
    pub rejected_checkpoints: Option<RejectedCheckpoints>,
    /// Whether early stopping ended the run.
    pub early_stopped: bool,
    /// Latest committed checkpoint (rank 0).
    pub checkpoint: Option<Committed>,
    /// Checkpoint commits and the time the loop spent waiting on them.
    pub checkpoint_stats: CheckpointStats,
    /// Wall time of the loop.
    pub wall_seconds: f64,
    /// Final parameters.
    pub params: Vec<f32>,
}

/// Cost of checkpointing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints committed.
    pub committed: u64,
    /// Seconds the loop spent on periodic checkpoints (snapshot copies, upload bookkeeping).
    pub stall_seconds: f64,
    /// Seconds spent on the final or emergency checkpoint, which is written synchronously.
    pub final_seconds: f64,
    /// Seconds uploads took in the background.
    pub upload_seconds: f64,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model does not fit the data.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A peer was lost.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// Checkpoint storage failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The configuration cannot work with this data.
    #[error("{0}")]
    Config(String),
    /// The compute device failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The compute threads could not start.
    #[error("cannot start the compute threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// The loss stopped being a number: training diverged, and more steps cannot bring it back.
    #[error(
        "the training loss is {loss} at step {step}: training diverged; lower spec.trainer.optimizer.lr or set gradClipNorm"
    )]
    Diverged {
        /// The step whose loss was not finite.
        step: u64,
        /// The loss (NaN or infinite).
        loss: f64,
    },
}

/// An upload in progress: its step, start time and task.
type Upload = (u64, Instant, JoinHandle<Result<Committed, CheckpointError>>);

/// Background checkpoint uploads, at most one in flight.
struct Uploader {
    runtime: Handle,
    in_flight: Option<Upload>,
    latest: Option<Committed>,
    stats: CheckpointStats,
}

impl Uploader {
    fn busy(&mut self) -> Result<bool, CheckpointError> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(_, _, h)| h.is_finished())
        {
            self.finish(None)?;
        }
        Ok(self.in_flight.is_some())
    }

    fn start(&mut self, store: &CheckpointStore, snapshot: Snapshot) {
        let store = store.clone();
        let step = snapshot.state.step;
        self.in_flight = Some((
            step,
            Instant::now(),
            self.runtime
                .spawn(async move { store.commit(&snapshot).await }),
        ));
    }

    /// Waits for the in-flight upload, if any, at most `limit`.
    fn finish(&mut self, limit: Option<Duration>) -> Result<(), CheckpointError> {
        let Some((step, started, mut handle)) = self.in_flight.take() else {
            return Ok(());
        };
        let joined = match limit {
            None => self.runtime.block_on(&mut handle),
            Some(limit) => match self
                .runtime
                .block_on(async { tokio::time::timeout(limit, &mut handle).await })
            {
                Ok(joined) => joined,
                Err(_) => {
                    handle.abort();
                    return Err(CheckpointError::Timeout {
                        step,
                        seconds: limit.as_secs(),
                    });
                }
            },
        };
        let committed = joined.map_err(|e| CheckpointError::Task(e.to_string()))??;
        self.stats.upload_seconds += started.elapsed().as_secs_f64();
        self.stats.committed += 1;
        self.stats.bytes += committed.bytes;
        tracing::info!(step = committed.step, uri = %committed.manifest_uri, "checkpoint committed");
        self.latest = Some(committed);
        Ok(())
    }
}

/// Runs the loop of one rank over `data`, with collectives on `ring`, on a pool of `job.threads`
/// compute threads.
pub fn train(
    job: Job,
    data: &Splits,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<Outcome, TrainError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(job.threads)
        .thread_name(|i| format!("compute-{i}"))
        .build()?;
    tracing::info!(threads = pool.current_num_threads(), "compute threads");
    pool.install(|| train_on_pool(job, data, ring, runtime))
}

fn train_on_pool(
    mut job: Job,
    data: &Splits,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<Outcome, TrainError> {
    let started = Instant::now();
    let spec = &job.spec;
    let (rank, world) = (ring.rank() as usize, ring.world_size() as usize);
    let seed = spec.seed_or_default();
    let net = Network::new(&spec.model, data.train.dim, data.classes())?;
    let n = net.num_params;
    let optimizer_spec = spec.optimizer_or_default();
    let mut params = net.init_params(seed);
    let mut optimizer = Optimizer::new(&optimizer_spec, n);
    let mut state = TrainingState {
        world_size: world as u32,
        ..TrainingState::default()
    };
    let mut resumed_from = None;
    let (resume_point, rejected_checkpoints) = match job.checkpoint.as_ref().filter(|p| p.resume) {
        Some(plan) => load_resume_point(plan, ring, runtime)?,
        None => (None, None),
    };
    if let Some(plan) = job.checkpoint.as_ref()
        && let Some(snapshot) = resume_point
    {
        if snapshot.params.len() != n
            || snapshot.moment1.len() != optimizer.m.len()
            || snapshot.moment2.len() != optimizer.v.len()
        {
            return Err(TrainError::Checkpoint(CheckpointError::Incompatible {
                step: snapshot.state.step,
                uri: plan.store.uri().into(),
            }));
        }
        resumed_from = Some(snapshot.state.step);
        params = snapshot.params;
        optimizer.m = snapshot.moment1;
        optimizer.v = snapshot.moment2;
        optimizer.steps = snapshot.state.optimizer_steps;
        state = TrainingState {
            world_size: world as u32,
            ..snapshot.state
        };
        tracing::info!(
            step = state.step,
            epoch = state.epoch,
            "resumed from checkpoint"
        );
    } else if let Some(warm) = &job.warm_start {
        let (snapshot, source_model) = load_warm_start(warm, ring, runtime)?;
        if snapshot.params.len() != n {
            let this_model = crate::nn::model::describe(&spec.model, &net);
            return Err(TrainError::Config(format!(
                "spec.trainer.initFrom.uri {}: the checkpoint's model ({}) does not match this job's model ({this_model})",
                warm.uri,
                source_model.unwrap_or_else(|| format!("{} parameters", snapshot.params.len())),
            )));
        }
        params = snapshot.params;
        if !warm.reset_optimizer {
            if snapshot.moment1.len() != optimizer.m.len()
                || snapshot.moment2.len() != optimizer.v.len()
            {
                return Err(TrainError::Config(format!(
                    "spec.trainer.initFrom.uri {}: the checkpoint's optimiser state does not fit this job's {:?} optimiser (another optimiser type wrote it); set initFrom.resetOptimizer: true",
                    warm.uri, optimizer_spec.kind
                )));
            }
            optimizer.m = snapshot.moment1;
            optimizer.v = snapshot.moment2;
            optimizer.steps = snapshot.state.optimizer_steps;
        }
        if warm.continue_steps {
            state = TrainingState {
                world_size: world as u32,
                ..snapshot.state
            };
            if warm.reset_optimizer {
                state.optimizer_steps = 0;
            }
        }
        tracing::info!(
            uri = %warm.uri,
            from_step = snapshot.state.step,
            step = state.step,
            reset_optimizer = warm.reset_optimizer,
            "warm start from checkpoint"
        );
    }

    let batch = spec.batch_size.max(1) as usize;
    let global_batch = batch * world;
    let train_len = data.train.len();
    let steps_per_epoch = (train_len / global_batch) as u64;
    if steps_per_epoch == 0 {
        return Err(TrainError::Config(format!(
            "batchSize {batch} × {world} workers exceeds the {train_len} training rows; lower batchSize"
        )));
    }
    let epochs = spec.epochs.map(|e| e.max(1) as u64);
    let max_steps = spec.max_steps.map(|s| s.max(1) as u64);
    let remaining_by_epochs = epochs.map(|e| {
        (e.saturating_sub(state.epoch) * steps_per_epoch)
            .saturating_sub((state.samples_in_epoch / global_batch as u64).min(steps_per_epoch))
    });
    let total_steps = match (remaining_by_epochs, max_steps) {
        (Some(r), Some(m)) => (state.step + r).min(m),
        (Some(r), None) => state.step + r,
        (None, Some(m)) => m,
        (None, None) => state.step + steps_per_epoch,
    };
    let schedule = spec.lr_schedule_or_default();
    let base_lr = optimizer_spec.lr_or_default();
    let eval_every = spec.eval_every_steps.map(|e| e.max(1) as u64);
    let compression = spec.gradient_compression_or_default();
    let local_sgd_every = (spec.mode_or_default() == ModeKind::Async)
        .then(|| spec.max_staleness_or_default().max(0) as u64 + 1);

    let mut uploader = Uploader {
        runtime: runtime.clone(),
        in_flight: None,
        latest: None,
        stats: CheckpointStats::default(),
    };
    let mut last_checkpoint_at = Instant::now();
    let mut last_report_at: Option<Instant> = None;
    let mut engine = engine::select::build(&net, job.compute)?;
    let mut grads = vec![0.0f32; n + CONTROL];
    let (mut batch_x, mut batch_y) = (Vec::new(), Vec::new());
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = None;
    let mut train_seconds = 0.0f64;
    let mut trained_samples = 0u64;
    let mut warmed_up = false;
    let mut early_stopped = false;
    let mut stopped = false;
    let mut reported = Reported {
        attempt: job.attempt,
        rejected_checkpoints,
        evaluations: std::collections::VecDeque::new(),
    };

    while state.step < total_steps && !early_stopped {
        if state.samples_in_epoch + global_batch as u64 > train_len as u64 {
            state.epoch += 1;
            state.samples_in_epoch = 0;
        }
        if order_epoch != Some(state.epoch) {
            order = (0..train_len).collect();
            Rng::derive(seed, Stream::Shuffle, &[state.epoch]).shuffle(&mut order);
            order_epoch = Some(state.epoch);
        }
        let step_started = Instant::now();
        let offset = state.samples_in_epoch as usize + rank * batch;
        data.train
            .gather(&order[offset..offset + batch], &mut batch_x, &mut batch_y);
        let mut dropout = Rng::derive(seed, Stream::Dropout, &[state.step, rank as u64]);
        let injected_failure = job.fail_after_step == Some(state.step);
        let stats = match engine::guarded(|| {
            if injected_failure {
                return Err(EngineError(format!(
                    "injected device failure after step {}",
                    state.step
                )));
            }
            engine.train_step(&params, &mut grads[..n], &batch_x, &batch_y, &mut dropout)
        }) {
            Ok(stats) => stats,
            Err(failure) => {
                // The parameters are those of the last completed step, the same on every rank:
                // rank 0 commits them before the run ends, so the next attempt loses nothing.
                if rank == 0
                    && let Some(plan) = &job.checkpoint
                {
                    let _ = uploader.finish(Some(job.grace));
                    if uploader.latest.as_ref().map(|c| c.step) != Some(state.step) {
                        uploader.start(&plan.store, snapshot(&state, &params, &optimizer));
                        match uploader.finish(Some(job.grace)) {
                            Ok(()) => {
                                tracing::error!(step = state.step, error = %failure, "the compute engine failed; committed an emergency checkpoint")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "the compute engine failed and the emergency checkpoint failed too")
                            }
                        }
                    }
                }
                return Err(failure.into());
            }
        };
        let stop_requested =
            job.stop.load(Ordering::Relaxed) || job.stop_after_step == Some(state.step + 1);
        grads[n] = f32::from(u8::from(stop_requested));
        grads[n + 1] = stats.loss_sum as f32;
        grads[n + 2] = stats.correct as f32;
        grads[n + 3] = stats.count as f32;
        // Only asynchronous mode needs it: in synchronous mode an overflow anywhere makes the
        // all-reduced gradients, which every rank checks, non-finite.
        grads[n + 4] = match engine.loss_scaler() {
            Some(_) if local_sgd_every.is_some() => engine::scaler::overflow_flag(&grads[..n]),
            _ => 0.0,
        };
        let scale = 1.0 / world as f32;
        if local_sgd_every.is_some() {
            // Local SGD: only the control values are shared every step.
            ring.all_reduce_sum(&mut grads[n..])?;
        } else if compression == GradientCompression::None {
            ring.all_reduce_sum(&mut grads)?;
            grads[..n].iter_mut().for_each(|g| *g *= scale);
        } else {
            // The control values stay exact.
            let (model_grads, control) = grads.split_at_mut(n);
            ring.all_reduce(model_grads, compression)?;
            ring.all_reduce_sum(control)?;
            model_grads.iter_mut().for_each(|g| *g *= scale);
        }
        if let Some(max_norm) = spec.grad_clip_norm {
            clip_grad_norm(&mut grads[..n], max_norm as f32);
        }
        // fp16: a step in which any rank's gradients overflowed is skipped on every rank and the
        // loss scale backs off, so the ranks' scales never diverge (in asynchronous mode each
        // rank applies only its own gradients).
        let apply = match engine.loss_scaler() {
            Some(scaler) => scaler.update_for_gang(grads[n + 4], &grads[..n]),
            None => true,
        };
        if apply {
            optimizer.step(
                &mut params,
                &grads[..n],
                learning_rate(base_lr, &schedule, state.step, total_steps),
            );
        }
        state.step += 1;
        state.samples_in_epoch += global_batch as u64;
        state.optimizer_steps = optimizer.steps;
        let loss = f64::from(grads[n + 1]) / f64::from(grads[n + 3]).max(1.0);
        // Every rank sees the same all-reduced loss, so every rank stops here.
        if !loss.is_finite() && apply {
            return Err(TrainError::Diverged {
                step: state.step,
                loss,
            });
        }
        state.loss = Some(loss);
        if warmed_up {
            train_seconds += step_started.elapsed().as_secs_f64();
            trained_samples += global_batch as u64;
        } else {
            // The first step of an attempt compiles and autotunes GPU kernels and touches every
            // page: throughput counts from the second.
            warmed_up = true;
            tracing::info!(
                step = state.step,
                attempt = job.attempt,
                seconds = step_started.elapsed().as_secs_f64(),
                "first step of this attempt done (not counted in samples/s)"
            );
        }
        stopped = grads[n] > 0.0;

        let epoch_done = state.samples_in_epoch + global_batch as u64 > train_len as u64;
        let eval_due = match eval_every {
            Some(every) => state.step.is_multiple_of(every),
            None => epoch_done,
        } || state.step == total_steps;
        // Local SGD: average parameters every maxStaleness + 1 steps, and before anything that
        // must see one model (evaluation, the last step, a stop).
        let consensus = match local_sgd_every {
            None => true,
            Some(every) => {
                let due = state.step.is_multiple_of(every)
                    || eval_due
                    || stopped
                    || state.step == total_steps;
                if due {
                    ring.all_reduce_sum(&mut params)?;
                    params.iter_mut().for_each(|p| *p *= scale);
                }
                due
            }
        };
        if eval_due && !stopped {
            let metrics = evaluate(engine.as_mut(), &params, data, ring)?;
            early_stopped = update_early_stopping(spec, &mut state, &metrics);
            if reported.evaluations.len() == MAX_REPORTED_EVALUATIONS {
                reported.evaluations.pop_front();
            }
            reported.evaluations.push_back(Evaluation {
                step: state.step as i64,
                metrics: metrics.clone(),
            });
            state.metrics = metrics;
        }

        if rank == 0
            && let Some(plan) = &job.checkpoint
        {
            let due = plan
                .every_steps
                .is_some_and(|e| state.step.is_multiple_of(e))
                || plan
                    .every_seconds
                    .is_some_and(|s| last_checkpoint_at.elapsed() >= Duration::from_secs(s));
            if due && consensus && !stopped && state.step < total_steps && !early_stopped {
                let snapshot_started = Instant::now();
                if !uploader.busy()? {
                    uploader.start(&plan.store, snapshot(&state, &params, &optimizer));
                    last_checkpoint_at = Instant::now();
                }
                uploader.stats.stall_seconds += snapshot_started.elapsed().as_secs_f64();
            }
        }
        if let Some(reporter) = job.reporter.as_mut()
            && last_report_at.is_none_or(|t| t.elapsed() >= job.report_every)
        {
            let _ = uploader.busy();
            reporter.report(&progress(
                &reported,
                &state,
                total_steps,
                trained_samples,
                train_seconds,
                uploader.latest.as_ref(),
                false,
            ));
            last_report_at = Some(Instant::now());
        }
        if stopped {
            break;
        }
    }

    // Rank 0 commits the final (or emergency) checkpoint synchronously.
    if rank == 0
        && let Some(plan) = &job.checkpoint
    {
        let wait_started = Instant::now();
        let limit = stopped.then_some(job.grace);
        uploader.finish(limit)?;
        if uploader.latest.as_ref().map(|c| c.step) != Some(state.step) {
            uploader.start(&plan.store, snapshot(&state, &params, &optimizer));
            uploader.finish(limit.map(|l| l.saturating_sub(wait_started.elapsed())))?;
        }
        uploader.stats.final_seconds += wait_started.elapsed().as_secs_f64();
    }
    let samples_per_second = if train_seconds > 0.0 {
        trained_samples as f64 / train_seconds
    } else {
        0.0
    };
    if let Some(reporter) = job.reporter.as_mut() {
        reporter.report(&progress(
            &reported,
            &state,
            total_steps,
            trained_samples,
            train_seconds,
            uploader.latest.as_ref(),
            !stopped,
        ));
        reporter.flush();
    }
    let summary = Summary {
        step: state.step,
        epoch: state.epoch,
        total_steps,
        loss: state.loss,
        metrics: state.metrics.clone(),
        samples_per_second,
        resumed_from,
        rejected_checkpoints: reported.rejected_checkpoints,
        early_stopped,
        checkpoint: uploader.latest.clone(),
        checkpoint_stats: uploader.stats.clone(),
        wall_seconds: started.elapsed().as_secs_f64(),
        params,
    };
    Ok(if stopped {
        Outcome::Preempted(summary)
    } else {
        Outcome::Completed(summary)
    })
}

/// Rank 0 reads the newest valid checkpoint and passes it around the ring, so that every rank
/// resumes from the same one.
/// Rank 0 finds the newest checkpoint that verifies and broadcasts it; it also returns what it
/// had to pass over (peers return none), for the progress reports.
fn load_resume_point(
    plan: &CheckpointPlan,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<(Option<Snapshot>, Option<RejectedCheckpoints>), TrainError> {
    let mut bytes = Vec::new();
    if ring.rank() == 0 {
        // An unreadable store is fatal to the whole gang: tell the peers by sending nothing.
        let loaded = runtime.block_on(plan.store.load_latest_noting_rejects());
        if let Ok((Some((snapshot, _)), _)) = &loaded {
            bytes = encode_snapshot(snapshot);
        }
        ring.broadcast(&mut bytes)?;
        let (latest, rejected) = loaded?;
        let snapshot = latest.map(|(snapshot, _)| snapshot);
        let rejected = rejected.first().map(|(newest_step, problem)| {
            let report = RejectedCheckpoints {
                count: u32::try_from(rejected.len()).unwrap_or(u32::MAX),
                newest_step: *newest_step,
                problem: problem.clone(),
                resumed_from: snapshot.as_ref().map(|s| s.state.step),
            };
            tracing::warn!("{}", report.describe());
            report
        });
        return Ok((snapshot, rejected));
    }
    ring.broadcast(&mut bytes)?;
    Ok((decode_snapshot(&bytes), None))
}

/// Rank 0 reads the warm-start checkpoint and passes it around the ring; it also returns the
/// description of the model that wrote it (peers return none).
fn load_warm_start(
    warm: &WarmStart,
    ring: &mut Ring,
    runtime: &Handle,
) -> Result<(Snapshot, Option<String>), TrainError> {
    let mut bytes = Vec::new();
    if ring.rank() == 0 {
        let loaded = runtime.block_on(warm.store.load_for_warm_start(warm.manifest_key.as_deref()));
        if let Ok(Ok((snapshot, _))) = &loaded {
            bytes = encode_snapshot(snapshot);
        }
        ring.broadcast(&mut bytes)?;
        return match loaded? {
            Ok((snapshot, manifest)) => Ok((snapshot, manifest.model)),
            Err(problem) => Err(TrainError::Config(format!(
                "spec.trainer.initFrom.uri {}: {problem}",
                warm.uri
            ))),
        };
    }
    ring.broadcast(&mut bytes)?;
    decode_snapshot(&bytes).map(|s| (s, None)).ok_or_else(|| {
        TrainError::Config(format!(
            "spec.trainer.initFrom.uri {}: rank 0 could not read the checkpoint",
            warm.uri
        ))
    })
}

fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let state = serde_json::to_vec(&s.state).unwrap_or_default();
    let mut out = Vec::new();
    for part in [
        &state[..],
        bytemuck::cast_slice(&s.params),
        bytemuck::cast_slice(&s.moment1),
        bytemuck::cast_slice(&s.moment2),
    ] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn decode_snapshot(bytes: &[u8]) -> Option<Snapshot> {
    let mut parts = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let (len, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len.try_into().ok()?) as usize;
        if tail.len() < len {
            return None;
        }
        parts.push(&tail[..len]);
        rest = &tail[len..];
    }
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    match parts.as_slice() {
        [state, params, m1, m2] => Some(Snapshot {
            state: serde_json::from_slice(state).ok()?,
            params: floats(params),
            moment1: floats(m1),
            moment2: floats(m2),
        }),
        _ => None,
    }
}

fn snapshot(state: &TrainingState, params: &[f32], optimizer: &Optimizer) -> Snapshot {
    Snapshot {
        state: state.clone(),
        params: params.to_vec(),
        moment1: optimizer.m.clone(),
        moment2: optimizer.v.clone(),
    }
}

/// Loss and accuracy on the evaluation split, each rank taking every world-th row.
fn evaluate(
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
fn update_early_stopping(
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
struct Reported {
    attempt: u32,
    /// Checkpoints its resume passed over: every report of the attempt names them.
    rejected_checkpoints: Option<RejectedCheckpoints>,
    /// Its latest evaluations, oldest first.
    evaluations: std::collections::VecDeque<Evaluation>,
}

fn progress(
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
        checkpoint: checkpoint.map(|c| CheckpointReport {
            step: c.step,
            uri: c.manifest_uri.clone(),
            unix_ms: c.unix_ms,
        }),
        done,
        rejected_checkpoints: reported.rejected_checkpoints.clone(),
        evaluations: reported.evaluations.iter().cloned().collect(),
    }
}
