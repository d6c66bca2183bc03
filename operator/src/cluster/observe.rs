//! A job's pods read back into the state machine's view of its workers: each pod's state and the
//! cause of its end (evictions, preemption, disruption, OOM, deletion, exit codes), the worker's
//! own last error, and the slim copy of a pod the cache keeps.

use ferrotrain_crds::env;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::cluster::labels::{LABEL_ATTEMPT, LABEL_RANK};
use crate::decide::job::{FailureCause, StuckReason, WorkerState, WorkerView};
use crate::vocabulary::{MAX_FAILURE_MESSAGE, last_error, shorten};

/// Reads a pod as a worker; `None` for pods without our rank and attempt labels.
/// `node_ready` tells whether a node is Ready (unknown nodes count as ready).
pub fn worker_view(pod: &Pod, node_ready: impl Fn(&str) -> bool) -> Option<WorkerView> {
    let labels = pod.metadata.labels.as_ref()?;
    let rank = labels.get(LABEL_RANK)?.parse().ok()?;
    let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    let name = pod.metadata.name.clone()?;
    let status = pod.status.clone().unwrap_or_default();
    let condition = |kind: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    // A pod that exited 0 stays a success when it is deleted afterwards (pod GC, a drain).
    let finished = status.phase.as_deref() == Some("Succeeded");
    let state = if let Some(deleted) = pod
        .metadata
        .deletion_timestamp
        .as_ref()
        .filter(|_| !finished)
    {
        // The deletion timestamp is when the grace period ends, not when deletion began.
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        let disrupted = disruption_cause(&status);
        WorkerState::Terminating {
            since: deleted.0 - jiff::SignedDuration::from_secs(grace),
            node_ready: node.as_deref().is_none_or(&node_ready),
            cause: match status.phase.as_deref() {
                Some("Failed") => Some(failure_cause(pod)),
                _ => disrupted,
            },
        }
    } else {
        match status.phase.as_deref() {
            Some("Running") => WorkerState::Running {
                ready: condition("Ready").is_some(),
            },
            Some("Succeeded") => WorkerState::Succeeded,
            Some("Failed") => WorkerState::Failed(failure_cause(pod)),
            Some("Unknown") => WorkerState::Failed(FailureCause::NodeLost),
            _ if status.conditions.iter().flatten().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("SchedulingGated")
            }) =>
            {
                WorkerState::Gated
            }
            _ if let Some(reason) = status
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
                .find_map(StuckReason::parse) =>
            {
                WorkerState::Stuck(reason)
            }
            _ => WorkerState::Pending {
                scheduled: condition("PodScheduled").is_some(),
            },
        }
    };
    let message = match state {
        WorkerState::Failed(_) | WorkerState::Terminating { .. } => termination_message(&status),
        _ => None,
    };
    Some(WorkerView {
        name,
        rank,
        attempt,
        state,
        message,
    })
}

/// The last error in the trainer container's termination message (its own, or the tail of its
/// log under `FallbackToLogsOnError`), cut to [`MAX_FAILURE_MESSAGE`] characters.
fn termination_message(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == "trainer")
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.as_deref())
        .and_then(last_error)
        .map(|m| shorten(&m, MAX_FAILURE_MESSAGE))
}

