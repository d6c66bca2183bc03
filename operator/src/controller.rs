//! The Kubernetes side: observe a job's pods, run [`decide`], apply its actions and write the status
//! with server-side apply. Every API call the operator makes is listed in [`RBAC`].

use std::sync::Arc;
use std::time::Duration;

use ferrotrain_crds::{Phase, TrainingJob, TrainingJobStatus};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::children::{self, LABEL_JOB, Settings};
use crate::lifecycle::{Action, Observed, decide};
use crate::progress::random_token;
use crate::server::{JobDirectory, JobInfo, ProgressHub};

/// Selects rustls' ring provider for this process. Dependencies enable both of rustls' providers
/// (ring for the Kubernetes client, aws-lc-rs through the S3 client), and rustls then refuses to
/// pick one: the first TLS connection to the API server would panic. Call before any client.
pub fn install_tls_provider() {
    // An error means a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The field manager of every server-side apply.
pub const MANAGER: &str = "ferrotrain-operator";

/// Every (API group, resource, verb) the operator uses; the chart's ClusterRole must grant
/// exactly these.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    (
        "ferrotrain.io",
        "trainingjobs",
        &["get", "list", "watch", "delete"],
    ),
    ("ferrotrain.io", "trainingjobs/status", &["patch"]),
    ("", "pods", &["list", "watch", "create", "delete"]),
    ("", "services", &["create", "patch"]),
    ("", "secrets", &["get", "create"]),
    ("", "nodes", &["get"]),
    (
        "scheduling.volcano.sh",
        "podgroups",
        &["create", "patch", "delete"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

/// The field manager of progress writes (`status.progress`, `status.checkpoint`), kept apart so
/// that the reconciler's status applies and the progress writer never remove each other's fields.
pub const PROGRESS_MANAGER: &str = "ferrotrain-progress";

/// A reconcile failure, with a label for metrics and events.
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
    #[error("TrainingJob without {0}")]
    Incomplete(&'static str),
    /// The status write lost a race: the job changed since the cached copy was read.
    #[error("the job changed since it was read (status write conflict); reconciling again")]
    Conflict,
    /// A child of another job with the same name (deleted, not yet collected) is in the way.
    #[error("{0} still belongs to an earlier job of the same name; waiting for it to be collected")]
    ForeignChild(String),
}

impl Error {
    /// Metric label of the error category.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Incomplete(_) => "invalid_object",
            Error::Conflict => "conflict",
            Error::ForeignChild(_) => "foreign_child",
        }
    }

    /// How long to wait before reconciling again.
    pub fn retry_after(&self) -> Duration {
        match self {
            // The watch delivers the newer object within moments.
            Error::Conflict => Duration::from_millis(500),
            Error::ForeignChild(_) => Duration::from_secs(2),
            Error::Kube { .. } | Error::Incomplete(_) => Duration::from_secs(15),
        }
    }
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Shared reconcile state.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Pod builder settings.
    pub settings: Settings,
    /// Publishes events.
    pub recorder: Recorder,
    /// Leadership, progress and metrics shared with the HTTP server.
    pub hub: Arc<ProgressHub>,
}

impl Context {
    /// A context with an event recorder named after the operator.
    pub fn new(client: Client, settings: Settings, hub: Arc<ProgressHub>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Self {
            client,
            settings,
            recorder,
            hub,
        }
    }
}

/// One reconcile of one job; replicas that do not lead only wait.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.hub.leader.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Requeue::requeue(crate::leader::RENEW_EVERY));
    }
    let started = std::time::Instant::now();
    let result = reconcile_as_leader(&job, &ctx).await;
    let (status, error) = match &result {
        Ok((_, status)) => (status.as_ref(), None),
        Err(e) => (None, Some(e.metric_label())),
    };
    ctx.hub.observe_reconcile(
        &format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any()),
        started.elapsed().as_secs_f64(),
        status,
        error,
    );
    result.map(|(requeue, _)| requeue)
}

