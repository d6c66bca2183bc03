//! One reconcile of one job: observe its pods (from the cache) and nodes, run [`decide`], apply its
//! actions, write the status with server-side apply and record its events.
//!
//! [`decide`]: crate::decide::job::decide

use std::sync::Arc;
use std::time::Duration;

use ferrotrain_crds::{Phase, TrainingJob, TrainingJobStatus};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::cluster::apply::{
    MANAGER, apply_pod_group, delete_if_present, delete_pod_group, ensure_attempt_secret,
    write_status,
};
use crate::cluster::cache::{OwnWrites, PodIndex, SupportChecked};
use crate::cluster::children::{self, Settings};
use crate::cluster::error::{Error, kube_error};
use crate::cluster::hub::ProgressHub;
use crate::cluster::network_policy::worker_network_policy;
use crate::cluster::nodes::NodeReadiness;
use crate::cluster::observe;
use crate::cluster::ownership::create_unless_held;
use crate::decide::job::{Action, Observed, decide};

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
    /// Node readiness, from the node watch (unknown where nodes are not watched).
    pub nodes: Arc<NodeReadiness>,
    /// The reconciler's latest write of each job, until the job cache shows it.
    pub own_writes: OwnWrites,
    /// The attempt whose Service and NetworkPolicy each starting job was checked to have.
    pub support_checked: SupportChecked,
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
            nodes: Arc::new(NodeReadiness::default()),
            own_writes: OwnWrites::default(),
            support_checked: SupportChecked::default(),
        }
    }
}

/// One reconcile of one job; replicas that do not lead only wait.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    if !ctx.hub.is_leading() {
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
    // From the node watch: no API call per terminating pod.
    let not_ready: Vec<String> = listed
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .filter(|node| ctx.nodes.is_ready(node) == Some(false))
        .collect();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let attempt = crate::decide::status::current_attempt(job);
    // The Service (and NetworkPolicy) are created as a gang is about to start, before deciding:
    // a name that another owner holds is never written, and the decision waits for it. Once they
    // are the job's, the attempt's later looks do not ask again; a conflict is asked at each.
    let mut name_conflicts = Vec::new();
    if !about_to_start(job) {
        ctx.support_checked.forget(&uid);
    } else if !ctx.support_checked.is_checked(&uid, attempt) {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
        let service = children::service(job);
        name_conflicts.extend(create_unless_held(&services, "Service", &service, &uid).await?);
        if ctx.settings.worker_network_policy {
            let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
            let policy = worker_network_policy(job);
            let held = create_unless_held(&policies, "NetworkPolicy", &policy, &uid).await?;
            name_conflicts.extend(held);
        }
        if name_conflicts.is_empty() {
            ctx.support_checked.record(&uid, attempt);
        }
    }
    let key = (namespace.clone(), name.clone());
    let last_report = ctx.hub.last_report(&key, &uid, attempt);
    let step_seconds = ctx.hub.step_seconds(&key, &uid, attempt);
    let listed_workers = listed
        .iter()
        .filter_map(|p| {
            observe::worker_view(p, |n| !not_ready.iter().any(|x| x == n))
                .map(|w| observe::of_this_job(w, p, &uid))
        })
        .collect();
    let gone = ctx.pods.gone_of(&namespace, &name);
    let gone = gone
        .iter()
        .filter_map(|p| observe::gone_worker(p, &uid, attempt))
        .collect();
    let observed = Observed {
        name_conflicts,
        last_report,
        step_seconds,
        workers: observe::with_gone(listed_workers, gone),
    };

    // Decide.
    let mut decision = decide(job, &observed, now);

    // Apply, only while still the leader: a replica paused past its renew deadline must not act
    // on what it decided before the pause.
    if !ctx.hub.is_leading() {
        return Err(Error::NotLeader);
    }
    // Recording the token's digest changes the job: what follows uses the new copy.
    let mut job = std::borrow::Cow::Borrowed(job);
    let mut refused: Option<CreationRefused> = None;
    for action in &decision.actions {
        match action {
            Action::EnsureSupport { attempt } => {
                if let Some(annotated) = ensure_attempt_secret(&job, &ctx.client, *attempt).await? {
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
                            &uid,
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
            trial: None,
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
        if !ctx.hub.is_leading() {
            return Err(Error::NotLeader);
        }
        let written = write_status(&jobs, &job, &decision.status).await?;
        ctx.own_writes.record(key, &written);
    }
    let reference = job.object_ref(&());
    // A gang being created and running shows in the phase: recording it would cost every job two
    // event writes. Events are for what a user acts on.
    for event in decision.events.iter().filter(|e| !e.is_routine()) {
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

/// Whether the next decision may start a gang: the job is new, restarting, or resuming from a
/// suspension. Only then are its Service and NetworkPolicy created.
pub fn about_to_start(job: &TrainingJob) -> bool {
    let suspended = job
        .spec
        .run_policy
        .as_ref()
        .is_some_and(|p| p.suspend_or_default());
    match job.status.as_ref().and_then(|s| s.phase) {
        None | Some(Phase::Pending | Phase::Restarting) => true,
        Some(Phase::Suspended) => !suspended,
        Some(_) => false,
    }
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
