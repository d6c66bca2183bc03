//! The training loop of one rank: synchronous data parallelism with a ring all-reduce every step,
//! evaluation, early stopping, asynchronous checkpoints and a gang-wide stop on SIGTERM.
//!
//! Asynchronous mode is local SGD with bounded staleness: every rank applies its own gradients
//! without waiting for the others, and parameters are averaged over the ring every
//! `maxStaleness + 1` steps, so no rank's model is more than `maxStaleness` local updates away from
//! the last consensus. Evaluation, checkpoints and the end of the run happen on averaged
//! parameters. Optimiser moments stay local.
//!
//! Determinism: parameters start from the seed; the epoch permutation, the dropout masks, the
//! image augmentations and the batch of every (step, rank) are derived from (seed, epoch, step,
//! rank) rather than carried forward, and the all-reduce adds in a fixed order. A run resumed
//! from a checkpoint therefore computes exactly what the uninterrupted run computes, bit for bit,
//! at the same world size.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferrotrain_crds::progress::MAX_REPORTED_EVALUATIONS;
use ferrotrain_crds::{Evaluation, GradientCompression, ModeKind};
use tokio::runtime::Handle;

use crate::checkpoint::layout::TrainingState;
use crate::checkpoint::store::CheckpointError;
use crate::data::augment::Augmenter;
use crate::data::load::Splits;
use crate::dist::ring::Ring;
use crate::engine::{self, EngineError};
use crate::nn::loss::Targets;
use crate::nn::model::Network;
use crate::nn::pruning::Pruner;
use crate::optim::{Optimizer, clip_grad_norm, learning_rate};
use crate::rng::{Rng, Stream};
use crate::train::distill;
use crate::train::evaluation::{Reported, evaluate, progress, update_early_stopping};
use crate::train::job::{CheckpointStats, Job, Outcome, Summary, TrainError};
use crate::train::resume::{load_resume_point, load_warm_start, snapshot};
use crate::train::transfer::{Frozen, take_layers};
use crate::train::uploader::Uploader;

