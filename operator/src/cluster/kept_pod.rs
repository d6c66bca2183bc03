//! What the pod cache keeps of a pod: the few fields the lifecycle reads (rank, attempt, the
//! controller's UID, deletion, node, phase, the conditions and the trainer container's state it
//! interprets), in a struct of its own instead of a `Pod`. A `Pod`'s metadata and status, even
//! slimmed, came to about 4.6 KiB in 39 allocations a pod at 4,000 pods (the heap profile in
//! docs/benchmarks.md); the cache gives the lifecycle a `Pod` rebuilt from this on each look.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::cluster::labels::{LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK};

/// The pod conditions the lifecycle reads (scheduling, readiness, and why a pod is being
/// stopped); the others are dropped.
const CONDITIONS: [&str; 4] = [
    "PodScheduled",
    "Ready",
    "DisruptionTarget",
    "TerminationTarget",
];

/// The container whose state the lifecycle reads.
const TRAINER: &str = "trainer";

/// A pod as the cache keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeptPod {
    rank: Option<String>,
    attempt: Option<String>,
    controller_uid: Option<String>,
    deletion: Option<(Time, Option<i64>)>,
    node_name: Option<String>,
    phase: Option<String>,
    reason: Option<String>,
    conditions: Vec<KeptCondition>,
    /// The trainer container's state, where it has one.
    trainer: Option<Box<ContainerState>>,
}

#[derive(Clone, Debug, PartialEq)]
struct KeptCondition {
    type_: String,
    status: String,
    reason: Option<String>,
}

impl KeptPod {
    /// Keeps what the lifecycle reads of `pod`.
    pub fn new(pod: Pod) -> Self {
        let Pod {
            metadata,
            spec,
            status,
        } = pod;
        let mut labels = metadata.labels.unwrap_or_default();
        let status = status.unwrap_or_default();
        Self {
            rank: labels.remove(LABEL_RANK),
            attempt: labels.remove(LABEL_ATTEMPT),
            controller_uid: metadata
                .owner_references
                .into_iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid),
            deletion: metadata
                .deletion_timestamp
                .map(|at| (at, metadata.deletion_grace_period_seconds)),
            node_name: spec.and_then(|s| s.node_name),
            phase: status.phase,
            reason: status.reason,
            conditions: status
                .conditions
                .into_iter()
                .flatten()
                .filter(|c| CONDITIONS.contains(&c.type_.as_str()))
                .map(|c| KeptCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                })
                .collect(),
            trainer: status
                .container_statuses
                .into_iter()
                .flatten()
                .find(|c| c.name == TRAINER)
                .and_then(|c| c.state)
                .map(|state| Box::new(kept_state(state))),
        }
    }

    /// The pod `name` of `job` in `namespace`, as far as the lifecycle reads it.
    pub fn to_pod(&self, namespace: &str, job: &str, name: &str) -> Pod {
        let labels = [
            (LABEL_JOB, Some(job)),
            (LABEL_RANK, self.rank.as_deref()),
            (LABEL_ATTEMPT, self.attempt.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_string(), value?.to_string())))
        .collect::<BTreeMap<_, _>>();
        let owner_references = self.controller_uid.as_ref().map(|uid| {
            vec![OwnerReference {
                uid: uid.clone(),
                controller: Some(true),
                ..OwnerReference::default()
            }]
        });
        let conditions: Vec<PodCondition> = self
            .conditions
            .iter()
            .map(|c| PodCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                ..PodCondition::default()
            })
            .collect();
        let container_statuses = self.trainer.as_ref().map(|state| {
            vec![ContainerStatus {
                name: TRAINER.to_string(),
                state: Some(state.as_ref().clone()),
                ..ContainerStatus::default()
            }]
        });
        let status = (self.phase.is_some()
            || self.reason.is_some()
            || !conditions.is_empty()
            || container_statuses.is_some())
        .then(|| PodStatus {
            phase: self.phase.clone(),
            reason: self.reason.clone(),
            conditions: (!conditions.is_empty()).then_some(conditions),
            container_statuses,
            ..PodStatus::default()
        });
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels),
                owner_references,
                deletion_timestamp: self.deletion.as_ref().map(|(at, _)| at.clone()),
                deletion_grace_period_seconds: self.deletion.as_ref().and_then(|(_, grace)| *grace),
                ..ObjectMeta::default()
            },
            spec: self.node_name.as_ref().map(|node| PodSpec {
                node_name: Some(node.clone()),
                ..PodSpec::default()
            }),
            status,
        }
    }
}

