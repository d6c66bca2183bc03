//! Scale benchmark of the operator on the control plane of `scripts/cluster.sh`: JOBS TrainingJobs
//! of 4 workers created in a burst, rank 0 of every running job reporting progress every 2 s with
//! the job's real token, then every job completed. The operator runs the way the chart installs
//! it (its ServiceAccount and RBAC, the chart's default limits). Prints a report; run through
//! `scripts/bench-scale.sh`, which starts a fresh control plane with 100 nodes for each size.
//!
//! Usage: `scale-bench JOBS [STEADY_SECONDS]`. With `FERROTRAIN_SCALE_PROGRESS_DEADLINE=S`, every
//! job gets `progressDeadlineSeconds: S` once it reports progress (before the steady window):
//! shorter than the interval between two status writes of a job's progress at this many jobs, it
//! shows whether healthy jobs are taken for stalled. With `FERROTRAIN_SCALE_REPLICAS=2`, a second
//! replica runs beside the leader (the chart's `replicas: 2`), and its memory and API requests
//! are reported too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrotrain_crds::{Phase, TrainingJob};
use ferrotrain_tests::cluster::{
    Cluster, Operator, install_crd, install_operator, lease_holder, test_namespace,
    try_terminate_container, wait_for,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};

mod measure;
use measure::{
    anonymous_rss, api_requests, code_total, print_rates, process_usage, quantile, rate_of,
    reconcile_histogram, reconciler_throttled,
};

const WORKERS: u32 = 4;
/// Requests in flight at once from the benchmark's own clients (creates, completions).
const DRIVER_CONCURRENCY: usize = 32;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn job(name: &str) -> TrainingJob {
    let yaml = format!(
        r#"
apiVersion: ferrotrain.io/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  workers:
    replicas: {WORKERS}
    resources: {{requests: {{cpu: 50m, memory: 64Mi}}, limits: {{memory: 64Mi}}}}
  trainer:
    model: {{type: mlp}}
    dataset: {{type: mnist}}
    batchSize: 64
    maxSteps: 1000000
  checkpoint: {{uri: "s3://ferrotrain/{name}", everySteps: 1000}}
  runPolicy: {{gang: {{scheduleTimeoutSeconds: 900}}}}
"#
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("job manifest: {e}"))
}

fn count_phases(store: &reflector::Store<TrainingJob>) -> BTreeMap<String, usize> {
    let mut phases = BTreeMap::new();
    for job in store.state() {
        let phase = job
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("None".to_string(), |p| format!("{p:?}"));
        *phases.entry(phase).or_default() += 1;
    }
    phases
}

async fn wait_all(
    store: &reflector::Store<TrainingJob>,
    jobs: usize,
    phase: Phase,
    limit: Duration,
) -> Option<Instant> {
    let start = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let done = store
            .state()
            .iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.phase) == Some(phase))
            .count();
        if done == jobs {
            return Some(Instant::now());
        }
        if start.elapsed() > limit {
            eprintln!("timed out waiting for {phase:?}: {:?}", count_phases(store));
            return None;
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "  {:>5.0}s {:?}",
                start.elapsed().as_secs_f64(),
                count_phases(store)
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The scheduler in this run, from the pods (1 s resolution): pods scheduled, pods scheduled a
/// second while it worked, and the median and largest wait from a pod's creation to its binding.
/// Waits near zero mean the scheduler kept up with the pods it was given.
fn scheduler_figures(pods: &[Pod]) -> (usize, f64, i64, i64) {
    let mut waits = Vec::new();
    let mut times = Vec::new();
    for pod in pods {
        let scheduled = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "True")
            })
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second());
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        if let (Some(scheduled), Some(created)) = (scheduled, created) {
            times.push(scheduled);
            waits.push(scheduled - created);
        }
    }
    waits.sort_unstable();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return (0, 0.0, 0, 0);
    };
    (
        times.len(),
        times.len() as f64 / ((last - first) as f64 + 1.0),
        waits.get(waits.len() / 2).copied().unwrap_or(0),
        waits.last().copied().unwrap_or(0),
    )
}

/// When the scheduler bound its last pod (seconds since the epoch, 1 s resolution).
fn last_binding(pods: &[Pod]) -> Option<i64> {
    pods.iter()
        .filter_map(|pod| {
            let conditions = pod.status.as_ref()?.conditions.as_ref()?;
            let scheduled = conditions
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")?;
            Some(scheduled.last_transition_time.as_ref()?.0.as_second())
        })
        .max()
}

