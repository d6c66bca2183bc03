//! The Kubernetes side: observe a job's pods, run [`decide`], apply its actions and write the status
//! with server-side apply. Every API call the operator makes is listed in [`RBAC`].

use std::sync::Arc;
use std::time::Duration;

use ferrotrain_crds::{Phase, TrainingJob, TrainingJobStatus};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::cluster::cache::{OwnWrites, PodIndex};
use crate::cluster::children::{self, LABEL_JOB, Settings};
use crate::cluster::hub::{JobDirectory, JobInfo, ProgressHub};
use crate::cluster::observe;
use crate::decide::job::{Action, Observed, decide};
use crate::progress::{random_token, token_sha256};

/// The field manager of every server-side apply.
pub const MANAGER: &str = "ferrotrain-operator";

/// Every (API group, resource, verb) the operator uses; the chart's ClusterRole must grant
/// exactly these.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    (
        "ferrotrain.io",
        "trainingjobs",
        // create: the trials of sweeps.
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("ferrotrain.io", "trainingjobs/status", &["patch"]),
    ("ferrotrain.io", "trainingsweeps", &["list", "watch"]),
    ("ferrotrain.io", "trainingsweeps/status", &["patch"]),
    ("", "pods", &["list", "watch", "create", "delete"]),
    ("", "services", &["create", "patch"]),
    // Write-only: the progress endpoint checks tokens against the digest on the job.
    ("", "secrets", &["create"]),
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
    /// The pod cache has not completed its first list: nothing can be decided yet.
    #[error("the pod cache is not yet filled")]
    CacheNotReady,
}

impl Error {
    /// Metric label of the error category.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Incomplete(_) => "invalid_object",
            Error::Conflict => "conflict",
            Error::CacheNotReady => "cache_not_ready",
        }
    }

    /// How long to wait before reconciling again.
    pub fn retry_after(&self) -> Duration {
        match self {
            // The watch delivers the newer object within moments.
            Error::Conflict => Duration::from_millis(500),
            Error::CacheNotReady => Duration::from_secs(1),
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
    /// The operator's pods, from one watch.
    pub pods: Arc<PodIndex>,
    /// The reconciler's latest write of each job, until the job cache shows it.
    pub own_writes: OwnWrites,
}

impl Context {
    /// A context with an event recorder named after the operator.
    pub fn new(
        client: Client,
        settings: Settings,
        hub: Arc<ProgressHub>,
        pods: Arc<PodIndex>,
    ) -> Self {
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
            pods,
            own_writes: OwnWrites::default(),
        }
    }
}

