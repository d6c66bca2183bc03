//! The labels and metadata every object the operator makes for a job carries: which job it
//! belongs to, the job as its controller, and for workers their rank and attempt.

use std::collections::BTreeMap;

use ferrotrain_crds::TrainingJob;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

/// Label: the job a child belongs to.
pub const LABEL_JOB: &str = "ferrotrain.io/job";

/// Label: a worker's rank.
pub const LABEL_RANK: &str = "ferrotrain.io/rank";

/// Label: a worker's gang attempt.
pub const LABEL_ATTEMPT: &str = "ferrotrain.io/attempt";

/// The labels of every child of `job`.
pub fn base_labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_JOB.to_string(), job.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ferrotrain".to_string(),
        ),
        (
            "app.kubernetes.io/name".to_string(),
            "ferrotrain-worker".to_string(),
        ),
    ])
}

/// Metadata of a child named `name`: in the job's namespace, with `labels`, the job as its
/// controller.
pub fn child_meta(job: &TrainingJob, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}
