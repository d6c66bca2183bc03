//! How the sweep controller finds a sweep's trials without looking at every trial of the cluster:
//! the trials are indexed by the UID of the sweep that controls them, from the watch that fills
//! the trial cache.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use ferrotrain_crds::TrainingJob;
use kube::ResourceExt;
use kube::runtime::watcher;

/// The trials of each sweep, by the sweep's UID (from the trial's controller ownerReference).
#[derive(Debug, Default)]
pub struct TrialIndex {
    inner: Mutex<IndexState>,
}

#[derive(Debug, Default)]
struct IndexState {
    by_sweep: HashMap<String, BTreeSet<(String, String)>>,
}

impl TrialIndex {
    /// Records one watch event.
    pub fn observe(&self, event: &watcher::Event<TrainingJob>) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                if let Some(owner) = sweep_of(job) {
                    state
                        .by_sweep
                        .entry(owner)
                        .or_default()
                        .insert((job.namespace().unwrap_or_default(), job.name_any()));
                }
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
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
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
}
