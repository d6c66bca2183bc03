//! The writes a reconcile applies: the attempt's Secret (progress token, gang key), the Volcano
//! PodGroup, deletions, and the status, each with the operator's field manager.

use ferrotrain_crds::{TrainingJob, TrainingJobStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};

use crate::cluster::error::{Error, kube_error};
use crate::cluster::job_secret;
use crate::cluster::ownership::{controlled_by, held_by_another};
use crate::progress::{random_token, token_sha256};

/// The field manager of every server-side apply.
pub const MANAGER: &str = "ferrotrain-operator";

/// The field manager of progress writes (`status.progress`, `status.checkpoint`), kept apart so
/// that the reconciler's status applies and the progress writer never remove each other's fields.
pub const PROGRESS_MANAGER: &str = "ferrotrain-progress";

/// Once per attempt, makes the attempt's Secret (progress token and gang key) and records the
/// token's SHA-256 on the job for the progress endpoint; the previous attempt's Secret is then
/// deleted. Returns the job as annotated when a Secret was made.
pub(crate) async fn ensure_attempt_secret(
    job: &TrainingJob,
    client: &Client,
    attempt: u32,
) -> Result<Option<TrainingJob>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let current = job_secret::token_sha256_of(job);
    if current.is_some() && job_secret::token_attempt_of(job) == Some(attempt) {
        return Ok(None);
    }
    // The Secret comes first and is named after the token's digest: if recording the digest
    // fails, the next try makes a new token and Secret (the orphan goes with the job), and the
    // operator never needs to read a Secret back.
    let (Some(token), Some(gang_key)) = (random_token(), random_token()) else {
        return Err(Error::Incomplete(
            "system randomness for the progress token and gang key",
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let created = secrets
        .create(
            &PostParams::default(),
            &job_secret::token_secret(job, &token, &gang_key),
        )
        .await
        .map_err(kube_error("create token secret"))?;
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "resourceVersion": job.metadata.resource_version,
            "annotations": {
                job_secret::ANNOTATION_TOKEN_SHA256: token_sha256(&token),
                job_secret::ANNOTATION_TOKEN_ATTEMPT: attempt.to_string(),
                job_secret::ANNOTATION_TOKEN_SECRET_UID: created.metadata.uid,
            },
        },
    });
    let annotated = match jobs
        .patch(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(annotated) => annotated,
        Err(kube::Error::Api(status)) if status.code == 409 => return Err(Error::Conflict),
        Err(e) => return Err(kube_error("record the token digest")(e)),
    };
    if let (Some(digest), Some(uid)) = (current, job_secret::token_secret_uid_of(job)) {
        // By UID: only the Secret this job made, never another of the name.
        let name = job_secret::token_secret_name(&job.name_any(), digest);
        delete_with_uid(&secrets, &name, uid).await?;
    }
    Ok(Some(annotated))
}

/// Deletes `name` if it is still the object with `uid`; gone or replaced is fine.
async fn delete_with_uid<K>(api: &Api<K>, name: &str, uid: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(kube_error(format!("delete {name}"))(e)),
    }
}

pub(crate) async fn apply_pod_group(
    client: &Client,
    namespace: &str,
    group: &serde_json::Value,
) -> Result<(), Error> {
    let gvk = kube::api::GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "podgroups");
    let groups: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let name = group["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let uid = group["metadata"]["ownerReferences"][0]["uid"]
        .as_str()
        .unwrap_or_default();
    if let Some(holder) = held_by_another(&groups, "PodGroup", &name, uid).await? {
        return Err(Error::NameConflict(holder));
    }
    groups
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(group),
        )
        .await
        .map_err(kube_error("apply volcano pod group"))?;
    Ok(())
}

/// The Volcano PodGroup of an attempt that is over: one group per attempt would pile up. Only
/// the job's own: a group of that name that another owner holds stays.
pub(crate) async fn delete_pod_group(
    client: &Client,
    namespace: &str,
    name: &str,
    job_uid: &str,
) -> Result<(), Error> {
    let gvk = kube::api::GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "podgroups");
    let groups: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    let Some(group) = groups
        .get_opt(name)
        .await
        .map_err(kube_error(format!("read PodGroup {name}")))?
    else {
        return Ok(());
    };
    if !controlled_by(&group.metadata, job_uid) {
        return Ok(());
    }
    // The UID as a precondition: a group recreated under the name meanwhile is not deleted.
    match group.metadata.uid.as_deref() {
        Some(uid) => delete_with_uid(&groups, name, uid).await,
        None => Ok(()),
    }
}

pub(crate) async fn delete_if_present<K>(
    api: &Api<K>,
    name: &str,
    params: &DeleteParams,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(kube_error(format!("delete {name}"))(e)),
    }
}

/// The reconciler's status apply: everything but `progress` and `checkpoint` (the progress
/// writer's fields), with the resourceVersion the decision was made from as a precondition, so a
/// decision taken on a stale copy of the job is never written.
pub fn status_patch(job: &TrainingJob, status: &TrainingJobStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = status.as_object_mut() {
        fields.remove("progress");
        fields.remove("checkpoint");
    }
    serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"resourceVersion": job.metadata.resource_version},
        "status": status,
    })
}

pub(crate) async fn write_status(
    jobs: &Api<TrainingJob>,
    job: &TrainingJob,
    status: &TrainingJobStatus,
) -> Result<TrainingJob, Error> {
    let name = job.name_any();
    match jobs
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status_patch(job, status)),
        )
        .await
    {
        Ok(written) => Ok(written),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(e) => Err(kube_error("apply status")(e)),
    }
}