async fn reconcile_as_leader(
    job: &TrainingJob,
    ctx: &Context,
) -> Result<(Requeue, Option<TrainingJobStatus>), Error> {
    let namespace = job
        .namespace()
        .ok_or(Error::Incomplete("metadata.namespace"))?;
    let name = job
        .metadata
        .name
        .clone()
        .ok_or(Error::Incomplete("metadata.name"))?;
    let jobs: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();

    if let Err(errors) = ferrotrain_crds::validate(job) {
        let mut status = job.status.clone().unwrap_or_default();
        if status.phase != Some(Phase::Failed) {
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            crate::lifecycle::set_condition(
                &mut status.conditions,
                "Failed",
                true,
                "InvalidSpec",
                &message,
                now,
                job.metadata.generation,
            );
            status.phase = Some(Phase::Failed);
            status.message = Some(message);
            write_status(&jobs, job, &status).await?;
        }
        return Ok((Requeue::await_change(), Some(status)));
    }

    // Observe.
    let listed = pods
        .list(&ListParams::default().labels(&format!("{LABEL_JOB}={name}")))
        .await
        .map_err(kube_error("list pods"))?;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut not_ready = Vec::new();
    for pod in listed
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
    {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
            && node_is_ready(&nodes, &node).await? == Some(false)
        {
            not_ready.push(node);
        }
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let observed = Observed {
        workers: listed
            .items
            .iter()
            .filter_map(|p| {
                children::worker_view(p, |n| !not_ready.iter().any(|x| x == n))
                    .map(|w| children::of_this_job(w, p, &uid))
            })
            .collect(),
    };

    // Decide.
    let mut decision = decide(job, &observed, now);

    // Apply.
    let mut refused: Option<CreationRefused> = None;
    for action in &decision.actions {
        match action {
            Action::EnsureSupport => ensure_support(job, ctx).await?,
            Action::CreateWorkers {
                attempt,
                world_size,
            } => {
                if let Some(group) = children::pod_group(job, *attempt, *world_size) {
                    apply_pod_group(&ctx.client, &namespace, &group).await?;
                    if *attempt > 1 {
                        delete_pod_group(
                            &ctx.client,
                            &namespace,
                            &format!("{name}-{}", attempt - 1),
                        )
                        .await?;
                    }
                }
                // Every rank is tried: creation is idempotent, and one refusal (quota, Pod
                // Security, a webhook) is reported on the job instead of hiding the others.
                for rank in 0..*world_size {
                    let pod = children::worker_pod(job, &ctx.settings, *attempt, *world_size, rank);
                    match pods.create(&PostParams::default(), &pod).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(status)) if status.code == 409 => {}
                        Err(kube::Error::Api(status)) if refused.is_none() => {
                            refused = Some(CreationRefused::from_status(rank, &status));
                        }
                        Err(kube::Error::Api(_)) => {}
                        Err(e) => return Err(kube_error("create worker pod")(e)),
                    }
                }
            }
            Action::DeleteWorkers { names, force } => {
                let params = if *force {
                    DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    }
                } else {
                    DeleteParams::default()
                };
                for pod in names {
                    delete_if_present(&pods, pod, &params).await?;
                }
            }
            Action::DeleteJob => {
                delete_if_present(&jobs, &name, &DeleteParams::background()).await?
            }
        }
    }
    if let Some(refused) = &refused {
        crate::lifecycle::set_condition(
            &mut decision.status.conditions,
            "WorkersCreated",
            false,
            &refused.reason,
            &refused.message,
            now,
            job.metadata.generation,
        );
        decision.events.push(crate::lifecycle::Event {
            warning: true,
            reason: refused.reason.clone(),
            message: refused.message.clone(),
        });
        decision.requeue_after = Some(
            decision
                .requeue_after
                .map_or(CREATE_RETRY, |r| r.min(CREATE_RETRY)),
        );
    } else if decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreateWorkers { .. }))
        && decision
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "WorkersCreated" && c.status == "False")
    {
        crate::lifecycle::set_condition(
            &mut decision.status.conditions,
            "WorkersCreated",
            true,
            "Created",
            "every worker of the attempt was created",
            now,
            job.metadata.generation,
        );
    }
    if !decision.actions.contains(&Action::DeleteJob)
        && job.status.as_ref() != Some(&decision.status)
    {
        write_status(&jobs, job, &decision.status).await?;
    }
    let reference = job.object_ref(&());
    for event in &decision.events {
        let event = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.clone(),
            note: Some(event.message.clone()),
            // kube-runtime's recorder folds events with the same action and reason into one
            // series that keeps the first message: one series per attempt keeps each failure's.
            action: format!(
                "Attempt{}",
                job.status.as_ref().and_then(|s| s.attempt).unwrap_or(1)
            ),
            secondary: None,
        };
        // Events are best effort: a failure to record one must not stall the job.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(job = %name, error = %e, "cannot record event");
        }
    }
    let requeue = decision.requeue_after.map_or_else(
        || Requeue::requeue(Duration::from_secs(300)),
        Requeue::requeue,
    );
    Ok((requeue, Some(decision.status)))
}

/// How soon a gang whose pods the API server refused is tried again.
const CREATE_RETRY: Duration = Duration::from_secs(15);

/// Why the API server refused a worker pod, as a condition reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationRefused {
    /// CamelCase reason: QuotaExceeded, PodSecurityRejected, InvalidPod, or the API's own.
    pub reason: String,
    /// The API server's message, with the rank.
    pub message: String,
}

impl CreationRefused {
    /// Classifies the API server's answer to a pod creation.
    pub fn from_status(rank: u32, status: &kube::core::Status) -> Self {
        let reason = if status.message.contains("exceeded quota") {
            "QuotaExceeded".to_string()
        } else if status.message.contains("violates PodSecurity") {
            "PodSecurityRejected".to_string()
        } else if status.code == 422 {
            "InvalidPod".to_string()
        } else if status.reason.is_empty() {
            format!("CreateFailed{}", status.code)
        } else {
            status.reason.clone()
        };
        Self {
            reason,
            message: format!("worker rank {rank} was refused: {}", status.message),
        }
    }
}

