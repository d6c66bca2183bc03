//! The Kubernetes side of TrainingSweeps: observe the trial TrainingJobs a sweep controls (by
//! UID, never by name or label alone), run the sweep
//! [`decide`], create trials (owned by the sweep, so deleting it deletes them), stop them by
//! suspension, and write the sweep's status with server-side apply. Its calls are part of
//! [`crate::cluster::controller::RBAC`].

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferrotrain_crds::sweep::{TrainingSweep, TrainingSweepStatus};
use ferrotrain_crds::{Phase, TrainingJob};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::cluster::hub::ProgressHub;
use crate::cluster::ownership::{controlled_by, held_by_another};
use crate::cluster::sweep_watch::{MIN_RECONCILE_INTERVAL, Pacer, TrialIndex};
use crate::decide::job::Event as Note;
use crate::decide::sweep::{SWEEP_LABEL, SweepAction, TrialObservation, decide};
use crate::manifest::Admission;

/// The field manager of the sweep controller's writes.
pub const SWEEP_MANAGER: &str = "ferrotrain-sweep";

/// How often a sweep is reconciled when nothing wakes it.
const PERIODIC_PASS: Duration = Duration::from_secs(30);

/// A reconcile failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        source: kube::Error,
    },
    /// The object has no namespace or name.
    #[error("TrainingSweep without {0}")]
    Incomplete(&'static str),
    /// The status write lost a race; the watch brings the newer sweep.
    #[error("the sweep changed since it was read (status write conflict); reconciling again")]
    Conflict,
    /// Reading the holder of a trial's name failed.
    #[error(transparent)]
    Lookup(#[from] crate::cluster::error::Error),
    /// The trial cache has not completed its first list.
    #[error("the trial cache is not yet filled")]
    CacheNotReady,
    /// The checker of sweep manifests could not be built (a bug in the generated CRDs).
    #[error(transparent)]
    Admission(#[from] crate::manifest::SchemaCompileError),
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Shared reconcile state.
pub struct Context {
    client: Client,
    /// Built at the first sweep: its compiled schemas are a few MiB that an operator without
    /// sweeps never needs.
    admission: OnceLock<Admission>,
    recorder: Recorder,
    hub: Arc<ProgressHub>,
    trials: Store<TrainingJob>,
    index: Arc<TrialIndex>,
    pacer: Pacer,
}

impl Context {
    /// The checker of sweep manifests, built on first use.
    fn admission(&self) -> Result<&Admission, Error> {
        if let Some(admission) = self.admission.get() {
            return Ok(admission);
        }
        let built = Admission::new()?;
        Ok(self.admission.get_or_init(|| built))
    }
}

/// What a trial's TrainingJob says, for the decision.
pub fn observe(job: &TrainingJob) -> TrialObservation {
    let status = job.status.clone().unwrap_or_default();
    let progress = status.progress.unwrap_or_default();
    TrialObservation {
        phase: status.phase,
        step: progress.step,
        total_steps: progress.total_steps,
        completed_at: status.completion_time.map(|t| t.0),
        metrics: progress.metrics,
        evaluations: progress.evaluations,
        checkpoint: status.checkpoint.and_then(|c| c.uri),
        message: status.message,
    }
}

/// One reconcile of one sweep; replicas that do not lead only wait.
pub async fn reconcile(sweep: Arc<TrainingSweep>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.hub.is_leading() {
        return Ok(Requeue::requeue(crate::cluster::leader::RENEW_EVERY));
    }
    let namespace = sweep
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let name = sweep.name_any();
    let sweep_uid = sweep.uid().unwrap_or_default();
    if let Some(wait) = ctx.pacer.wait_before(&sweep_uid, std::time::Instant::now()) {
        return Ok(Requeue::requeue(wait));
    }
    ctx.hub.observe_sweep_reconcile();
    if tokio::time::timeout(Duration::from_secs(5), ctx.trials.wait_until_ready())
        .await
        .is_err()
    {
        // Deciding on an empty cache would take every trial for deleted.
        return Err(Error::CacheNotReady);
    }
    let sweeps: Api<TrainingSweep> = Api::namespaced(ctx.client.clone(), &namespace);
    let jobs: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    // The API server checked the schema and CEL rules; the checks only Ferrotrain makes (ranges
    // of integer fields, the algorithm against the template, trials that would be refused) fail
    // the sweep here, before any trial is created.
    let object = serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingSweep",
        "metadata": {"name": name, "namespace": namespace},
        "spec": sweep.spec,
    });
    if let Err(errors) = ctx.admission()?.admit_sweep(&object) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut status = sweep.status.clone().unwrap_or_default();
        if status.phase != Some(ferrotrain_crds::sweep::SweepPhase::Failed) {
            status.phase = Some(ferrotrain_crds::sweep::SweepPhase::Failed);
            status.message = Some(message.clone());
            status.completion_time =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
            write_status(&sweeps, &sweep, &status).await?;
            let note = Note {
                warning: true,
                reason: "InvalidSpec".into(),
                message,
                trial: None,
            };
            publish(&ctx, &sweep, &note, &BTreeMap::new()).await;
        }
        return Ok(Requeue::await_change());
    }
    // A trial is a TrainingJob this sweep controls: a job someone else made with the sweep's
    // label and a trial's name is never taken for one.
    let mine: Vec<Arc<TrainingJob>> = ctx
        .index
        .trials_of(&sweep_uid)
        .into_iter()
        .filter_map(|(ns, trial)| ctx.trials.get(&ObjectRef::new(&trial).within(&ns)))
        .filter(|job| {
            job.namespace().as_deref() == Some(namespace.as_str())
                && job.labels().get(SWEEP_LABEL) == Some(&name)
                && controlled_by(job.meta(), &sweep_uid)
        })
        .collect();
    let uids: BTreeMap<String, String> = mine
        .iter()
        .map(|job| (job.name_any(), job.uid().unwrap_or_default()))
        .collect();
    let observed: BTreeMap<String, TrialObservation> = mine
        .iter()
        .map(|job| (job.name_any(), observe(job)))
        .collect();
    let decision = decide(&sweep, &observed, now);
    for action in &decision.actions {
        match action {
            SweepAction::CreateTrial { name: trial, spec } => {
                let object: TrainingJob = serde_json::from_value(
                    crate::decide::sweep::trials::trial_object(&sweep, trial, spec),
                )
                .map_err(|e| Error::Kube {
                    action: format!("build trial {trial}"),
                    source: kube::Error::SerdeError(e),
                })?;
                match jobs.create(&PostParams::default(), &object).await {
                    Ok(_) => {}
                    // Created before (a status write that lost a race, or a cache that lags),
                    // or the name is another owner's: the trial waits until it is free.
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        let holder =
                            held_by_another(&jobs, "TrainingJob", trial, &sweep_uid).await?;
                        if let Some(holder) = holder {
                            let message = format!(
                                "{holder} exists and is not this sweep's; the trial waits until \
                                 the name is free"
                            );
                            let note =
                                Note::about_trial(true, "TrialNameConflict", &message, trial);
                            publish(&ctx, &sweep, &note, &uids).await;
                        }
                    }
                    // Refused by admission: the sweep sees the trial missing and records why.
                    Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                        let message = format!("{trial}: {}", s.message);
                        let note = Note::about_trial(true, "InvalidTrial", &message, trial);
                        publish(&ctx, &sweep, &note, &uids).await;
                    }
                    Err(e) => return Err(kube_error(format!("create trial {trial}"))(e)),
                }
            }
            SweepAction::StopTrial { name: trial } | SweepAction::PauseTrial { name: trial } => {
                suspend(&jobs, &observed, &uids, trial, true).await?;
            }
            SweepAction::ResumeTrial { name: trial } => {
                suspend(&jobs, &observed, &uids, trial, false).await?;
            }
        }
    }
    for event in &decision.events {
        publish(&ctx, &sweep, event, &uids).await;
    }
    if sweep.status.as_ref() != Some(&decision.status) {
        write_status(&sweeps, &sweep, &decision.status).await?;
    }
    // Trial changes the decision reads wake the sweep through the watch, and its own status
    // writes do not (they would feed back: each write would find the trials' steps moved on). A
    // pass that changed more than the trials' step counts looks again soon, as its write's wake
    // used to; otherwise the periodic pass brings the steps into the status and bounds a missed
    // event.
    let changed = sweep
        .status
        .as_ref()
        .is_none_or(|before| !same_apart_from_steps(before, &decision.status));
    Ok(Requeue::requeue(if changed {
        MIN_RECONCILE_INTERVAL
    } else {
        PERIODIC_PASS
    }))
}