/// Values appended to the gradient buffer and summed with it: stop flag, loss sum, correct, count,
/// and the number of ranks whose own gradients overflowed (fp16 in asynchronous mode).
const CONTROL: usize = 5;

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
    // Batch normalisation's running statistics, after the trained parameters, are not stepped.
    let trainable = net.trainable;
    let sync_batch_norm = spec.model.sync_batch_norm_or_default() && world > 1;
    let mut optimizer = Optimizer::new(&optimizer_spec, trainable);
    let mut state = TrainingState {
        world_size: world as u32,
        ..TrainingState::default()
    };
    let mut pruner = spec
        .compression
        .as_ref()
        .and_then(|c| c.pruning.as_ref())
        .map(|p| Pruner::new(p, &net));
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
        // A checkpoint without a mask (pruning added to the spec since) starts from a full one.
        if let Some(pruner) = pruner.as_mut()
            && !snapshot.mask.is_empty()
            && !pruner.restore(&snapshot.mask)
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
        if let Some(names) = &warm.layers {
            // Only parameters: the optimiser and the step count start afresh.
            take_layers(
                &net,
                &spec.model,
                &mut params,
                &snapshot.params,
                names,
                &warm.uri,
            )?;
            tracing::info!(uri = %warm.uri, layers = ?names, "layers taken from a checkpoint");
        } else {
            if snapshot.params.len() != n {
                let this_model = crate::nn::describe::describe(&spec.model, &net);
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
    }

    let mut teacher = job
        .teacher
        .as_ref()
        .map(|t| distill::load(t, data.train.dim, data.classes(), runtime))
        .transpose()?;
    // Held at the values they start with: their seed's, a checkpoint's or the resumed ones.
    let frozen = spec
        .freeze
        .as_ref()
        .map(|names| Frozen::new(&net, names, &params));
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
    // The loader refused `dataset.augment` for rows that are not images.
    let mut augmenter = job
        .spec
        .dataset
        .augment
        .as_ref()
        .zip(data.train.image)
        .and_then(|(spec, shape)| Augmenter::new(spec, shape));
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
        step_seconds: None,
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
        if let Some(augmenter) = augmenter.as_mut() {
            let mut draws = Rng::derive(seed, Stream::Augment, &[state.step, rank as u64]);
            augmenter.apply(&mut batch_x, &mut draws);
        }
        let mut dropout = Rng::derive(seed, Stream::Dropout, &[state.step, rank as u64]);
        let injected_failure = job.fail_after_step == Some(state.step);
        // A peer lost inside synchronised batch normalisation's collectives.
        let mut ring_failure = None;
        let stats = match engine::guarded(|| {
            if injected_failure {
                return Err(EngineError(format!(
                    "injected device failure after step {}",
                    state.step
                )));
            }
            let targets = match teacher.as_mut() {
                Some(teacher) => {
                    let (temperature, alpha) = (teacher.temperature, teacher.alpha);
                    Targets::Distilled {
                        teacher: teacher.logits(&batch_x, batch),
                        labels: &batch_y,
                        temperature,
                        alpha,
                    }
                }
                None => Targets::Labels(&batch_y),
            };
            if !sync_batch_norm {
                return engine.train_step_towards(
                    &params,
                    &mut grads[..n],
                    &batch_x,
                    targets,
                    &mut dropout,
                );
            }
            // Synchronised batch normalisation: the sums of every layer go round the ring; after a
            // failed one the step finishes on this rank's own sums and the run ends below.
            let mut reduce = |values: &mut [f32]| {
                if ring_failure.is_none()
                    && let Err(e) = ring.all_reduce_sum(values)
                {
                    ring_failure = Some(e);
                }
            };
            engine.train_step_reduced(
                &params,
                &mut grads[..n],
                &batch_x,
                targets,
                &mut dropout,
                &mut reduce,
            )
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
                        uploader.start(
                            &plan.store,
                            snapshot(&state, &params, &optimizer, pruner.as_ref()),
                        );
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
        if let Some(lost) = ring_failure {
            return Err(lost.into());
        }
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
            // The batch statistics and the control values stay exact.
            let (model_grads, exact) = grads.split_at_mut(trainable);
            ring.all_reduce(model_grads, compression)?;
            ring.all_reduce_sum(exact)?;
            model_grads.iter_mut().for_each(|g| *g *= scale);
            exact[..n - trainable].iter_mut().for_each(|g| *g *= scale);
        }
        if let Some(frozen) = &frozen {
            frozen.mask_gradients(&mut grads[..n]);
        }
        if let Some(max_norm) = spec.grad_clip_norm {
            clip_grad_norm(&mut grads[..trainable], max_norm as f32);
        }
        // fp16: a step in which any rank's gradients overflowed is skipped on every rank and the
        // loss scale backs off, so the ranks' scales never diverge (in asynchronous mode each
        // rank applies only its own gradients).
        let apply = match engine.loss_scaler() {
            Some(scaler) => scaler.update_for_gang(grads[n + 4], &grads[..n]),
            None => true,
        };
        if let Some(pruner) = &pruner {
            pruner.apply(&mut grads[..n]);
        }
        if apply {
            optimizer.step(
                &mut params[..trainable],
                &grads[..trainable],
                learning_rate(base_lr, &schedule, state.step, total_steps),
            );
        }
        net.update_running_statistics(&mut params, &grads);
        if let Some(pruner) = &pruner {
            // The optimiser's momentum would move pruned weights again.
            pruner.apply(&mut params);
        }
        if let Some(frozen) = &frozen {
            frozen.hold(&mut params, &mut optimizer);
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
        reported.step_seconds = Some(step_started.elapsed().as_secs_f64());
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
        let pruning_due = pruner.as_ref().is_some_and(|p| p.due(state.step));
        // Local SGD: average parameters every maxStaleness + 1 steps, and before anything that
        // must see one model (evaluation, a pruning round, the last step, a stop).
        let consensus = match local_sgd_every {
            None => true,
            Some(every) => {
                let due = state.step.is_multiple_of(every)
                    || eval_due
                    || pruning_due
                    || stopped
                    || state.step == total_steps;
                if due {
                    ring.all_reduce_sum(&mut params)?;
                    params.iter_mut().for_each(|p| *p *= scale);
                    if let Some(frozen) = &frozen {
                        frozen.hold(&mut params, &mut optimizer);
                    }
                }
                due
            }
        };
        if pruning_due && let Some(pruner) = pruner.as_mut() {
            pruner.update(&mut params, state.step);
        }
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
                    uploader.start(
                        &plan.store,
                        snapshot(&state, &params, &optimizer, pruner.as_ref()),
                    );
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
            uploader.start(
                &plan.store,
                snapshot(&state, &params, &optimizer, pruner.as_ref()),
            );
            uploader.finish(limit.map(|l| l.saturating_sub(wait_started.elapsed())))?;
        }
        uploader.stats.final_seconds += wait_started.elapsed().as_secs_f64();
    }
    let output = match (&job.output, rank, stopped) {
        (Some(plan), 0, false) => {
            let trained = crate::train::output::trained(spec, data);
            crate::train::output::publish(plan, trained, &params, &state, data, runtime)?
        }
        _ => Vec::new(),
    };
    let samples_per_second = if train_seconds > 0.0 {
        trained_samples as f64 / train_seconds
    } else {
        0.0
    };
    if let Some(reporter) = job.reporter.as_mut() {
        let mut last = progress(
            &reported,
            &state,
            total_steps,
            trained_samples,
            train_seconds,
            uploader.latest.as_ref(),
            !stopped,
        );
        last.output = output.clone();
        reporter.report(&last);
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
        output,
        params,
    };
    Ok(if stopped {
        Outcome::Preempted(summary)
    } else {
        Outcome::Completed(summary)
    })
}
