//! Checkpoints in S3 through a fault-injecting proxy (`ferrotrain_tests::faultproxy`) in front
//! of the real SeaweedFS server of scripts/test.sh: throttling, server errors, responses and
//! uploads cut mid-body, latency, a stalled request and an outage. Under each, a local two-worker
//! job finishes, every checkpoint left in the store verifies, the final one is there, and the
//! store's retries show in the worker logs. Ignored in a plain `cargo test`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferrotrain_tests::cluster::ferrotrain_binary;
use ferrotrain_tests::faultproxy::{Counts, Fault, FaultProxy, Request};
use ferrotrain_trainer::checkpoint::layout::{Snapshot, TrainingState};
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::storage::{self, S3Options};

fn endpoint() -> String {
    std::env::var("FERROTRAIN_TEST_S3_ENDPOINT")
        .expect("FERROTRAIN_TEST_S3_ENDPOINT: run through scripts/test.sh")
}

fn bucket() -> String {
    std::env::var("FERROTRAIN_TEST_S3_BUCKET").unwrap_or_else(|_| "ferrotrain-test".into())
}

fn unique_uri(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "s3://{}/faults/{name}-{}-{nanos}",
        bucket(),
        std::process::id()
    )
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ferrotrain-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// Every worker log of the run, concatenated.
    fn worker_logs(&self, job: &str) -> String {
        let dir = self.0.join(".ferrotrain").join(job).join("logs");
        let mut logs = String::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        logs
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run through the proxy left behind.
struct Run {
    output: Output,
    status: serde_yaml::Value,
    counts: Counts,
    logs: String,
    uri: String,
    steps: u64,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
}

/// Steps of a fault run whose faults come from the request plan alone.
const STEPS: u64 = 600;

/// Runs a two-worker job of `steps` steps, checkpointing every 100 to S3 through the proxy, with
/// `plan` deciding each request's fault; `during` runs beside it (an outage, for example).
fn run_through(
    name: &str,
    steps: u64,
    plan: impl Fn(&Request) -> Fault + Send + Sync + 'static,
    during: impl FnOnce(&FaultProxy, &str) + Send,
) -> Run {
    let scratch = Scratch::new(name);
    let proxy = FaultProxy::start(&endpoint()).expect("proxy starts");
    proxy.set_plan(plan);
    let uri = unique_uri(name);
    let manifest = scratch.0.join(format!("{name}.yaml"));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}}}\nspec:\n  workers: {{replicas: 2}}\n  trainer:\n    model: {{type: mlp, hidden: [64]}}\n    dataset: {{type: mnist}}\n    batchSize: 64\n    maxSteps: {steps}\n    seed: 5\n  checkpoint: {{uri: \"{uri}\", endpoint: \"{}\", everySteps: 100}}\n",
            proxy.endpoint()
        ),
    )
    .expect("manifest");
    let output = std::thread::scope(|scope| {
        let side = scope.spawn(|| during(&proxy, &uri));
        let output = Command::new(ferrotrain_binary())
            .current_dir(&scratch.0)
            .args(["run", &manifest.display().to_string(), "--output", "json"])
            .env("MATMUL_NUM_THREADS", "1")
            .output()
            .expect("ferrotrain runs");
        let _ = side.join();
        output
    });
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = ferrotrain_tests::final_status(&text);
    Run {
        counts: proxy.counts(),
        logs: scratch.worker_logs(name),
        output,
        status,
        uri,
        steps,
    }
}

/// `ferrotrain checkpoints` on the real server: (step, verified) of each checkpoint left.
fn checkpoints_left(uri: &str) -> Vec<(u64, bool)> {
    let out = Command::new(ferrotrain_binary())
        .args(["checkpoints", uri, "--endpoint", &endpoint()])
        .output()
        .expect("lists");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let step = line.split_whitespace().next()?.parse().ok()?;
            Some((step, line.trim_end().ends_with("yes")))
        })
        .collect()
}

