//! Operator benchmarks: decisions per second of the lifecycle state machine, and the memory of
//! reflector stores holding 1,000 TrainingJobs and 4,000 worker pods (filled directly).
//!
//! ```text
//! cargo run -p ferrotrain --example operator_bench
//! cargo run -p ferrotrain --example operator_bench -- --slim
//! ```

use std::time::Instant;

use ferrotrain::cluster::children::{Settings, worker_pod};
use ferrotrain::cluster::observe::slim_pod;
use ferrotrain::decide::job::{FailureCause, Observed, WorkerState, WorkerView, decide};
use ferrotrain_crds::TrainingJob;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::store;
use kube::runtime::watcher::Event;

fn job(i: usize) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: job-{i}, namespace: team-{}, uid: uid-{i}, generation: 1}}\nspec:\n  workers: {{replicas: 4, resources: {{requests: {{cpu: '2', memory: 4Gi}}}}}}\n  trainer: {{model: {{type: mlp, hidden: [256, 128]}}, dataset: {{type: mnist}}, batchSize: 64, epochs: 3}}\n  checkpoint: {{uri: 's3://ckpt/job-{i}', everySteps: 500, secretRef: {{name: s3}}}}\n  runPolicy: {{maxAppRestarts: 3, progressDeadlineSeconds: 300}}\n",
        i % 20
    ))
    .expect("job")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // decide(): a running 4-worker job, one worker failing every eighth decision.
    let mut running = job(0);
    let _ = decide(&running, &Observed::default(), jiff::Timestamp::now());
    running.status = Some(decide(&running, &Observed::default(), jiff::Timestamp::now()).status);
    let healthy: Vec<WorkerView> = (0..4)
        .map(|rank| WorkerView {
            name: format!("job-0-worker-{rank}"),
            rank,
            attempt: 1,
            state: WorkerState::Running { ready: true },
            message: None,
        })
        .collect();
    let mut failing = healthy.clone();
    failing[2].state = WorkerState::Failed(FailureCause::ExitCode(1));
    let observations = [
        Observed {
            workers: healthy,
            ..Observed::default()
        },
        Observed {
            workers: failing,
            ..Observed::default()
        },
    ];
    let now = jiff::Timestamp::now();
    let n = 200_000;
    let started = Instant::now();
    let mut phases = 0usize;
    for i in 0..n {
        let d = decide(&running, &observations[usize::from(i % 8 == 0)], now);
        phases += d.actions.len();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "decide: {:.0} decisions/s ({n} decisions in {seconds:.2} s, {phases} actions)",
        f64::from(n) / seconds
    );

    // Reflector stores with 1,000 jobs and 4,000 pods; `--slim` strips the pods first. Run the
    // two variants as separate processes: freed memory is not returned to the system.
    stores(std::env::args().any(|a| a == "--slim"));
}

fn stores(slim: bool) {
    let before = rss_kib();
    let (job_reader, mut job_writer) = store::<TrainingJob>();
    let (pod_reader, mut pod_writer) = store::<Pod>();
    let settings = Settings {
        default_image: "ferrotrain-trainer:0.1.0".into(),
        progress_base_url: "http://ferrotrain.ferrotrain-system.svc:8080".into(),
        worker_network_policy: true,
        progress_ca: None,
    };
    for i in 0..1000 {
        let j = job(i);
        for rank in 0..4 {
            let mut pod = worker_pod(&j, &settings, 1, 4, rank);
            if slim {
                slim_pod(&mut pod);
            }
            pod_writer.apply_watcher_event(&Event::Apply(pod));
        }
        job_writer.apply_watcher_event(&Event::Apply(j));
    }
    let after = rss_kib();
    println!(
        "stores ({}): {} jobs and {} pods; RSS {:.1} MiB before filling, {:.1} MiB after ({:.1} MiB for the stores)",
        if slim { "slimmed pods" } else { "full pods" },
        job_reader.state().len(),
        pod_reader.state().len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
}