/// Whether two statuses differ in nothing but the trials' step counts.
fn same_apart_from_steps(a: &TrainingSweepStatus, b: &TrainingSweepStatus) -> bool {
    let without_steps = |status: &TrainingSweepStatus| {
        let mut status = status.clone();
        status.trained_steps = None;
        for trial in &mut status.trials {
            (trial.steps, trial.trained_steps) = (0, 0);
        }
        status
    };
    without_steps(a) == without_steps(b)
}

/// Sets a trial's `spec.runPolicy.suspend`; a trial already gone or finished needs nothing.
async fn suspend(
    jobs: &Api<TrainingJob>,
    observed: &BTreeMap<String, TrialObservation>,
    uids: &BTreeMap<String, String>,
    trial: &str,
    on: bool,
) -> Result<(), Error> {
    let (Some(seen), Some(uid)) = (observed.get(trial), uids.get(trial)) else {
        return Ok(());
    };
    if matches!(seen.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return Ok(());
    }
    // The UID in the patch is a precondition: a job recreated under the name is not touched.
    let patch = serde_json::json!({
        "metadata": {"uid": uid},
        "spec": {"runPolicy": {"suspend": on}},
    });
    match jobs
        .patch(trial, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Gone, or replaced by another job of the name (the UID no longer matches).
        Err(kube::Error::Api(s))
            if s.code == 404 || (s.code == 422 && s.message.contains("metadata.uid")) =>
        {
            Ok(())
        }
        Err(e) => Err(kube_error(format!("suspend trial {trial}"))(e)),
    }
}