/// Retry a failed reconcile after a pause that fits the failure.
pub fn error_policy(_job: Arc<TrainingJob>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, category = error.metric_label(), "reconcile failed");
    Requeue::requeue(error.retry_after())
}

/// Whether a node is Ready: `None` when this operator may not read nodes (a namespaced
/// install without the nodes ClusterRole), so stuck pods are left to the cluster.
async fn node_is_ready(nodes: &Api<Node>, name: &str) -> Result<Option<bool>, Error> {
    let node = match nodes.get_opt(name).await {
        Ok(node) => node,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(
                node = name,
                "may not read nodes: the readiness of this pod's node is unknown, so it is not force-deleted"
            );
            return Ok(None);
        }
        Err(e) => return Err(kube_error(format!("get node {name}"))(e)),
    };
    Ok(Some(node.is_some_and(|n| {
        n.status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })))
}

async fn ensure_support(job: &TrainingJob, ctx: &Context) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let service = children::service(job);
    let service_name = service.name_any();
    services
        .patch(
            &service_name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await
        .map_err(kube_error("apply service"))?;
    // The token is generated once; re-applying would rotate it under running workers.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret_name = children::token_secret_name(&job.name_any());
    let existing = secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_error("get token secret"))?;
    if let Some(secret) = &existing
        && !children::owned_by(
            &secret.metadata,
            job.metadata.uid.as_deref().unwrap_or_default(),
        )
    {
        return Err(Error::ForeignChild(format!("Secret {secret_name}")));
    }
    if existing.is_none() {
        let token = random_token().ok_or(Error::Incomplete(
            "system randomness for the progress token",
        ))?;
        create_if_absent(
            &secrets,
            &children::token_secret(job, &token),
            "create token secret",
        )
        .await?;
    }
    Ok(())
}

async fn apply_pod_group(
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

/// The Volcano PodGroup of an attempt that is over: one group per attempt would pile up.
async fn delete_pod_group(client: &Client, namespace: &str, name: &str) -> Result<(), Error> {
    let gvk = kube::api::GroupVersionKind::gvk("scheduling.volcano.sh", "v1beta1", "PodGroup");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "podgroups");
    let groups: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &resource);
    delete_if_present(&groups, name, &DeleteParams::background()).await
}

async fn create_if_absent<K>(api: &Api<K>, object: &K, action: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(kube_error(action)(e)),
    }
}

async fn delete_if_present<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<(), Error>
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

async fn write_status(
    jobs: &Api<TrainingJob>,
    job: &TrainingJob,
    status: &TrainingJobStatus,
) -> Result<(), Error> {
    let name = job.name_any();
    match jobs
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&status_patch(job, status)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(e) => Err(kube_error("apply status")(e)),
    }
}

/// Writes coalesced progress into each job's status, at most every few seconds per job, while
/// this replica leads.
pub async fn write_progress(client: Client, hub: Arc<ProgressHub>) {
    loop {
        for ((namespace, name), status) in hub.due_writes(Timestamp::now()) {
            let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
            let patch = serde_json::json!({
                "apiVersion": "ferrotrain.io/v1alpha1",
                "kind": "TrainingJob",
                "status": {"progress": status.progress, "checkpoint": status.checkpoint},
            });
            if let Err(e) = jobs
                .patch_status(
                    &name,
                    &PatchParams::apply(PROGRESS_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                tracing::warn!(job = %name, error = %e, "cannot write progress");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Looks up a job's token, attempt and batch size for the progress endpoint.
pub struct KubeDirectory {
    /// API client.
    pub client: Client,
}

impl JobDirectory for KubeDirectory {
    async fn lookup(&self, namespace: &str, name: &str) -> Option<JobInfo> {
        let jobs: Api<TrainingJob> = Api::namespaced(self.client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let job = jobs.get_opt(name).await.ok()??;
        let secret = secrets
            .get_opt(&children::token_secret_name(name))
            .await
            .ok()??;
        let token = secret.data.and_then(|d| {
            d.get(children::TOKEN_KEY)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        })?;
        Some(JobInfo {
            token,
            attempt: job
                .status
                .as_ref()
                .and_then(|s| s.attempt)
                .unwrap_or(1)
                .max(1) as u32,
            batch_size: job.spec.trainer.batch_size.max(1) as u64,
        })
    }
}

/// Runs the controller until SIGTERM: watches TrainingJobs (in `namespace`, or all) and the pods
/// they own, reconciling while `hub` says this replica leads.
pub async fn run(
    client: Client,
    settings: Settings,
    namespace: Option<String>,
    hub: Arc<ProgressHub>,
) {
    let (jobs, pods): (Api<TrainingJob>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    hub.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let context = Arc::new(Context::new(client, settings, Arc::clone(&hub)));
    let controller = Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(LABEL_JOB));
    // Deleted jobs are never reconciled again: drop their metric series against the job cache.
    let store = controller.store();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let live: std::collections::HashSet<String> = store
                .state()
                .iter()
                .map(|j| format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any()))
                .collect();
            hub.retain_jobs(|key| live.contains(key));
        }
    });
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
        })
        .await;
}