/// A container state with only what the lifecycle reads: a waiting reason (a stuck pull or
/// config), and an exit's code, signal, reason and message (already cut by the watch).
fn kept_state(state: ContainerState) -> ContainerState {
    ContainerState {
        running: state.running.map(|_| Default::default()),
        waiting: state.waiting.map(|w| ContainerStateWaiting {
            reason: w.reason,
            message: None,
        }),
        terminated: state.terminated.map(|t| ContainerStateTerminated {
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.reason,
            message: t.message,
            ..ContainerStateTerminated::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fixtures::{job, settings};
    use crate::cluster::observe::{gone_worker, of_this_job, slim_pod, worker_view};

    /// A worker pod as the operator makes it, with `status` as the cluster reports it, slimmed
    /// as the watch slims it.
    fn reported(status: serde_json::Value, deleting: bool) -> Pod {
        let mut pod = crate::cluster::children::worker_pod(&job(""), &settings(), 2, 2, 1);
        pod.metadata.namespace = Some("ml".into());
        pod.metadata.uid = Some("pod-uid".into());
        pod.metadata.resource_version = Some("42".into());
        if deleting {
            pod.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
            pod.metadata.deletion_grace_period_seconds = Some(30);
        }
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some("n1".into());
        }
        pod.status = Some(serde_json::from_value(status).expect("status"));
        slim_pod(&mut pod);
        pod
    }

    fn statuses() -> Vec<serde_json::Value> {
        let conditions = serde_json::json!([
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True", "message": "all good"},
        ]);
        let container = |state: serde_json::Value| {
            serde_json::json!([{"name": "trainer", "image": "t", "imageID": "sha", "ready": false,
                "restartCount": 0, "containerID": "containerd://abc", "state": state}])
        };
        vec![
            serde_json::json!({"phase": "Pending"}),
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
            serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": container(serde_json::json!({"waiting": {"reason": "ErrImagePull", "message": "no such image"}}))}),
            serde_json::json!({"phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.1.0.1", "qosClass": "Guaranteed",
                "startTime": "2026-01-01T00:00:00Z", "conditions": conditions,
                "containerStatuses": container(serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}))}),
            serde_json::json!({"phase": "Succeeded",
                "containerStatuses": container(serde_json::json!({"terminated": {"exitCode": 0, "reason": "Completed"}}))}),
            serde_json::json!({"phase": "Failed", "containerStatuses": container(serde_json::json!(
                {"terminated": {"exitCode": 1, "reason": "Error", "message": "Traceback\nValueError: bad input\n",
                 "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z"}}))}),
            serde_json::json!({"phase": "Failed", "containerStatuses": container(serde_json::json!(
                {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))}),
            serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "low on memory"}),
            serde_json::json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]}),
            serde_json::json!({"phase": "Failed", "conditions": [{"type": "TerminationTarget", "status": "True", "reason": "WorkloadEvictedDueToPreempted"}]}),
            serde_json::json!({"phase": "Unknown"}),
        ]
    }

    /// Every reading of the lifecycle is the same on the kept pod as on the pod.
    #[test]
    fn the_lifecycle_reads_the_same_from_the_kept_pod() {
        for status in statuses() {
            for deleting in [false, true] {
                let pod = reported(status.clone(), deleting);
                let name = pod.metadata.name.clone().unwrap_or_default();
                let kept = KeptPod::new(pod.clone()).to_pod("ml", "mnist", &name);
                let ready = |node: &str| node != "n1";
                let view = worker_view(&pod, ready);
                assert!(view.is_some(), "{status}");
                assert_eq!(
                    worker_view(&kept, ready),
                    view,
                    "{status} deleting {deleting}"
                );
                for uid in ["0b0e", "another"] {
                    assert_eq!(
                        view.clone().map(|w| of_this_job(w, &kept, uid)),
                        view.clone().map(|w| of_this_job(w, &pod, uid)),
                    );
                    for attempt in [1, 2] {
                        assert_eq!(
                            gone_worker(&kept, uid, attempt),
                            gone_worker(&pod, uid, attempt),
                            "{status} deleting {deleting}"
                        );
                    }
                }
                assert_eq!(kept.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
                assert_eq!(
                    kept.metadata.deletion_timestamp,
                    pod.metadata.deletion_timestamp
                );
            }
        }
    }

    /// Small: a fixed part of a few hundred bytes (a `Pod` is over 2 KiB before its strings).
    #[test]
    fn a_kept_pod_is_small() {
        assert!(
            std::mem::size_of::<KeptPod>() <= 256,
            "{}",
            std::mem::size_of::<KeptPod>()
        );
        let running = reported(statuses()[3].clone(), false);
        let kept = KeptPod::new(running);
        assert_eq!(kept.conditions.len(), 2, "PodScheduled and Ready only");
    }
}