/// The status apply, with the resourceVersion the decision was made from as a precondition.
pub fn status_patch(sweep: &TrainingSweep, status: &TrainingSweepStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingSweep",
        "metadata": {"resourceVersion": sweep.metadata.resource_version},
        "status": status,
    })
}

async fn write_status(
    sweeps: &Api<TrainingSweep>,
    sweep: &TrainingSweep,
    status: &TrainingSweepStatus,
) -> Result<(), Error> {
    match sweeps
        .patch_status(
            &sweep.name_any(),
            &PatchParams::apply(SWEEP_MANAGER).force(),
            &Patch::Apply(&status_patch(sweep, status)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict),
        Err(e) => Err(kube_error("apply sweep status")(e)),
    }
}

/// Records an event on the sweep; one about a trial names it as the related object, so that each
/// trial's events form a series of their own.
async fn publish(
    ctx: &Context,
    sweep: &TrainingSweep,
    note: &Note,
    uids: &BTreeMap<String, String>,
) {
    let event = kube_event(sweep, note, uids);
    if let Err(e) = ctx.recorder.publish(&event, &sweep.object_ref(&())).await {
        tracing::warn!(sweep = %sweep.name_any(), error = %e, "cannot record event");
    }
}

/// The Kubernetes event of a sweep's note.
fn kube_event(sweep: &TrainingSweep, note: &Note, uids: &BTreeMap<String, String>) -> KubeEvent {
    let related = note.trial.as_ref().map(|trial| ObjectReference {
        api_version: Some("ferrotrain.io/v1alpha1".into()),
        kind: Some("TrainingJob".into()),
        name: Some(trial.clone()),
        namespace: sweep.namespace(),
        uid: uids.get(trial).cloned(),
        ..ObjectReference::default()
    });
    KubeEvent {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(note.message.chars().take(1024).collect()),
        action: "Reconcile".into(),
        secondary: related,
    }
}

fn error_policy(_sweep: Arc<TrainingSweep>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, "sweep reconcile failed");
    Requeue::requeue(match error {
        Error::Conflict => Duration::from_millis(500),
        Error::CacheNotReady => Duration::from_secs(1),
        Error::Kube { .. } | Error::Incomplete(_) | Error::Lookup(_) => Duration::from_secs(15),
        // A bug, not a passing state: looked at again rarely, and logged each time.
        Error::Admission(_) => Duration::from_secs(300),
    })
}