/// One reconcile of one job; replicas that do not lead only wait.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.hub.leader.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Requeue::requeue(crate::cluster::leader::RENEW_EVERY));
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
    let key = (namespace.clone(), name.clone());
    if ctx.own_writes.is_stale(&key, job) {
        // The watch delivers the written copy within moments and triggers the next reconcile.
        return Ok((Requeue::requeue(Duration::from_secs(1)), None));
    }
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
            crate::decide::status::set_condition(
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
            let written = write_status(&jobs, job, &status).await?;
            ctx.own_writes.record(key, &written);
        }
        return Ok((Requeue::await_change(), Some(status)));
    }

    // Observe, from the pod cache.
    if !ctx.pods.is_listed() {
        return Err(Error::CacheNotReady);
    }
    let listed = ctx.pods.pods_of(&namespace, &name);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut not_ready = Vec::new();
    for pod in listed
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
            .iter()
            .filter_map(|p| {
                observe::worker_view(p, |n| !not_ready.iter().any(|x| x == n))
                    .map(|w| observe::of_this_job(w, p, &uid))
            })
            .collect(),
    };

    // Decide.
    let mut decision = decide(job, &observed, now);

    // Apply. Recording the token's digest changes the job: what follows uses the new copy.
    let mut job = std::borrow::Cow::Borrowed(job);
    let mut refused: Option<CreationRefused> = None;
    for action in &decision.actions {
        match action {
            Action::EnsureSupport => {
                if let Some(annotated) = ensure_support(&job, ctx).await? {
                    ctx.own_writes.record(key.clone(), &annotated);
                    job = std::borrow::Cow::Owned(annotated);
                }
            }
            Action::CreateWorkers {
                attempt,
                world_size,
            } => {
                if let Some(group) = children::pod_group(&job, *attempt, *world_size) {
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
                    let pod =
                        children::worker_pod(&job, &ctx.settings, *attempt, *world_size, rank);
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
        crate::decide::status::set_condition(
            &mut decision.status.conditions,
            "WorkersCreated",
            false,
            &refused.reason,
            &refused.message,
            now,
            job.metadata.generation,
        );
        decision.events.push(crate::decide::job::Event {
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
        crate::decide::status::set_condition(
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
        let written = write_status(&jobs, &job, &decision.status).await?;
        ctx.own_writes.record(key, &written);
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

/// Applies the headless Service and, once per job, makes the progress token: a Secret for the
/// workers and the token's SHA-256 on the job for the progress endpoint. Returns the job as
/// annotated when a token was made.
async fn ensure_support(job: &TrainingJob, ctx: &Context) -> Result<Option<TrainingJob>, Error> {
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
    if children::token_sha256_of(job).is_some() {
        return Ok(None);
    }
    // The Secret comes first and is named after the token's digest: if recording the digest
    // fails, the next try makes a new token and Secret (the orphan goes with the job), and the
    // operator never needs to read a Secret back.
    let token = random_token().ok_or(Error::Incomplete(
        "system randomness for the progress token",
    ))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    secrets
        .create(&PostParams::default(), &children::token_secret(job, &token))
        .await
        .map_err(kube_error("create token secret"))?;
    let jobs: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "resourceVersion": job.metadata.resource_version,
            "annotations": {children::ANNOTATION_TOKEN_SHA256: token_sha256(&token)},
        },
    });
    match jobs
        .patch(
            &job.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(annotated) => Ok(Some(annotated)),
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict),
        Err(e) => Err(kube_error("record the token digest")(e)),
    }
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

/// How many progress writes are in flight at once.
const PROGRESS_WRITERS: usize = 16;

/// Writes coalesced progress into each job's status, at most every few seconds per job, while
/// this replica leads. `client` should have a rate limit of its own, so that progress never
/// delays the reconciler's calls.
pub async fn write_progress(client: Client, hub: Arc<ProgressHub>) {
    loop {
        let started = tokio::time::Instant::now();
        futures::stream::iter(hub.due_writes(Timestamp::now()))
            .for_each_concurrent(PROGRESS_WRITERS, |((namespace, name), status)| {
                let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
                async move {
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
            })
            .await;
        tokio::time::sleep_until(started + Duration::from_secs(1)).await;
    }
}

/// The progress endpoint's view of jobs: the controller's job cache, so that authenticating a
/// report costs no API call.
pub struct KubeDirectory {
    /// The job cache.
    pub jobs: Store<TrainingJob>,
}

/// How long a report waits for the job cache's first list before it is refused.
const DIRECTORY_WARMUP: Duration = Duration::from_secs(5);

impl JobDirectory for KubeDirectory {
    async fn lookup(&self, namespace: &str, name: &str) -> Option<JobInfo> {
        tokio::time::timeout(DIRECTORY_WARMUP, self.jobs.wait_until_ready())
            .await
            .ok()?
            .ok()?;
        let job = self.jobs.get(&ObjectRef::new(name).within(namespace))?;
        Some(JobInfo {
            token_sha256: children::token_sha256_of(&job)?.to_string(),
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

/// Pod events of one job come in bursts (a gang is scheduled, starts, becomes ready): they are
/// folded into one reconcile once the job's pods have been quiet this long. Progress writes never
/// reach the scheduler (the predicate drops them), so nothing keeps delaying a job.
const RECONCILE_DEBOUNCE: Duration = Duration::from_secs(1);

/// How the controller runs: the namespace it watches and how many jobs it reconciles at once.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Only this namespace (a namespaced install), or every namespace.
    pub namespace: Option<String>,
    /// Reconciles in flight at once (at least 1).
    pub concurrency: u16,
}

/// The job cache and the writer that fills it: made before the controller, so that the progress
/// endpoint reads the same cache.
pub fn job_cache() -> (Store<TrainingJob>, reflector::store::Writer<TrainingJob>) {
    reflector::store()
}

/// Runs the controller until SIGTERM: watches TrainingJobs (in the namespace, or all) into
/// `job_cache`, and the pods they own into a slim pod cache, reconciling while `hub` says this
/// replica leads.
pub async fn run(
    client: Client,
    settings: Settings,
    options: RunOptions,
    job_cache: (Store<TrainingJob>, reflector::store::Writer<TrainingJob>),
    hub: Arc<ProgressHub>,
) {
    let (jobs, pods): (Api<TrainingJob>, Api<Pod>) = match &options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (store, writer) = job_cache;
    // Managed fields are most of a job's bytes and nothing reads them: the cache drops them.
    let job_events = watcher(jobs, watcher::Config::default())
        .default_backoff()
        .map_ok(|event| event.modify(|job| job.metadata.managed_fields = None))
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            crate::cluster::cache::decision_inputs,
            PredicateConfig::default(),
        );
    let index = Arc::new(PodIndex::default());
    let pod_events = {
        let index = Arc::clone(&index);
        watcher(pods, watcher::Config::default().labels(LABEL_JOB))
            .default_backoff()
            .map_ok(|event| event.modify(observe::slim_pod))
            .map_ok(move |event| {
                index.apply(&event);
                event
            })
            .touched_objects()
    };
    hub.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let context = Arc::new(Context::new(client, settings, Arc::clone(&hub), index));
    let controller = Controller::for_stream(job_events, store.clone())
        .owns_stream(pod_events)
        .with_config(
            ControllerConfig::default()
                .concurrency(options.concurrency.max(1))
                .debounce(RECONCILE_DEBOUNCE),
        );
    // Deleted jobs are never reconciled again: drop their metric series and write records
    // against the job cache.
    let own = Arc::clone(&context);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let live: std::collections::HashSet<String> = store
                .state()
                .iter()
                .map(|j| format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any()))
                .collect();
            hub.retain_jobs(|key| live.contains(key));
            own.own_writes
                .retain(|(namespace, name)| live.contains(&format!("{namespace}/{name}")));
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