/// Whether an object's controller owner reference points at the job with this UID.
pub fn owned_by(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    uid: &str,
) -> bool {
    metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// A worker of an earlier job with the same name (deleted, its pods not yet collected) is never
/// this job's: it is read as attempt 0, a stale attempt that is deleted and waited for.
pub fn of_this_job(mut worker: WorkerView, pod: &Pod, job_uid: &str) -> WorkerView {
    if !owned_by(&pod.metadata, job_uid) {
        worker.attempt = 0;
    }
    worker
}

/// A deleted pod of this job and attempt, from its last state: why it went, as far as that state
/// says (a `DisruptionTarget` or Kueue's `TerminationTarget` condition, its end), or else that
/// someone deleted it. `None` for another job's or attempt's pod.
pub fn gone_worker(pod: &Pod, job_uid: &str, attempt: u32) -> Option<WorkerView> {
    let mut worker = of_this_job(worker_view(pod, |_| true)?, pod, job_uid);
    if worker.attempt != attempt {
        return None;
    }
    let status = pod.status.clone().unwrap_or_default();
    worker.state = match worker.state {
        WorkerState::Succeeded => WorkerState::Succeeded,
        WorkerState::Failed(cause) => WorkerState::Failed(cause),
        WorkerState::Terminating {
            cause: Some(cause), ..
        } => WorkerState::Failed(cause),
        _ => WorkerState::Failed(disruption_cause(&status).unwrap_or(FailureCause::Deleted)),
    };
    Some(worker)
}

/// The workers of the listed pods, and for each rank of `attempt` no longer listed, its last
/// state if it was deleted lately (see [`gone_worker`]).
pub fn with_gone(mut workers: Vec<WorkerView>, gone: Vec<WorkerView>) -> Vec<WorkerView> {
    for worker in gone {
        let listed = workers
            .iter()
            .any(|w| w.rank == worker.rank && w.attempt == worker.attempt);
        if !listed {
            workers.push(worker);
        }
    }
    workers
}

/// Drops everything [`worker_view`] does not read (container specs, volumes, env, managed
/// fields, annotations), so that a cache of pods stays small.
pub fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..PodSpec::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = status.container_statuses.take().map(|statuses| {
            statuses
                .into_iter()
                .filter(|c| c.name == "trainer")
                .map(|c| k8s_openapi::api::core::v1::ContainerStatus {
                    state: c.state.map(slim_state),
                    name: c.name,
                    ..Default::default()
                })
                .collect()
        });
        status.init_container_statuses = None;
        status.pod_ips = None;
        status.host_ips = None;
    }
}

/// A container state whose termination message is cut to the error [`worker_view`] reads.
fn slim_state(
    mut state: k8s_openapi::api::core::v1::ContainerState,
) -> k8s_openapi::api::core::v1::ContainerState {
    if let Some(terminated) = state.terminated.as_mut() {
        terminated.message = terminated
            .message
            .as_deref()
            .and_then(last_error)
            .map(|m| shorten(&m, MAX_FAILURE_MESSAGE));
    }
    state
}