/// What must hold under every fault: the job succeeded, the proxy did break requests, every
/// checkpoint left verifies and the final one (the last step) is among them.
fn assert_survived(run: &Run) {
    let stdout = run.stdout();
    assert!(
        run.output.status.success(),
        "the job failed under faults ({:?}):\n{stdout}\n{}",
        run.counts,
        String::from_utf8_lossy(&run.output.stderr)
    );
    assert_eq!(run.status["phase"].as_str(), Some("Succeeded"), "{stdout}");
    assert!(
        run.counts.faults + run.counts.refused > 0,
        "no fault was injected: {:?}",
        run.counts
    );
    let left = checkpoints_left(&run.uri);
    assert!(
        left.iter().all(|(_, verified)| *verified),
        "a checkpoint left in the store does not verify: {left:?}"
    );
    assert!(
        left.iter().any(|(step, _)| *step == run.steps),
        "the final checkpoint is missing: {left:?}"
    );
    assert_eq!(
        run.status["checkpoint"]["step"].as_i64(),
        i64::try_from(run.steps).ok(),
        "{stdout}"
    );
}

fn restarts(run: &Run) -> i64 {
    ["infra", "app"]
        .iter()
        .map(|k| run.status["restarts"][k].as_i64().unwrap_or(0))
        .sum()
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn throttling_and_server_errors_are_retried_without_a_restart() {
    let run = run_through(
        "slowdown",
        STEPS,
        |r| match r.index % 7 {
            2 => Fault::SlowDown,
            5 => Fault::InternalError,
            _ => Fault::Pass,
        },
        |_, _| {},
    );
    assert_survived(&run);
    assert_eq!(restarts(&run), 0, "the store's retries absorb 503 and 500");
    assert!(
        run.logs.contains("backing off"),
        "the retries are in the worker logs"
    );
    eprintln!("slowdown: {:?}, restarts {}", run.counts, restarts(&run));
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn cut_uploads_and_downloads_never_leave_a_bad_checkpoint() {
    let run = run_through(
        "cut",
        STEPS,
        |r| match (r.index % 5, r.method.as_str()) {
            (3, "PUT") => Fault::CutRequest,
            (3, _) => Fault::CutResponse,
            _ => Fault::Pass,
        },
        |_, _| {},
    );
    assert_survived(&run);
    eprintln!("cut: {:?}, restarts {}", run.counts, restarts(&run));
    for line in run
        .logs
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
    {
        eprintln!("  {line}");
    }
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn latency_slows_checkpoints_but_not_into_a_restart() {
    let run = run_through(
        "latency",
        STEPS,
        |_| Fault::Latency(Duration::from_millis(150)),
        |_, _| {},
    );
    assert_survived(&run);
    assert_eq!(restarts(&run), 0);
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn a_stalled_request_times_out_and_the_job_goes_on() {
    let stalled = AtomicBool::new(false);
    let run = run_through(
        "stall",
        STEPS,
        // The first upload after the first dozen requests never gets an answer.
        move |r| {
            if r.method == "PUT" && r.index >= 12 && !stalled.swap(true, Ordering::SeqCst) {
                Fault::Stall
            } else {
                Fault::Pass
            }
        },
        |_, _| {},
    );
    assert_survived(&run);
    eprintln!("stall: {:?}, restarts {}", run.counts, restarts(&run));
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn a_store_outage_is_ridden_out() {
    let run = run_through(
        "outage",
        // Long enough that the job still runs when the store goes away.
        6000,
        |_| Fault::Pass,
        |proxy, uri| {
            // Once the first checkpoint is committed, the store goes away for 8 seconds.
            let deadline = Instant::now() + Duration::from_secs(120);
            while checkpoints_left(uri).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            proxy.down_for(Duration::from_secs(8));
        },
    );
    assert_survived(&run);
    assert!(run.counts.refused > 0, "{:?}", run.counts);
    assert_eq!(
        restarts(&run),
        0,
        "the store client's retries outlast an 8 s outage"
    );
    eprintln!("outage: {:?}, restarts {}", run.counts, restarts(&run));
}

fn snapshot(step: u64) -> Snapshot {
    Snapshot {
        state: TrainingState {
            step,
            world_size: 1,
            ..TrainingState::default()
        },
        params: (0..1000).map(|i| i as f32 + step as f32).collect(),
        moment1: vec![0.5; 1000],
        moment2: vec![0.25; 1000],
        mask: Vec::new(),
    }
}

/// A checkpoint store used directly (no job) through a fault proxy of its own.
struct Direct {
    proxy: FaultProxy,
    uri: String,
    store: CheckpointStore,
    runtime: tokio::runtime::Runtime,
}

impl Direct {
    fn new(name: &str, keep: usize) -> Self {
        let proxy = FaultProxy::start(&endpoint()).expect("proxy");
        let uri = unique_uri(name);
        let options = S3Options {
            endpoint: Some(proxy.endpoint()),
            region: Some("us-east-1".into()),
        };
        let store = CheckpointStore::new(
            storage::open(&uri, &options).expect("location"),
            keep,
            "cfg",
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            proxy,
            uri,
            store,
            runtime,
        }
    }
}

/// A read the store refuses or breaks off says nothing about the checkpoint: passing over it
/// would resume from an older one (or from step 0) and lose the progress it holds. (A refusal,
/// since the client itself retries a cut body for up to two minutes.)
#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn a_failed_read_never_makes_a_valid_checkpoint_look_corrupt() {
    let Direct {
        proxy,
        uri: _,
        store,
        runtime,
    } = Direct::new("read", 3);
    for step in [10, 20] {
        runtime
            .block_on(store.commit(&snapshot(step)))
            .expect("commit");
    }
    let cut = Arc::new(AtomicBool::new(true));
    let cutting = Arc::clone(&cut);
    proxy.set_plan(move |r| {
        if r.method == "GET"
            && r.path.contains("000000000020-")
            && r.path.contains("params.bin")
            && cutting.load(Ordering::SeqCst)
        {
            Fault::AccessDenied
        } else {
            Fault::Pass
        }
    });
    let loaded = runtime.block_on(store.load_latest());
    assert!(
        loaded.is_err(),
        "a failed read must fail the resume, not select an older checkpoint: {:?}",
        loaded.map(|l| l.map(|(s, _)| s.state.step))
    );
    cut.store(false, Ordering::SeqCst);
    let (latest, _) = runtime
        .block_on(store.load_latest())
        .expect("reads")
        .expect("exists");
    assert_eq!(
        latest.state.step, 20,
        "once the store answers, the newest is used"
    );
}

/// Deleting old checkpoints is housekeeping: a committed checkpoint must not be reported as a
/// failed commit (and end the attempt) because the deletion of an older one failed.
#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn a_failed_retention_does_not_fail_the_commit() {
    let Direct {
        proxy,
        uri,
        store,
        runtime,
    } = Direct::new("retain", 1);
    runtime
        .block_on(store.commit(&snapshot(10)))
        .expect("commit");
    proxy.set_plan(|r| {
        if r.method == "POST" && r.path.contains("delete") || r.method == "DELETE" {
            Fault::CutResponse
        } else {
            Fault::Pass
        }
    });
    let committed = runtime.block_on(store.commit(&snapshot(20)));
    assert_eq!(
        committed.map(|c| c.step).map_err(|e| e.to_string()),
        Ok(20),
        "the checkpoint was committed; only the old one's deletion failed"
    );
    proxy.set_plan(|_| Fault::Pass);
    runtime
        .block_on(store.commit(&snapshot(30)))
        .expect("commit");
    let steps: Vec<u64> = checkpoints_left(&uri).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![30], "the next commit's retention catches up");
}
