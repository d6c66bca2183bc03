//! What wakes the sweep controller, and how it finds a sweep's trials without looking at every
//! trial of the cluster: a trial wakes its sweep only when something the sweep decides on changed
//! (its phase, a new evaluation, its end, its suspension), not on every progress write; the
//! trials are indexed by the UID of the sweep that controls them; and a sweep is reconciled at
//! most once per [`MIN_RECONCILE_INTERVAL`], never later than that after it was woken (a debounce
//! that a steady stream of writes cannot starve).
//!
//! A relist delivers its objects before the cache holds them (the cache swaps at the list's end),
//! so a wake from a relist could reconcile on the state before it: a relisted trial wakes its
//! sweep and forgets its fingerprint, so that its next write wakes the sweep again.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferrotrain_crds::TrainingJob;
use kube::ResourceExt;
use kube::runtime::watcher;

/// Shortest interval between two reconciles of one sweep.
pub const MIN_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// What of a trial the sweep's decision reads, hashed: a change of anything else (the step, the
/// loss, the throughput, the checkpoint of a running trial) does not wake the sweep; the sweep's
/// periodic pass picks those up for its status.
pub fn fingerprint(job: &TrainingJob) -> u64 {
    let mut hasher = DefaultHasher::new();
    job.uid().hash(&mut hasher);
    job.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    job.spec
        .run_policy
        .as_ref()
        .and_then(|p| p.suspend)
        .hash(&mut hasher);
    if let Some(status) = &job.status {
        status.phase.hash(&mut hasher);
        status.message.hash(&mut hasher);
        status
            .completion_time
            .as_ref()
            .map(|t| t.0)
            .hash(&mut hasher);
        if let Some(progress) = &status.progress {
            progress.total_steps.hash(&mut hasher);
            // A new evaluation is a new rung to compare trials at.
            for evaluation in &progress.evaluations {
                evaluation.step.hash(&mut hasher);
            }
            // The final progress of a finished trial is what it is ranked by, and its last
            // checkpoint what population-based training continues from.
            if status.completion_time.is_some() {
                progress.step.hash(&mut hasher);
                status
                    .checkpoint
                    .as_ref()
                    .and_then(|c| c.uri.as_ref())
                    .hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

/// The trials of each sweep (by the sweep's UID, from the trial's controller ownerReference),
/// and the last fingerprint of each trial.
#[derive(Debug, Default)]
pub struct TrialIndex {
    inner: Mutex<IndexState>,
}

#[derive(Debug, Default)]
struct IndexState {
    by_sweep: HashMap<String, BTreeSet<(String, String)>>,
    fingerprints: HashMap<String, u64>,
}

impl TrialIndex {
    /// Records one watch event; `true` when it should wake the trial's sweep.
    pub fn observe(&self, event: &watcher::Event<TrainingJob>) -> bool {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                let Some(uid) = job.uid() else { return false };
                if let Some(owner) = sweep_of(job) {
                    state
                        .by_sweep
                        .entry(owner)
                        .or_default()
                        .insert((job.namespace().unwrap_or_default(), job.name_any()));
                }
                if matches!(event, watcher::Event::InitApply(_)) {
                    state.fingerprints.remove(&uid);
                    return true;
                }
                let print = fingerprint(job);
                state.fingerprints.insert(uid, print) != Some(print)
            }
            watcher::Event::Delete(job) => {
                if let Some(owner) = sweep_of(job)
                    && let Some(trials) = state.by_sweep.get_mut(&owner)
                {
                    trials.remove(&(job.namespace().unwrap_or_default(), job.name_any()));
                    if trials.is_empty() {
                        state.by_sweep.remove(&owner);
                    }
                }
                if let Some(uid) = job.uid() {
                    state.fingerprints.remove(&uid);
                }
                true
            }
            watcher::Event::Init | watcher::Event::InitDone => false,
        }
    }

    /// The (namespace, name) of the trials the sweep with `uid` controls, as last seen.
    pub fn trials_of(&self, uid: &str) -> Vec<(String, String)> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_sweep
            .get(uid)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The UID of the sweep that controls a trial.
fn sweep_of(job: &TrainingJob) -> Option<String> {
    job.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "TrainingSweep")
        .map(|o| o.uid.clone())
}

/// When each sweep was last reconciled.
#[derive(Debug, Default)]
pub struct Pacer {
    last: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// `None`: reconcile now (and it is recorded as done now); otherwise how long to wait first.
    pub fn wait_before(&self, sweep_uid: &str, now: Instant) -> Option<Duration> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = last.get(sweep_uid) {
            let since = now.saturating_duration_since(*at);
            if since < MIN_RECONCILE_INTERVAL {
                return Some(MIN_RECONCILE_INTERVAL - since);
            }
        }
        // Sweeps that are gone are never reconciled again: drop what is long past.
        if last.len() >= 1024 {
            last.retain(|_, at| now.saturating_duration_since(*at) < 60 * MIN_RECONCILE_INTERVAL);
        }
        last.insert(sweep_uid.to_string(), now);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrotrain_crds::{Evaluation, Phase, ProgressStatus, TrainingJobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn trial(name: &str, sweep_uid: &str, step: i64, evaluations: &[i64]) -> TrainingJob {
        let mut job: TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferrotrain.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
            "spec": {"workers": {"replicas": 1}, "trainer": {
                "model": {"type": "mlp"}, "dataset": {"type": "mnist"}, "batchSize": 32, "maxSteps": 100}},
        }))
        .expect("job");
        job.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "ferrotrain.io/v1alpha1".into(),
            kind: "TrainingSweep".into(),
            name: "sweep".into(),
            uid: sweep_uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        job.status = Some(TrainingJobStatus {
            phase: Some(Phase::Running),
            progress: Some(ProgressStatus {
                step,
                loss: Some(1.0 / (step as f64 + 1.0)),
                evaluations: evaluations
                    .iter()
                    .map(|s| Evaluation {
                        step: *s,
                        metrics: Default::default(),
                    })
                    .collect(),
                ..ProgressStatus::default()
            }),
            ..TrainingJobStatus::default()
        });
        job
    }

    #[test]
    fn progress_writes_do_not_wake_the_sweep_but_rungs_phases_and_deletions_do() {
        let index = TrialIndex::default();
        let apply = |job: TrainingJob| index.observe(&watcher::Event::Apply(job));
        assert!(apply(trial("t0", "s1", 10, &[])), "a new trial");
        assert!(!apply(trial("t0", "s1", 20, &[])), "a progress write");
        assert!(!apply(trial("t0", "s1", 30, &[])), "another one");
        assert!(
            apply(trial("t0", "s1", 40, &[40])),
            "an evaluation: a new rung"
        );
        let mut done = trial("t0", "s1", 40, &[40]);
        if let Some(status) = done.status.as_mut() {
            status.phase = Some(Phase::Succeeded);
        }
        assert!(apply(done.clone()), "a phase change");
        assert!(index.observe(&watcher::Event::Delete(done)), "a deletion");
    }

    #[test]
    fn a_relisted_trial_wakes_its_sweep_and_again_at_its_next_write() {
        let index = TrialIndex::default();
        let apply = |job: TrainingJob| index.observe(&watcher::Event::Apply(job));
        assert!(apply(trial("t0", "s1", 10, &[])));
        assert!(!apply(trial("t0", "s1", 20, &[])));
        // The cache holds a relisted object only once the list ends: the sweep woken by the
        // relist may still see the old one, so the next write wakes it even unchanged.
        assert!(index.observe(&watcher::Event::InitApply(trial("t0", "s1", 30, &[30]))));
        assert!(apply(trial("t0", "s1", 40, &[30])));
        assert!(!apply(trial("t0", "s1", 50, &[30])));
    }

    #[test]
    fn trials_are_found_by_their_sweeps_uid_without_a_scan() {
        let index = TrialIndex::default();
        for (name, sweep) in [("a-0", "s1"), ("a-1", "s1"), ("b-0", "s2")] {
            index.observe(&watcher::Event::InitApply(trial(name, sweep, 0, &[])));
        }
        let names =
            |uid| -> Vec<String> { index.trials_of(uid).into_iter().map(|(_, n)| n).collect() };
        assert_eq!(names("s1"), ["a-0", "a-1"]);
        assert_eq!(names("s2"), ["b-0"]);
        index.observe(&watcher::Event::Delete(trial("a-0", "s1", 0, &[])));
        assert_eq!(names("s1"), ["a-1"]);
        assert!(names("s3").is_empty());
    }

    #[test]
    fn a_steady_stream_of_wakeups_reconciles_once_a_second_and_never_later() {
        let pacer = Pacer::default();
        let start = Instant::now();
        assert_eq!(pacer.wait_before("s", start), None);
        // Woken every 100 ms: each wakeup waits only for the rest of the second.
        for tenth in 1..10u64 {
            let now = start + Duration::from_millis(100 * tenth);
            assert_eq!(
                pacer.wait_before("s", now),
                Some(Duration::from_millis(1000 - 100 * tenth))
            );
        }
        assert_eq!(pacer.wait_before("s", start + Duration::from_secs(1)), None);
        assert_eq!(pacer.wait_before("other", start), None, "per sweep");
    }
}