/// Rank 0 of every job reports progress every 2 s until `stop`; returns nothing, counts answers.
async fn load_generator(
    address: String,
    namespace: String,
    tokens: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let mut step = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let round = Instant::now();
        step += 100;
        futures::stream::iter(tokens.iter())
            .for_each_concurrent(64, |(name, token)| {
                let http = http.clone();
                let url = format!(
                    "http://{address}/v1/namespaces/{namespace}/trainingjobs/{name}/progress"
                );
                let accepted = Arc::clone(&accepted);
                let refused = Arc::clone(&refused);
                async move {
                    let body = serde_json::json!({
                        "attempt": 1, "worldSize": WORKERS, "step": step, "totalSteps": 1_000_000,
                        "epoch": 0, "loss": 0.5,
                    });
                    let ok = http
                        .post(&url)
                        .bearer_auth(token)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 204);
                    if ok { &accepted } else { &refused }.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await;
        let spent = round.elapsed();
        if spent < PROGRESS_EVERY {
            tokio::time::sleep(PROGRESS_EVERY - spent).await;
        }
    }
}

async fn bench(jobs: usize, steady: Duration) {
    ferrotrain::tls::install_crypto_provider();
    let cluster = Cluster::from_env();
    let client = cluster.admin().await;
    install_crd(&client).await;
    // Extra operator arguments, for example other limits than the chart's defaults.
    let extra = std::env::var("FERROTRAIN_SCALE_OPERATOR_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let installed = install_operator(&cluster, &[], &extra).await;
    let operator = &installed.operator;
    let follower = start_follower(&cluster, &client, &installed.namespace, &extra).await;
    let namespace = test_namespace(&client, "scale", "restricted").await;
    let deadline: Option<u32> = std::env::var("FERROTRAIN_SCALE_PROGRESS_DEADLINE")
        .ok()
        .and_then(|s| s.parse().ok());
    let api: Api<TrainingJob> = Api::namespaced(client.clone(), &namespace);

    let (store, writer) = reflector::store();
    let watch = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .try_for_each(|_| async { Ok(()) });
    tokio::spawn(watch);
    store
        .wait_until_ready()
        .await
        .unwrap_or_else(|e| panic!("job watch: {e}"));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let requests_start = api_requests(&client).await;
    let histogram_start = reconcile_histogram(&operator.address).await;
    let throttled_start = reconciler_throttled(&operator.address).await;
    let (rss_start, _, cpu_start) = process_usage(operator.pid());
    let anonymous_start = anonymous_rss(operator.pid());
    let reconciler_requests = || {
        let reads = operator.metric_sum(
            "ferrotrain_api_requests_total{",
            "client=\"reconciler\",kind=\"read\"",
        );
        let writes = operator.metric_sum(
            "ferrotrain_api_requests_total{",
            "client=\"reconciler\",kind=\"write\"",
        );
        (reads, writes)
    };
    let reconciler_start = reconciler_requests();
    let follower_start = follower.as_ref().map(FollowerSample::of);
    let created_from = Instant::now();
    eprintln!("creating {jobs} jobs of {WORKERS} workers in {namespace}");
    futures::stream::iter(0..jobs)
        .for_each_concurrent(DRIVER_CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                let name = format!("job-{i:05}");
                if let Err(e) = api.create(&PostParams::default(), &job(&name)).await {
                    panic!("create {name}: {e}");
                }
            }
        })
        .await;
    let last_create = Instant::now();
    eprintln!(
        "created in {:.1}s; waiting for every gang to run",
        (last_create - created_from).as_secs_f64()
    );
    let running = wait_all(&store, jobs, Phase::Running, patience(jobs)).await;
    let running_at =
        running.map(|t| jiff::Timestamp::now().as_second() - t.elapsed().as_secs() as i64);
    let reconciler_burst = reconciler_requests();
    let to_running = running.map(|t| (t - last_create).as_secs_f64());
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let (scheduled, scheduler_rate, wait_p50, wait_max) = scheduler_figures(&pods);
    let after_last_binding = running_at.zip(last_binding(&pods)).map(|(r, b)| r - b);
    let (rss_burst, _, cpu_burst) = process_usage(operator.pid());
    let anonymous_burst = anonymous_rss(operator.pid());
    let follower_burst = follower.as_ref().map(FollowerSample::of);
    let histogram_burst = reconcile_histogram(&operator.address).await;
    let throttled_burst = reconciler_throttled(&operator.address).await - throttled_start;
    let requests_burst = api_requests(&client).await;
    let burst_seconds = running.map_or(1.0, |t| (t - created_from).as_secs_f64());

    // Steady state: progress from every job's rank 0, with the token its workers mount.
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let by_name: BTreeMap<String, String> = secrets
        .into_iter()
        .filter_map(|s| {
            let token = s
                .data
                .as_ref()?
                .get(ferrotrain::cluster::job_secret::TOKEN_KEY)?;
            Some((s.name_any(), String::from_utf8_lossy(&token.0).into_owned()))
        })
        .collect();
    let tokens: Vec<(String, String)> = store
        .state()
        .iter()
        .filter_map(|j| {
            let digest = ferrotrain::cluster::job_secret::token_sha256_of(j)?;
            let secret = ferrotrain::cluster::job_secret::token_secret_name(&j.name_any(), digest);
            Some((j.name_any(), by_name.get(&secret)?.clone()))
        })
        .collect();
    eprintln!(
        "steady state: {} jobs report progress every 2 s",
        tokens.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let generator = tokio::spawn(load_generator(
        operator.address.clone(),
        namespace.clone(),
        tokens,
        Arc::clone(&stop),
        Arc::clone(&accepted),
        Arc::clone(&refused),
    ));
    // Let the first round of progress writes pass before measuring.
    tokio::time::sleep(Duration::from_secs(15)).await;
    if let Some(deadline) = deadline {
        let patch =
            serde_json::json!({"spec": {"runPolicy": {"progressDeadlineSeconds": deadline}}});
        futures::stream::iter(store.state())
            .for_each_concurrent(DRIVER_CONCURRENCY, |job| {
                let (api, patch) = (api.clone(), patch.clone());
                async move {
                    let name = job.name_any();
                    if let Err(e) = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        panic!("deadline of {name}: {e}");
                    }
                }
            })
            .await;
        eprintln!("every job's progressDeadlineSeconds is now {deadline}");
    }
    let requests_steady = api_requests(&client).await;
    let histogram_steady = reconcile_histogram(&operator.address).await;
    let (_, _, cpu_steady) = process_usage(operator.pid());
    let accepted_steady = accepted.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(steady).await;
    let seconds = window.elapsed().as_secs_f64();
    let requests_steady_end = api_requests(&client).await;
    let histogram_steady_end = reconcile_histogram(&operator.address).await;
    let (rss, _, cpu_steady_end) = process_usage(operator.pid());
    let anonymous_steady = anonymous_rss(operator.pid());
    let follower_steady = follower.as_ref().map(FollowerSample::of);
    let reports = (accepted.load(Ordering::Relaxed) - accepted_steady) as f64 / seconds;
    let stalled_in_window: i32 = store
        .state()
        .iter()
        .filter_map(|j| j.status.as_ref()?.restarts.as_ref().map(|r| r.stall))
        .sum();

    // Completion: every running worker exits 0, as a kubelet reports it; again for the workers
    // of gangs that restarted meanwhile, until every job has succeeded.
    let completed_from = Instant::now();
    let pods_api = Api::<Pod>::namespaced(client.clone(), &namespace);
    let succeeded = loop {
        let running: Vec<String> = pods_api
            .list(&ListParams::default().fields("status.phase=Running"))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        futures::stream::iter(running)
            .for_each_concurrent(DRIVER_CONCURRENCY, |pod| {
                let client = client.clone();
                let namespace = namespace.clone();
                async move {
                    // A pod deleted meanwhile has nothing left to complete.
                    let _ = try_terminate_container(&client, &namespace, &pod, 0).await;
                }
            })
            .await;
        if let Some(done) = wait_all(&store, jobs, Phase::Succeeded, Duration::from_secs(60)).await
        {
            break Some(done);
        }
        if completed_from.elapsed() > patience(jobs) {
            break None;
        }
    };
    // Trainers report until they exit: the reports stop only once every job has finished.
    stop.store(true, Ordering::SeqCst);
    let _ = generator.await;
    let to_succeeded = succeeded.map(|t| (t - completed_from).as_secs_f64());
    let (infra, app, stall) = store
        .state()
        .iter()
        .fold((0, 0, 0), |(infra, app, stall), j| {
            let r = j
                .status
                .as_ref()
                .and_then(|s| s.restarts.clone())
                .unwrap_or_default();
            (infra + r.infra, app + r.app, stall + r.stall)
        });
    let histogram_end = reconcile_histogram(&operator.address).await;
    let requests_end = api_requests(&client).await;
    let (_, peak, cpu_end) = process_usage(operator.pid());
    let follower_end = follower.as_ref().map(FollowerSample::of);

    let status_writes = rate_of(
        &requests_steady,
        &requests_steady_end,
        |verb, resource| matches!(verb, "PATCH" | "APPLY") && resource == "trainingjobs/status",
        seconds,
    );
    let operator_other = rate_of(
        &requests_steady,
        &requests_steady_end,
        |verb, resource| {
            let ours = matches!(
                resource,
                "trainingjobs" | "pods" | "services" | "secrets" | "events" | "podgroups" | "nodes"
            );
            // Watches are long-running: counted once, when they start.
            ours && verb != "WATCH"
        },
        seconds,
    );
    let (p50_done, n_done) = quantile(&histogram_steady_end, &histogram_end, 0.5);
    let (p99_done, _) = quantile(&histogram_steady_end, &histogram_end, 0.99);
    let (p50_all, n_all) = quantile(&histogram_start, &histogram_end, 0.5);
    let (p99_all, _) = quantile(&histogram_start, &histogram_end, 0.99);
    let (p50_burst, n_burst) = quantile(&histogram_start, &histogram_burst, 0.5);
    let (p99_burst, _) = quantile(&histogram_start, &histogram_burst, 0.99);
    let (p50_steady, n_steady) = quantile(&histogram_steady, &histogram_steady_end, 0.5);
    let (p99_steady, _) = quantile(&histogram_steady, &histogram_steady_end, 0.99);
    let fmt_s = |s: Option<f64>| s.map_or("did not finish".to_string(), |s| format!("{s:.1} s"));

    println!(
        "\n## {jobs} TrainingJobs x {WORKERS} workers ({} pods), operator arguments: {}",
        jobs * WORKERS as usize,
        if extra.is_empty() {
            "chart defaults".to_string()
        } else {
            extra.join(" ")
        }
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| last create -> every gang Running | {} |",
        fmt_s(to_running)
    );
    println!(
        "| scheduler's last binding -> every gang Running | {} |",
        after_last_binding.map_or("did not finish".to_string(), |s| format!(
            "{s} s (1 s resolution)"
        ))
    );
    let per_job = |n: u64| n as f64 / jobs as f64;
    let (reads, writes) = (
        reconciler_burst.0 - reconciler_start.0,
        reconciler_burst.1 - reconciler_start.1,
    );
    println!(
        "| reconciler's API requests per new job, first create -> every gang Running | {:.2} ({:.2} writes, {:.2} reads) |",
        per_job(reads + writes),
        per_job(writes),
        per_job(reads)
    );
    println!(
        "| scheduler: pods bound a second while binding | {scheduler_rate:.0} pods/s over {scheduled} pods |"
    );
    println!(
        "| scheduler: wait from pod creation to binding, median / max | {wait_p50} / {wait_max} s |"
    );
    println!(
        "| first create -> every gang Running, pods/s | {:.0} |",
        (jobs * WORKERS as usize) as f64 / burst_seconds
    );
    println!(
        "| completion -> every job Succeeded | {} |",
        fmt_s(to_succeeded)
    );
    println!(
        "| reconcile p50 / p99, burst ({n_burst:.0} reconciles) | <= {:.1} / <= {:.1} ms |",
        p50_burst * 1e3,
        p99_burst * 1e3
    );
    println!(
        "| reconciler's API client held by its rate limit, burst | {throttled_burst:.0} s of {burst_seconds:.0} s |"
    );
    println!(
        "| reconcile p50 / p99, steady ({n_steady:.0} reconciles) | <= {:.1} / <= {:.1} ms |",
        p50_steady * 1e3,
        p99_steady * 1e3
    );
    println!(
        "| reconcile p50 / p99, completion ({n_done:.0} reconciles) | <= {:.1} / <= {:.1} ms |",
        p50_done * 1e3,
        p99_done * 1e3
    );
    println!(
        "| reconcile p50 / p99, whole run ({n_all:.0} reconciles) | <= {:.1} / <= {:.1} ms |",
        p50_all * 1e3,
        p99_all * 1e3
    );
    println!(
        "| progress reports accepted (steady) | {reports:.0} /s; {} refused in all |",
        refused.load(Ordering::Relaxed)
    );
    println!(
        "| progress status writes (steady) | {status_writes:.1} /s = 1 per job per {:.1} s |",
        jobs as f64 / status_writes.max(1e-9)
    );
    println!(
        "| other operator requests (steady) | {operator_other:.2} /s = {:.3} per job per minute |",
        operator_other * 60.0 / jobs as f64
    );
    println!(
        "| gang restarts (whole run) | infrastructure {infra}, application {app}, of which stalls {stall} |"
    );
    if let Some(deadline) = deadline {
        println!(
            "| progressDeadlineSeconds {deadline}: stall restarts by the end of the steady window | {stalled_in_window} |"
        );
    }
    println!(
        "| HTTP 429 answers (whole run) | {:.0} |",
        code_total(&requests_end, "429") - code_total(&requests_start, "429")
    );
    println!(
        "| operator RSS before / after the burst / steady / peak | {rss_start:.1} / {rss_burst:.1} / {rss:.1} / {peak:.1} MiB |"
    );
    println!(
        "| operator anonymous RSS (heap, stacks) before / after the burst / steady | {anonymous_start:.1} / {anonymous_burst:.1} / {anonymous_steady:.1} MiB |"
    );
    println!(
        "| operator CPU burst / steady / completion | {:.2} / {:.2} / {:.2} cores |",
        (cpu_burst - cpu_start) / burst_seconds,
        (cpu_steady_end - cpu_steady) / seconds,
        (cpu_end - cpu_steady_end) / completed_from.elapsed().as_secs_f64()
    );
    if let (Some(start), Some(burst), Some(steady), Some(end)) = (
        follower_start,
        follower_burst,
        follower_steady,
        follower_end,
    ) {
        println!(
            "| follower RSS before / after the burst / steady / peak | {:.1} / {:.1} / {:.1} / {:.1} MiB |",
            start.rss, burst.rss, steady.rss, end.peak
        );
        println!(
            "| follower anonymous RSS before / after the burst / steady | {:.1} / {:.1} / {:.1} MiB |",
            start.anonymous, burst.anonymous, steady.anonymous
        );
        println!(
            "| follower's API reads / writes through its clients, burst / rest of the run | {} / {}, {} / {} |",
            burst.reads - start.reads,
            burst.writes - start.writes,
            end.reads - burst.reads,
            end.writes - burst.writes
        );
        println!(
            "| follower CPU, whole run | {:.2} cores |",
            (end.cpu - start.cpu) / created_from.elapsed().as_secs_f64()
        );
    }
    print_rates(
        "Burst",
        &requests_start,
        &requests_burst,
        burst_seconds,
        jobs,
    );
    print_rates(
        "Steady state",
        &requests_steady,
        &requests_steady_end,
        seconds,
        jobs,
    );
    // Stopped as Kubernetes stops it: a heap-profile build writes its profile as it exits.
    let mut installed = installed;
    if !installed.operator.terminate(Duration::from_secs(120)) {
        eprintln!("the operator did not exit within 120 s of SIGTERM");
    }
}

