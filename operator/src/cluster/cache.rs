//! What the reconciler reads instead of asking the API server: one watch of the operator's pods,
//! slimmed and indexed by job, and the hash of the parts of a job that [`decide`] reads, so that
//! writes it does not read (progress) do not wake the reconciler.
//!
//! [`decide`]: crate::decide::job::decide

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ferrotrain_crds::TrainingJob;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;

use crate::cluster::kept_pod::KeptPod;
use crate::cluster::labels::LABEL_JOB;

/// A job, by namespace and name.
pub type JobKey = (String, String);

/// A job's pods by name. Boxed: a map node has room for eleven entries, and a job has a few.
type PodsByJob = HashMap<JobKey, BTreeMap<String, Box<KeptPod>>>;

/// Deleted pods' last states, with when they were deleted.
type GoneByJob = HashMap<JobKey, BTreeMap<String, (Box<KeptPod>, std::time::Instant)>>;

/// How long the last state of a deleted pod is kept.
pub const GONE_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// The operator's pods (those labelled with [`LABEL_JOB`]), indexed by job.
#[derive(Default)]
pub struct PodIndex {
    pods: RwLock<PodsByJob>,
    /// The last state of pods deleted in the last [`GONE_FOR`], by job: a pod that was stopped
    /// and removed between two reconciles (Kueue stops a pod group and deletes it at once) still
    /// says why it went.
    gone: RwLock<GoneByJob>,
    /// Pods of a relist in progress; they replace `pods` once the list is complete.
    relist: RwLock<Option<PodsByJob>>,
    listed: AtomicBool,
}

fn key_of(pod: &Pod) -> Option<(JobKey, String)> {
    let job = pod.metadata.labels.as_ref()?.get(LABEL_JOB)?.clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    Some(((namespace, job), pod.metadata.name.clone()?))
}

fn insert(map: &mut PodsByJob, pod: Pod) {
    if let Some((job, name)) = key_of(&pod) {
        map.entry(job)
            .or_default()
            .insert(name, Box::new(KeptPod::new(pod)));
    }
}

