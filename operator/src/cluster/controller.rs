//! The TrainingJob controller: the watches of jobs and of the operator's pods that feed it, the
//! reconciles it runs (`reconcile`), the progress writer, and every API call the operator makes
//! ([`RBAC`]).

use std::sync::Arc;
use std::time::Duration;

use ferrotrain_crds::TrainingJob;
use futures::{Stream, StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{
    Action as Requeue, Config as ControllerConfig, Controller, Error as ControllerError,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::cluster::apply::PROGRESS_MANAGER;
use crate::cluster::cache::PodIndex;
use crate::cluster::children::Settings;
use crate::cluster::error::Error;
use crate::cluster::hub::{JobDirectory, JobInfo, ProgressHub};
use crate::cluster::job_secret;
use crate::cluster::labels::LABEL_JOB;
use crate::cluster::nodes::NodeReadiness;
use crate::cluster::observe;
use crate::cluster::reconcile::{Context, about_to_start, error_policy, reconcile};
use crate::cluster::turns::Turns;

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
    // Created, never changed; get: only after a refused create, to see who holds the name.
    ("", "services", &["get", "create"]),
    // Never read: the progress endpoint checks tokens against the digest on the job. delete: the
    // previous attempt's Secret, by its UID.
    ("", "secrets", &["create", "delete"]),
    // The per-job NetworkPolicy, as the Service.
    ("networking.k8s.io", "networkpolicies", &["get", "create"]),
    // list, watch: node readiness for pods stuck on lost nodes, from one watch.
    ("", "nodes", &["list", "watch"]),
    (
        "scheduling.volcano.sh",
        "podgroups",
        &["get", "create", "patch", "delete"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

/// How many progress writes are in flight at once.
const PROGRESS_WRITERS: usize = 16;

/// Writes coalesced progress into each job's status, at most every few seconds per job, while
/// this replica leads. `client` should have a rate limit of its own, so that progress never
/// delays the reconciler's calls.
pub async fn write_progress(client: Client, hub: Arc<ProgressHub>) {
    loop {
        let started = tokio::time::Instant::now();
        futures::stream::iter(hub.due_writes(Timestamp::now()))
            .for_each_concurrent(PROGRESS_WRITERS, |((namespace, name, uid), status)| {
                let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);
                async move {
                    // The UID makes the write fail on a job recreated under the name meanwhile.
                    let patch = serde_json::json!({
                        "apiVersion": "ferrotrain.io/v1alpha1",
                        "kind": "TrainingJob",
                        "metadata": {"uid": uid},
                        "status": {
                            "progress": status.progress,
                            "checkpoint": status.checkpoint,
                            "output": status.output,
                        },
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
            uid: job.metadata.uid.clone()?,
            token_sha256: job_secret::token_sha256_of(&job)?.to_string(),
            attempt: crate::decide::status::current_attempt(&job),
            batch_size: job.spec.trainer.batch_size.max(1) as u64,
            output_uri: job.spec.output.as_ref().map(|o| o.uri.clone()),
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
    // Nodes only for an install that watches every namespace: a namespaced one may not read
    // them, and leaves pods stuck on lost nodes to the cluster.
    let nodes = Arc::new(NodeReadiness::default());
    if options.namespace.is_none() {
        let nodes = Arc::clone(&nodes);
        let api: Api<Node> = Api::all(client.clone());
        tokio::spawn(async move {
            watcher(api, watcher::Config::default())
                .default_backoff()
                .for_each(|event| {
                    if let Ok(event) = event {
                        nodes.apply(&event);
                    }
                    futures::future::ready(())
                })
                .await;
        });
    }
    hub.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut context = Context::new(client, settings, Arc::clone(&hub), index);
    context.nodes = nodes;
    let context = Arc::new(context);
    let controller = Controller::for_stream(job_events, store.clone()).owns_stream(pod_events);
    // Deleted jobs are never reconciled again: drop their metric series and write records
    // against the job cache.
    let own = Arc::clone(&context);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let jobs = store.state();
            let live: std::collections::HashSet<String> = jobs
                .iter()
                .map(|j| format!("{}/{}", j.namespace().unwrap_or_default(), j.name_any()))
                .collect();
            let uids: std::collections::HashSet<&str> = jobs
                .iter()
                .filter_map(|j| j.metadata.uid.as_deref())
                .collect();
            hub.retain_jobs(|key| live.contains(key));
            own.own_writes
                .retain(|(namespace, name)| live.contains(&format!("{namespace}/{name}")));
            own.support_checked.retain(|uid| uids.contains(uid));
        }
    });
    reconciles(
        controller.shutdown_on_signal(),
        options.concurrency,
        reconcile,
        error_policy,
        context,
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "reconcile error");
        }
    })
    .await;
}

/// The reconciles `controller` triggers, at most `concurrency` at once, each in its turn
/// ([`Turns`]; a quarter of them kept from starts of gangs): kube-runtime's own limit would leave some
/// jobs waiting without end while others are looked at again and again.
pub fn reconciles<Ctx, Fut>(
    controller: Controller<TrainingJob>,
    concurrency: u16,
    reconcile: impl Fn(Arc<TrainingJob>, Arc<Ctx>) -> Fut + Clone + Send + 'static,
    error_policy: impl Fn(Arc<TrainingJob>, &Error, Arc<Ctx>) -> Requeue,
    context: Arc<Ctx>,
) -> impl Stream<Item = Result<(ObjectRef<TrainingJob>, Requeue), ControllerError<Error, watcher::Error>>>
where
    Fut: Future<Output = Result<Requeue, Error>> + Send + 'static,
    Ctx: Send + Sync + 'static,
{
    let turns = Arc::new(Turns::new(concurrency, controller.store()));
    let in_turn = move |job: Arc<TrainingJob>, ctx: Arc<Ctx>| {
        let turns = Arc::clone(&turns);
        let reconcile = reconcile.clone();
        async move {
            let (_turn, latest) = turns.take(&job, about_to_start(&job)).await;
            match latest {
                // Boxed: a waiting reconcile holds only this small future, not the reconcile's.
                Some(job) => Box::pin(reconcile(job, ctx)).await,
                None => Ok(Requeue::await_change()),
            }
        }
    };
    controller
        .with_config(ControllerConfig::default().debounce(RECONCILE_DEBOUNCE))
        .run(in_turn, error_policy, context)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use futures::stream;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::cluster::fixtures;

    /// What a test's reconciler recorded, by job name: how often it ran, or when it ended.
    #[derive(Default)]
    struct Runs {
        counts: Mutex<HashMap<String, usize>>,
    }

    fn named(name: &str) -> TrainingJob {
        let mut job = fixtures::job("");
        job.metadata.name = Some(name.into());
        job.metadata.uid = Some(name.into());
        job
    }

    /// Runs `reconcile` through [`reconciles`] with 4 slots for `seconds` of virtual time, the
    /// job cache holding `cached` and `triggers` waking the controller; returns what it recorded.
    async fn drive<Fut>(
        cached: &[TrainingJob],
        triggers: impl Stream<Item = Result<TrainingJob, watcher::Error>> + Send + 'static,
        reconcile: impl Fn(Arc<TrainingJob>, Arc<Runs>) -> Fut + Clone + Send + 'static,
        seconds: u64,
    ) -> HashMap<String, usize>
    where
        Fut: Future<Output = Result<Requeue, Error>> + Send + 'static,
    {
        let (store, mut writer) = reflector::store::<TrainingJob>();
        writer.apply_watcher_event(&Event::Init);
        for job in cached {
            writer.apply_watcher_event(&Event::InitApply(job.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let controller = Controller::for_stream(triggers, store);
        let runs = Arc::new(Runs::default());
        let no_retry = |_: Arc<TrainingJob>, _: &Error, _: Arc<Runs>| Requeue::await_change();
        let driver = tokio::spawn(
            reconciles(controller, 4, reconcile, no_retry, Arc::clone(&runs))
                .for_each(|_| async {}),
        );
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        driver.abort();
        runs.counts.lock().expect("lock").clone()
    }

    /// A burst of new jobs, each starting a gang (many requests), must not hold back the status
    /// of the jobs whose gangs run (one write each): the last gangs of a burst were written
    /// Running 18 s after the scheduler's last binding while every start queued ahead of them.
    #[tokio::test(start_paused = true)]
    async fn starting_gangs_leave_slots_to_the_jobs_that_run() {
        let new: Vec<TrainingJob> = (0..40).map(|i| named(&format!("new-{i}"))).collect();
        let mut running = named("running");
        running.status = Some(ferrotrain_crds::TrainingJobStatus {
            phase: Some(ferrotrain_crds::Phase::Scheduling),
            ..Default::default()
        });
        let cached: Vec<TrainingJob> = new.iter().chain([&running]).cloned().collect();
        // The running job's pods change a moment after the burst was created.
        let triggers = stream::iter(new.into_iter().map(Ok))
            .chain(stream::once(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(running)
            }))
            .chain(stream::pending());
        let started = tokio::time::Instant::now();
        let reconcile = move |job: Arc<TrainingJob>, runs: Arc<Runs>| async move {
            // A start: a Service, a Secret, four pods; a status write is one request.
            let starting = job.status.is_none();
            tokio::time::sleep(Duration::from_millis(if starting { 1000 } else { 100 })).await;
            if !starting {
                let at = started.elapsed().as_millis() as usize;
                runs.counts.lock().expect("lock").insert(job.name_any(), at);
            }
            Ok(Requeue::await_change())
        };
        let at = drive(&cached, triggers, reconcile, 30)
            .await
            .get("running")
            .copied();
        // 40 starts at three at a time take 14 s; the status write waits for none of them.
        assert!(
            at.is_some_and(|ms| ms < 3000),
            "the running job's reconcile ended at {at:?} ms"
        );
    }

    /// The operator at its limit: gangs that restart are looked at again every second and keep
    /// every slot for starts busy, while new jobs wait. Each new job must still get its turn:
    /// the controller once kept due reconciles in a hash set and took the first it found, so
    /// jobs that hashed after the busy ones waited without end (273 of 10,000 jobs never got a
    /// phase).
    #[tokio::test(start_paused = true)]
    async fn a_saturated_controller_still_reaches_every_waiting_job() {
        let hot: Vec<TrainingJob> = (0..60).map(|i| named(&format!("hot-{i}"))).collect();
        let cold: Vec<TrainingJob> = (0..20).map(|i| named(&format!("new-{i}"))).collect();
        let all: Vec<TrainingJob> = hot.iter().chain(&cold).cloned().collect();
        let triggers = stream::iter(all.clone().into_iter().map(Ok)).chain(stream::pending());
        let reconcile = |job: Arc<TrainingJob>, runs: Arc<Runs>| async move {
            // Each reconcile waits on the API server; starts three at a time (4 slots, one kept
            // from starts) make 30 a second.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let name = job.name_any();
            *runs
                .counts
                .lock()
                .expect("lock")
                .entry(name.clone())
                .or_default() += 1;
            Ok(if name.starts_with("hot") {
                Requeue::requeue(Duration::from_millis(1))
            } else {
                Requeue::await_change()
            })
        };
        // 80 jobs at 30 a second: every one has had its first turn within 3 s, whatever the
        // busy ones do after; 60 s leaves twenty times that.
        let counts = drive(&all, triggers, reconcile, 60).await;
        let waiting: Vec<&String> = cold
            .iter()
            .map(|job| job.metadata.name.as_ref().expect("name"))
            .filter(|name| !counts.contains_key(*name))
            .collect();
        let busy: usize = hot.iter().filter_map(|j| counts.get(&j.name_any())).sum();
        assert!(
            busy > 600,
            "the restarting jobs kept the slots busy: {busy} runs"
        );
        assert!(waiting.is_empty(), "never reconciled in 60 s: {waiting:?}");
    }
}