/// How long a phase of the run may take: the scheduler binds 30–40 pods a second here.
fn patience(jobs: usize) -> Duration {
    Duration::from_secs(1800 + jobs as u64 * WORKERS as u64 / 20)
}

/// What the follower uses at one moment.
struct FollowerSample {
    rss: f64,
    peak: f64,
    anonymous: f64,
    cpu: f64,
    reads: u64,
    writes: u64,
}

impl FollowerSample {
    fn of(follower: &Operator) -> Self {
        let pid = follower.pid();
        let (rss, peak, cpu) = process_usage(pid);
        let count = |kind: &str| {
            follower.metric_sum(
                "ferrotrain_api_requests_total{",
                &format!("kind=\"{kind}\""),
            )
        };
        FollowerSample {
            rss,
            peak,
            anonymous: anonymous_rss(pid),
            cpu,
            reads: count("read"),
            writes: count("write"),
        }
    }
}

/// With `FERROTRAIN_SCALE_REPLICAS=2`, a second replica beside the installed one, which leads.
async fn start_follower(
    cluster: &Cluster,
    client: &kube::Client,
    lease_namespace: &str,
    extra: &[&str],
) -> Option<Operator> {
    let replicas: usize = std::env::var("FERROTRAIN_SCALE_REPLICAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    if replicas < 2 {
        return None;
    }
    wait_for(
        "the first replica leads",
        Duration::from_secs(60),
        || async {
            (lease_holder(client, lease_namespace).await.as_deref() == Some("operator-0"))
                .then_some(())
        },
    )
    .await;
    let kubeconfig = cluster
        .service_account_kubeconfig(lease_namespace, "ferrotrain")
        .await;
    Some(Operator::start(
        &kubeconfig,
        lease_namespace,
        "operator-1",
        extra,
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: scale-bench JOBS [STEADY_SECONDS]");
            std::process::exit(2)
        });
    let steady = Duration::from_secs(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(bench(jobs, steady));
}