impl PodIndex {
    /// Applies one watch event: a change, a deletion, or a step of a (re)list.
    pub fn apply(&self, event: &Event<Pod>) {
        match event {
            Event::Apply(pod) => {
                if let Some((job, name)) = key_of(pod) {
                    self.forget_gone(&job, &name);
                }
                insert(&mut self.write(), pod.clone());
            }
            Event::Delete(pod) => {
                if let Some((job, name)) = key_of(pod) {
                    let mut pods = self.write();
                    if let Some(of_job) = pods.get_mut(&job) {
                        of_job.remove(&name);
                        if of_job.is_empty() {
                            pods.remove(&job);
                        }
                    }
                    drop(pods);
                    let now = std::time::Instant::now();
                    let mut gone = self.gone.write().unwrap_or_else(|e| e.into_inner());
                    gone.retain(|_, of_job| {
                        of_job.retain(|_, (_, at)| now.duration_since(*at) < GONE_FOR);
                        !of_job.is_empty()
                    });
                    gone.entry(job)
                        .or_default()
                        .insert(name, (Box::new(KeptPod::new(pod.clone())), now));
                }
            }
            Event::Init => *self.relist_mut() = Some(PodsByJob::new()),
            Event::InitApply(pod) => {
                if let Some(relist) = self.relist_mut().as_mut() {
                    insert(relist, pod.clone());
                }
            }
            Event::InitDone => {
                if let Some(relist) = self.relist_mut().take() {
                    *self.write() = relist;
                }
                self.listed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether the first complete list has arrived: before it, an empty answer means nothing.
    pub fn is_listed(&self) -> bool {
        self.listed.load(Ordering::SeqCst)
    }

    /// The pods labelled as `job`'s in `namespace` (of any job with that name: callers check
    /// owners), as far as the lifecycle reads them (see [`KeptPod`]).
    pub fn pods_of(&self, namespace: &str, job: &str) -> Vec<Pod> {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), job.to_string()))
            .map(|pods| {
                pods.iter()
                    .map(|(name, pod)| pod.to_pod(namespace, job, name))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The last state of `job`'s pods deleted in the last [`GONE_FOR`].
    pub fn gone_of(&self, namespace: &str, job: &str) -> Vec<Pod> {
        self.gone
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_string(), job.to_string()))
            .map(|pods| {
                pods.iter()
                    .filter(|(_, (_, at))| at.elapsed() < GONE_FOR)
                    .map(|(name, (pod, _))| pod.to_pod(namespace, job, name))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn forget_gone(&self, job: &JobKey, name: &str) {
        let mut gone = self.gone.write().unwrap_or_else(|e| e.into_inner());
        if let Some(of_job) = gone.get_mut(job) {
            of_job.remove(name);
            if of_job.is_empty() {
                gone.remove(job);
            }
        }
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.pods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(BTreeMap::len)
            .sum()
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An index that holds `pods` as a complete list (tests, and callers that listed themselves).
    pub fn listed_with(pods: impl IntoIterator<Item = Pod>) -> Arc<Self> {
        let index = Arc::new(Self::default());
        index.apply(&Event::Init);
        for pod in pods {
            index.apply(&Event::InitApply(pod));
        }
        index.apply(&Event::InitDone);
        index
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodsByJob> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }

    fn relist_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<PodsByJob>> {
        self.relist.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The resourceVersion of each job's latest write by the reconciler, until the job cache shows
/// it. A reconcile started by a pod event may find the cache a moment behind the reconciler's own
/// status write; deciding on that copy would repeat the last decision and lose a conflict.
/// resourceVersions are compared as the integers the API server issues; opaque ones (another
/// storage) are never held back and rely on the write's precondition alone.
#[derive(Default)]
pub struct OwnWrites {
    versions: Mutex<HashMap<JobKey, u64>>,
}

fn version(job: &TrainingJob) -> Option<u64> {
    job.metadata.resource_version.as_deref()?.parse().ok()
}

impl OwnWrites {
    /// Records the job as the API server answered a write of the reconciler.
    pub fn record(&self, key: JobKey, written: &TrainingJob) {
        if let Some(v) = version(written) {
            self.lock().insert(key, v);
        }
    }

    /// Whether `cached` predates the reconciler's latest write of the job. Forgets the write once
    /// the cache has caught up.
    pub fn is_stale(&self, key: &JobKey, cached: &TrainingJob) -> bool {
        let mut versions = self.lock();
        let Some(written) = versions.get(key).copied() else {
            return false;
        };
        match version(cached) {
            Some(seen) if seen < written => true,
            _ => {
                versions.remove(key);
                false
            }
        }
    }

    /// Drops the entries of jobs that no longer exist.
    pub fn retain(&self, live: impl Fn(&JobKey) -> bool) {
        self.lock().retain(|key, _| live(key));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobKey, u64>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The attempt for which each job's Service (and NetworkPolicy) was last created or found to be
/// the job's, by job UID. A job waiting to start its gang (old workers exiting, a backoff, a
/// queue) is looked at again and again; its support objects are created or checked once for the
/// attempt, not at every look (a create refused with 409 and a read of the holder, each time).
/// Only jobs about to start have an entry; a new leader checks each once.
#[derive(Default)]
pub struct SupportChecked {
    attempts: Mutex<HashMap<String, u32>>,
}

impl SupportChecked {
    /// Whether the support objects of the job with `uid` were checked for `attempt`.
    pub fn is_checked(&self, uid: &str, attempt: u32) -> bool {
        self.lock().get(uid) == Some(&attempt)
    }

    /// Records that the support objects of the job with `uid` are its own for `attempt`.
    pub fn record(&self, uid: &str, attempt: u32) {
        self.lock().insert(uid.to_string(), attempt);
    }

    /// Forgets the job with `uid`: its gang started, or it no longer exists.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Drops the entries of jobs that no longer exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.lock().retain(|uid, _| live(uid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A hash of everything about a job that the reconciler's decision reads: all of it except the
/// fields the progress writer owns (`status.progress`, `status.checkpoint`, `status.output`) and
/// bookkeeping (resourceVersion, managed fields). Used as a kube-runtime predicate: a progress
/// write, every few seconds per running job, does not wake the reconciler; a spec, annotation,
/// deletion or status-phase change does. Deadlines that depend on progress are requeued by the
/// decision.
pub fn decision_inputs(job: &TrainingJob) -> Option<u64> {
    let mut job = job.clone();
    job.metadata.resource_version = None;
    job.metadata.managed_fields = None;
    if let Some(status) = job.status.as_mut() {
        status.progress = None;
        status.checkpoint = None;
        status.output = None;
    }
    let text = serde_json::to_string(&job).ok()?;
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use serde_json::json;

    fn pod(job: &str, name: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "labels": {LABEL_JOB: job}},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    fn phases(index: &PodIndex, job: &str) -> Vec<String> {
        index
            .pods_of("ml", job)
            .iter()
            .map(|p| {
                format!(
                    "{}:{}",
                    p.metadata.name.clone().unwrap_or_default(),
                    p.status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn a_deleted_pod_leaves_its_last_state_until_one_of_its_name_returns() {
        let index = PodIndex::listed_with([]);
        index.apply(&Event::Apply(pod("a", "a-worker-0", "Running")));
        index.apply(&Event::Delete(pod("a", "a-worker-0", "Failed")));
        assert!(index.pods_of("ml", "a").is_empty());
        let gone = index.gone_of("ml", "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(
            gone[0].status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed")
        );
        index.apply(&Event::Apply(pod("a", "a-worker-0", "Pending")));
        assert!(index.gone_of("ml", "a").is_empty());
    }

    #[test]
    fn changes_and_deletions_are_indexed_by_job() {
        let index = PodIndex::listed_with([pod("a", "a-worker-0", "Pending")]);
        assert!(index.is_listed());
        index.apply(&Event::Apply(pod("a", "a-worker-0", "Running")));
        index.apply(&Event::Apply(pod("a", "a-worker-1", "Running")));
        index.apply(&Event::Apply(pod("b", "b-worker-0", "Pending")));
        assert_eq!(
            phases(&index, "a"),
            ["a-worker-0:Running", "a-worker-1:Running"]
        );
        assert_eq!(phases(&index, "b"), ["b-worker-0:Pending"]);
        assert!(
            index.pods_of("other", "a").is_empty(),
            "namespaces are apart"
        );
        index.apply(&Event::Delete(pod("a", "a-worker-0", "Running")));
        assert_eq!(phases(&index, "a"), ["a-worker-1:Running"]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn the_node_and_status_survive_the_index() {
        let mut scheduled = pod("a", "a-worker-0", "Running");
        scheduled.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            ..PodSpec::default()
        });
        let index = PodIndex::listed_with([scheduled.clone(), pod("a", "a-worker-1", "Pending")]);
        let pods = index.pods_of("ml", "a");
        assert_eq!(pods[0], scheduled);
        assert_eq!(pods[1].spec, None, "an unscheduled pod has no node");
    }

    #[test]
    fn a_relist_replaces_everything_only_once_complete() {
        let index = PodIndex::listed_with([pod("a", "a-worker-0", "Running")]);
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("b", "b-worker-0", "Running")));
        // Until the list is complete, the old view stays.
        assert_eq!(phases(&index, "a"), ["a-worker-0:Running"]);
        assert!(phases(&index, "b").is_empty());
        index.apply(&Event::InitDone);
        assert!(phases(&index, "a").is_empty(), "deleted during the outage");
        assert_eq!(phases(&index, "b"), ["b-worker-0:Running"]);
    }

    #[test]
    fn nothing_is_known_before_the_first_list() {
        let index = PodIndex::default();
        index.apply(&Event::Apply(pod("a", "a-worker-0", "Running")));
        assert!(!index.is_listed());
        index.apply(&Event::Init);
        index.apply(&Event::InitDone);
        assert!(index.is_listed());
    }

    fn running_job() -> TrainingJob {
        serde_json::from_value(json!({
            "apiVersion": "ferrotrain.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "mnist", "namespace": "ml", "resourceVersion": "7", "generation": 1},
            "spec": {"workers": {"replicas": 2}, "trainer": {"model": {"type": "mlp"}, "dataset": {"type": "mnist"}, "batchSize": 8, "epochs": 1}, "checkpoint": {"uri": "s3://ckpt/mnist", "everySteps": 10}},
            "status": {"phase": "Running", "attempt": 1},
        }))
        .expect("job")
    }

    fn at_version(version: &str) -> TrainingJob {
        let mut job = running_job();
        job.metadata.resource_version = Some(version.into());
        job
    }

    #[test]
    fn a_copy_older_than_the_own_write_is_stale_until_the_cache_catches_up() {
        let writes = OwnWrites::default();
        let key = ("ml".to_string(), "mnist".to_string());
        assert!(
            !writes.is_stale(&key, &at_version("7")),
            "nothing written yet"
        );
        writes.record(key.clone(), &at_version("12"));
        assert!(writes.is_stale(&key, &at_version("9")));
        assert!(!writes.is_stale(&key, &at_version("12")));
        // Caught up: later copies are never held back by the old write.
        assert!(!writes.is_stale(&key, &at_version("3")));
        // resourceVersions that are not integers are not compared.
        writes.record(key.clone(), &at_version("12"));
        assert!(!writes.is_stale(&key, &at_version("opaque")));
        writes.record(key.clone(), &at_version("20"));
        writes.retain(|_| false);
        assert!(!writes.is_stale(&key, &at_version("1")));
    }

    #[test]
    fn progress_writes_do_not_change_the_decision_inputs() {
        let job = running_job();
        let before = decision_inputs(&job);
        let mut progressed = job.clone();
        progressed.metadata.resource_version = Some("8".into());
        let status = progressed.status.as_mut().expect("status");
        status.progress = Some(serde_json::from_value(json!({"step": 40})).expect("progress"));
        status.checkpoint = Some(
            serde_json::from_value(json!({"uri": "s3://b/k", "step": 40})).expect("checkpoint"),
        );
        assert_eq!(decision_inputs(&progressed), before);

        let mut restarted = job.clone();
        restarted.status.as_mut().expect("status").attempt = Some(2);
        assert_ne!(decision_inputs(&restarted), before);
        let mut edited = job.clone();
        edited.metadata.generation = Some(2);
        assert_ne!(decision_inputs(&edited), before);
        let mut deleted = job;
        deleted.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).expect("time"));
        assert_ne!(decision_inputs(&deleted), before);
    }
}