/// Runs the sweep controller until SIGTERM: watches TrainingSweeps and the TrainingJobs labelled
/// as their trials, reconciling while `hub` says this replica leads.
pub async fn run(client: Client, namespace: Option<String>, hub: Arc<ProgressHub>) {
    let (sweeps, jobs): (Api<TrainingSweep>, Api<TrainingJob>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (trials, writer) = reflector::store();
    let index = Arc::new(TrialIndex::default());
    let indexing = Arc::clone(&index);
    let trial_events = watcher(jobs, watcher::Config::default().labels(SWEEP_LABEL))
        .default_backoff()
        .map_ok(|event| event.modify(|job| job.metadata.managed_fields = None))
        .reflect(writer)
        // Every trial goes into the cache; only a change the sweep decides on wakes it.
        .try_filter(move |event| std::future::ready(indexing.observe(event)))
        .touched_objects();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: SWEEP_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let context = Arc::new(Context {
        client,
        admission: OnceLock::new(),
        recorder,
        hub,
        trials,
        index,
        pacer: Pacer::default(),
    });
    let (sweep_cache, sweep_writer) = reflector::store();
    // A sweep's own status writes do not wake it; a new generation (its spec) does.
    let sweep_changes = watcher(sweeps, watcher::Config::default())
        .default_backoff()
        .reflect(sweep_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default());
    Controller::for_stream(sweep_changes, sweep_cache)
        .owns_stream(trial_events)
        // No debounce: kube's resets with every event, so a steady stream would starve it; the
        // pacer bounds the rate instead.
        .with_config(ControllerConfig::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sweep reconcile error");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pass that only moved trials' step counts forward is not followed up at once: that is
    /// what fed the sweep's reconciles back into themselves.
    #[test]
    fn only_step_counts_moving_is_no_change_to_follow_up() {
        use ferrotrain_crds::sweep::{TrialState, TrialStatus};
        let before = TrainingSweepStatus {
            trials: vec![TrialStatus {
                name: "lr-0".into(),
                state: Some(TrialState::Running),
                steps: 100,
                trained_steps: 100,
                ..TrialStatus::default()
            }],
            ..TrainingSweepStatus::default()
        };
        let mut later = before.clone();
        (later.trials[0].steps, later.trials[0].trained_steps) = (400, 400);
        later.trained_steps = Some(400);
        assert!(same_apart_from_steps(&before, &later));
        later.trials[0].state = Some(TrialState::Stopped);
        assert!(!same_apart_from_steps(&before, &later));
    }

    /// The event recorder folds events with the same reason, object and related object into one
    /// series: each trial is its own related object, so "TrialStopped" of trial 3 never counts
    /// as a repeat of trial 1's.
    #[test]
    fn each_trials_events_are_a_series_of_their_own() {
        let mut sweep: TrainingSweep =
            serde_yaml::from_str(include_str!("../../../examples/sweep-random.yaml"))
                .expect("sweep");
        sweep.metadata.namespace = Some("team-a".into());
        let uids = BTreeMap::from([("lr-1".to_string(), "uid-1".to_string())]);
        let stopped = |trial: &str| {
            kube_event(
                &sweep,
                &Note::about_trial(false, "TrialStopped", "stopped at rung 1", trial),
                &uids,
            )
            .secondary
        };
        let (first, second) = (stopped("lr-1"), stopped("lr-3"));
        assert_ne!(first, second);
        let first = first.expect("related trial");
        assert_eq!(
            (
                first.kind.as_deref(),
                first.name.as_deref(),
                first.uid.as_deref()
            ),
            (Some("TrainingJob"), Some("lr-1"), Some("uid-1"))
        );
        assert_eq!(first.namespace.as_deref(), Some("team-a"));
        let whole = Note {
            warning: false,
            reason: "Succeeded".into(),
            message: "done".into(),
            trial: None,
        };
        assert_eq!(kube_event(&sweep, &whole, &uids).secondary, None);
    }
}
