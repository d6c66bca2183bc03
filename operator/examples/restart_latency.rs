//! Time from a worker's death to the first training step of the next attempt under
//! `ferrotrain run`, and the checkpoint overhead of the whole run. Build the CLI first:
//!
//! ```text
//! cargo build -p ferrotrain && cargo run -p ferrotrain --example restart_latency
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};

const KILLS: u32 = 3;

fn main() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let ferrotrain = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ferrotrain"))
        .context("target dir")?;
    if !ferrotrain.exists() {
        bail!(
            "{} is missing: run `cargo build -p ferrotrain` first",
            ferrotrain.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("ferrotrain-restart-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ckpt = dir.join("ckpt");
    let manifest = dir.join("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: bench}}\nspec:\n  workers: {{replicas: 2}}\n  trainer:\n    model: {{type: mlp, hidden: [256, 128]}}\n    dataset: {{type: mnist}}\n    batchSize: 64\n    maxSteps: 4000\n  checkpoint: {{uri: \"file://{}\", everySeconds: 2}}\n  runPolicy: {{maxInfraRestarts: 10}}\n",
            ckpt.display()
        ),
    )?;
    let started = Instant::now();
    let run = Command::new(&ferrotrain)
        .current_dir(&dir)
        .args(["run", &manifest.display().to_string(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let logs = dir.join(".ferrotrain/bench/logs");
    let mut latencies = Vec::new();
    for attempt in 1..=KILLS {
        wait_for(Duration::from_secs(120), || {
            first_step_time(&logs, attempt).is_some()
        })?;
        // Let the attempt train and checkpoint for a while, then kill rank 1.
        std::thread::sleep(Duration::from_secs(3));
        let worker = children_of(run.id())
            .into_iter()
            .max()
            .context("no worker process")?;
        let killed_at = SystemTime::now();
        Command::new("kill")
            .args(["-KILL", &worker.to_string()])
            .status()?;
        wait_for(Duration::from_secs(120), || {
            first_step_time(&logs, attempt + 1).is_some()
        })?;
        let resumed_at = first_step_time(&logs, attempt + 1).context("first step")?;
        let latency = resumed_at.duration_since(killed_at)?.as_secs_f64();
        println!(
            "restart {attempt}: worker killed → first step of attempt {}: {latency:.2} s",
            attempt + 1
        );
        latencies.push(latency);
    }
    let output = run.wait_with_output()?;
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "restart latency over {KILLS} kills: median {:.2} s, max {:.2} s",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    let completed =
        std::fs::read_to_string(logs.join(format!("attempt-{}-rank-0.log", KILLS + 1)))?;
    let line = completed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "completed")
        .context("the last attempt completed")?;
    let stall = line["checkpointStallSeconds"].as_f64().unwrap_or(0.0);
    let attempt_wall = line["wallSeconds"].as_f64().unwrap_or(1.0);
    println!(
        "checkpoint overhead of the last attempt (one checkpoint per 2 s): {:.3} s of {:.1} s = {:.2} %; whole run {:.1} s, exit {:?}",
        stall,
        attempt_wall,
        stall / attempt_wall * 100.0,
        wall,
        output.status.code()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// When rank 0 of `attempt` finished its first step, from its JSON log.
fn first_step_time(logs: &Path, attempt: u32) -> Option<SystemTime> {
    let text = std::fs::read_to_string(logs.join(format!("attempt-{attempt}-rank-0.log"))).ok()?;
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "first step of this attempt done")?;
    let stamp: jiff::Timestamp = line["timestamp"].as_str()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(stamp.as_nanosecond()).ok()?))
}

fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}
