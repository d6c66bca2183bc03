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

/// The field manager of every server-side apply.
pub const MANAGER: &str = "ferrotrain-operator";

/// Every (API group, resource, verb) the operator uses; the chart's ClusterRole must grant
/// exactly these.
pub const RBAC: &[(&str, &str, &[&str])] = &[
    (
        "ferrotrain.io",
        "trainingjobs",
        &["list", "watch", "delete"],
    ),
    ("ferrotrain.io", "trainingjobs/status", &["patch"]),
    ("", "pods", &["list", "watch", "create", "delete"]),
    ("", "services", &["create", "patch"]),
    ("", "secrets", &["get", "create"]),
    ("", "nodes", &["get"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];

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
}

impl Error {
    /// Metric label of the error category.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube_api",
            Error::Incomplete(_) => "invalid_object",
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
}

impl Context {
    /// A context with an event recorder named after the operator.
    pub fn new(client: Client, settings: Settings) -> Self {
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
        }
    }
}

/// One reconcile of one job.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
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

    if let Err(errors) = ferrotrain_crds::validate(&job) {
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
            write_status(&jobs, &name, &status).await?;
        }
        return Ok(Requeue::await_change());
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
            && !node_is_ready(&nodes, &node).await?
        {
            not_ready.push(node);
        }
    }
    let observed = Observed {
        workers: listed
            .items
            .iter()
            .filter_map(|p| children::worker_view(p, |n| !not_ready.iter().any(|x| x == n)))
            .collect(),
    };

    // Decide.
    let decision = decide(&job, &observed, now);

    // Apply.
    for action in &decision.actions {
        match action {
            Action::EnsureSupport => ensure_support(&job, &ctx).await?,
            Action::CreateWorkers {
                attempt,
                world_size,
            } => {
                for rank in 0..*world_size {
                    let pod =
                        children::worker_pod(&job, &ctx.settings, *attempt, *world_size, rank);
                    create_if_absent(&pods, &pod, "create worker pod").await?;
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
    if !decision.actions.contains(&Action::DeleteJob)
        && job.status.as_ref() != Some(&decision.status)
    {
        write_status(&jobs, &name, &decision.status).await?;
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
            action: "Reconcile".into(),
            secondary: None,
        };
        // Events are best effort: a failure to record one must not stall the job.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(job = %name, error = %e, "cannot record event");
        }
    }
    Ok(decision.requeue_after.map_or_else(
        || Requeue::requeue(Duration::from_secs(300)),
        Requeue::requeue,
    ))
}

/// Retry a failed reconcile after a short pause.
pub fn error_policy(_job: Arc<TrainingJob>, error: &Error, _ctx: Arc<Context>) -> Requeue {
    tracing::warn!(error = %error, category = error.metric_label(), "reconcile failed");
    Requeue::requeue(Duration::from_secs(15))
}

async fn node_is_ready(nodes: &Api<Node>, name: &str) -> Result<bool, Error> {
    let node = nodes
        .get_opt(name)
        .await
        .map_err(kube_error(format!("get node {name}")))?;
    Ok(node.is_some_and(|n| {
        n.status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    }))
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
    if secrets
        .get_opt(&secret_name)
        .await
        .map_err(kube_error("get token secret"))?
        .is_none()
    {
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

async fn write_status(
    jobs: &Api<TrainingJob>,
    name: &str,
    status: &TrainingJobStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "status": status,
    });
    jobs.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error("apply status"))?;
    Ok(())
}

/// Runs the controller until SIGTERM: watches TrainingJobs (in `namespace`, or all) and the pods
/// they own.
pub async fn run(client: Client, settings: Settings, namespace: Option<String>) {
    let (jobs, pods): (Api<TrainingJob>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let context = Arc::new(Context::new(client, settings));
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default().labels(LABEL_JOB))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile error");
            }
        })
        .await;
}