/// The cause a `DisruptionTarget` condition names: set by the scheduler (preemption), the
/// Eviction API (drain), the taint manager and PodGC (node loss) and the kubelet before they
/// delete or stop a pod. Kueue marks the pods of a pod group it stops (its workload evicted:
/// preempted, past its PodsReady timeout, deleted) with a condition of its own,
/// `TerminationTarget` (reason `StoppedByKueue` before v0.10, `WorkloadEvictedDueTo…` since): a
/// preemption by the queue.
fn disruption_cause(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<FailureCause> {
    let conditions = status.conditions.iter().flatten();
    let mut conditions = conditions.filter(|c| c.status == "True");
    if conditions.clone().any(|c| c.type_ == "TerminationTarget") {
        return Some(FailureCause::Preempted);
    }
    let disruption = conditions.find(|c| c.type_ == "DisruptionTarget")?;
    Some(match disruption.reason.as_deref() {
        Some("PreemptionByScheduler" | "PreemptionByKubeScheduler") => FailureCause::Preempted,
        Some("DeletionByTaintManager" | "DeletionByPodGC") => FailureCause::NodeLost,
        Some("TerminationByKubelet") => FailureCause::Evicted,
        _ => FailureCause::DisruptionTarget,
    })
}

/// Why a Failed pod failed.
pub fn failure_cause(pod: &Pod) -> FailureCause {
    let status = pod.status.clone().unwrap_or_default();
    if let Some(cause) = disruption_cause(&status) {
        return cause;
    }
    match status.reason.as_deref() {
        Some("Evicted") => return FailureCause::Evicted,
        Some("NodeLost" | "NodeShutdown" | "Terminated") => return FailureCause::NodeLost,
        Some("Preempting") => return FailureCause::Preempted,
        _ => {}
    }
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == "trainer")
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match terminated {
        // Only the kubelet's reason tells an OOM kill: a SIGKILL from elsewhere exits 137 too.
        Some(t) if t.reason.as_deref() == Some("OOMKilled") => FailureCause::OomKilled,
        Some(t) if t.exit_code == 137 => FailureCause::Signal(9),
        Some(t) if t.exit_code == env::EXIT_PREEMPTED_AFTER_CHECKPOINT => {
            FailureCause::PreemptedAfterCheckpoint
        }
        Some(t) => FailureCause::ExitCode(t.exit_code),
        None => FailureCause::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::{job, settings};

    fn pod(phase: &str, extra: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "metadata: {{name: mnist-worker-1, labels: {{ferrotrain.io/rank: '1', ferrotrain.io/attempt: '2'}}}}\nspec: {{nodeName: n1, containers: []}}\nstatus: {{phase: {phase}{extra}}}\n"
        ))
        .expect("pod")
    }

    /// Kueue stops a pod group and its pods are gone before the next reconcile: their last state
    /// still says it was a preemption; a pod gone without a reason was deleted; a pod of another
    /// attempt or job is no worker of this one.
    #[test]
    fn a_deleted_pod_of_this_attempt_says_why_it_went() {
        let owned = |mut pod: Pod| {
            pod.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "ferrotrain.io/v1alpha1".into(),
                    kind: "TrainingJob".into(),
                    name: "mnist".into(),
                    uid: "u1".into(),
                    controller: Some(true),
                    block_owner_deletion: None,
                },
            ]);
            pod
        };
        let stopped = owned(pod(
            "Failed",
            ", conditions: [{type: TerminationTarget, status: 'True', reason: WorkloadEvictedDueToPreempted}]",
        ));
        let gone = gone_worker(&stopped, "u1", 2).expect("this attempt");
        assert_eq!(gone.state, WorkerState::Failed(FailureCause::Preempted));
        let deleted = owned(pod("Running", ""));
        assert_eq!(
            gone_worker(&deleted, "u1", 2).map(|w| w.state),
            Some(WorkerState::Failed(FailureCause::Deleted))
        );
        assert!(gone_worker(&deleted, "u1", 3).is_none(), "another attempt");
        assert!(gone_worker(&deleted, "u2", 2).is_none(), "another job");
        // A listed worker of the rank wins over the last state of a deleted one.
        let listed = worker_view(&deleted, |_| true).expect("worker");
        let merged = with_gone(vec![listed.clone()], vec![gone]);
        assert_eq!(merged, vec![listed]);
    }

    fn cause(extra: &str) -> WorkerState {
        worker_view(&pod("Failed", extra), |_| true)
            .expect("worker")
            .state
    }

    #[test]
    fn pods_read_back_as_workers() {
        let ready = |_: &str| true;
        assert_eq!(
            worker_view(&pod("Pending", ""), ready).map(|w| w.state),
            Some(WorkerState::Pending { scheduled: false })
        );
        let bound = pod(
            "Pending",
            ", conditions: [{type: PodScheduled, status: 'True'}]",
        );
        assert_eq!(
            worker_view(&bound, ready).map(|w| w.state),
            Some(WorkerState::Pending { scheduled: true })
        );
        let running = pod("Running", ", conditions: [{type: Ready, status: 'True'}]");
        let view = worker_view(&running, ready).expect("worker");
        assert_eq!(
            (view.rank, view.attempt, view.state),
            (1, 2, WorkerState::Running { ready: true })
        );
        assert_eq!(
            worker_view(&pod("Succeeded", ""), ready).map(|w| w.state),
            Some(WorkerState::Succeeded)
        );
        let mut deleting = pod("Running", "");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(
            worker_view(&deleting, |node| node != "n1").map(|w| w.state),
            Some(WorkerState::Terminating {
                since: jiff::Timestamp::UNIX_EPOCH,
                node_ready: false,
                cause: None,
            })
        );
        // What scheduler preemption leaves: DisruptionTarget, then a deletion whose timestamp
        // already includes the 30 s grace period.
        let mut preempted = pod(
            "Running",
            ", conditions: [{type: DisruptionTarget, status: 'True', reason: PreemptionByScheduler}]",
        );
        preempted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(30),
            ));
        preempted.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(
            worker_view(&preempted, ready).map(|w| w.state),
            Some(WorkerState::Terminating {
                since: jiff::Timestamp::UNIX_EPOCH,
                node_ready: true,
                cause: Some(FailureCause::Preempted),
            })
        );
        let mut drained = pod(
            "Failed",
            ", conditions: [{type: DisruptionTarget, status: 'True', reason: EvictionByEvictionAPI}]",
        );
        drained.metadata.deletion_timestamp = deleting.metadata.deletion_timestamp.clone();
        assert_eq!(
            worker_view(&drained, ready).map(|w| w.state),
            Some(WorkerState::Terminating {
                since: jiff::Timestamp::UNIX_EPOCH,
                node_ready: true,
                cause: Some(FailureCause::DisruptionTarget),
            })
        );
        let mut collected = pod("Succeeded", "");
        collected.metadata.deletion_timestamp = deleting.metadata.deletion_timestamp.clone();
        assert_eq!(
            worker_view(&collected, ready).map(|w| w.state),
            Some(WorkerState::Succeeded)
        );
        // Kueue stops an admitted pod group (preemption by a higher-priority workload, the
        // PodsReady timeout) with its own condition type, then deletes the pods: a preemption.
        // The reason as Kueue v0.17.0 writes it.
        let mut stopped = pod(
            "Running",
            ", conditions: [{type: TerminationTarget, status: 'True', reason: WorkloadEvictedDueToPreempted, message: Preempted to accommodate a workload}]",
        );
        stopped.metadata.deletion_timestamp = deleting.metadata.deletion_timestamp.clone();
        assert_eq!(
            worker_view(&stopped, ready).map(|w| w.state),
            Some(WorkerState::Terminating {
                since: jiff::Timestamp::UNIX_EPOCH,
                node_ready: true,
                cause: Some(FailureCause::Preempted),
            })
        );
        let gated = pod(
            "Pending",
            ", conditions: [{type: PodScheduled, status: 'False', reason: SchedulingGated}]",
        );
        assert_eq!(
            worker_view(&gated, ready).map(|w| w.state),
            Some(WorkerState::Gated)
        );
        let stuck = pod(
            "Pending",
            ", conditions: [{type: PodScheduled, status: 'True'}], containerStatuses: [{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: CreateContainerConfigError, message: 'key \"id\" not found'}}}]",
        );
        assert_eq!(
            worker_view(&stuck, ready).map(|w| w.state),
            Some(WorkerState::Stuck(StuckReason::CreateContainerConfigError))
        );
        let mut foreign = pod("Running", "");
        foreign.metadata.labels = None;
        assert_eq!(worker_view(&foreign, ready), None);
    }

    #[test]
    fn failure_causes_are_classified() {
        let exited = |code: i32, reason: &str| {
            format!(
                ", containerStatuses: [{{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {{terminated: {{exitCode: {code}, reason: {reason}}}}}}}]"
            )
        };
        assert_eq!(
            cause(", reason: Evicted"),
            WorkerState::Failed(FailureCause::Evicted)
        );
        assert_eq!(
            cause(
                ", conditions: [{type: DisruptionTarget, status: 'True', reason: PreemptionByScheduler}]"
            ),
            WorkerState::Failed(FailureCause::Preempted)
        );
        assert_eq!(
            cause(
                ", conditions: [{type: DisruptionTarget, status: 'True', reason: EvictionByEvictionAPI}]"
            ),
            WorkerState::Failed(FailureCause::DisruptionTarget)
        );
        assert_eq!(
            cause(&exited(137, "OOMKilled")),
            WorkerState::Failed(FailureCause::OomKilled)
        );
        // What a real kubelet reports for a container killed by SIGKILL from outside (the
        // runtime, a person on the node): exit 137 with reason Error. Not an OOM kill.
        assert_eq!(
            cause(&exited(137, "Error")),
            WorkerState::Failed(FailureCause::Signal(9))
        );
        assert_eq!(
            cause(&exited(75, "Error")),
            WorkerState::Failed(FailureCause::PreemptedAfterCheckpoint)
        );
        assert_eq!(
            cause(&exited(3, "Error")),
            WorkerState::Failed(FailureCause::ExitCode(3))
        );
        assert_eq!(
            cause(", reason: NodeLost"),
            WorkerState::Failed(FailureCause::NodeLost)
        );
        assert_eq!(
            worker_view(&pod("Unknown", ""), |_| true).map(|w| w.state),
            Some(WorkerState::Failed(FailureCause::NodeLost))
        );
    }

    #[test]
    fn slimming_keeps_what_the_lifecycle_reads() {
        let full = crate::cluster::children::worker_pod(&job(""), &settings(), 1, 2, 0);
        let mut slim = full.clone();
        slim_pod(&mut slim);
        assert!(
            serde_json::to_vec(&slim).expect("json").len() * 5
                < serde_json::to_vec(&full).expect("json").len()
        );
        let mut failed = pod(
            "Failed",
            ", containerStatuses: [{name: trainer, image: x, imageID: '', ready: false, restartCount: 0, state: {terminated: {exitCode: 137, reason: OOMKilled}}}]",
        );
        let before = worker_view(&failed, |_| true);
        slim_pod(&mut failed);
        assert_eq!(worker_view(&failed, |_| true), before);
    }
}
