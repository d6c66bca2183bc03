//! `ferrotrain run` end to end: real worker processes, real checkpoints, real signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Scratch, final_status, manifests, wait_for};

/// Steps of a job the test interrupts: long enough that the signal, kill or closed pipe lands
/// well before the end however fast the trainer is.
const INTERRUPTED_STEPS: u32 = 6000;

/// The final status of a `--output json` run: its last stdout line, `{"event":"finalStatus",…}`.
fn status_of(output: &Output) -> serde_yaml::Value {
    final_status(&String::from_utf8_lossy(&output.stdout))
}

fn accuracy(status: &serde_yaml::Value) -> f64 {
    status["progress"]["metrics"]["valAccuracy"]
        .as_f64()
        .expect("valAccuracy")
}

/// Worker processes started by `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
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

/// Starts `ferrotrain run --output json` of a fresh two-worker job (output discarded) and waits
/// for its first committed checkpoint; returns the scratch dir, the run's arguments and the run.
fn start_until_first_checkpoint(name: &str) -> (Scratch, Vec<String>, Child) {
    let s = Scratch::new(name);
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        name,
        &format!("file://{}", ckpt.display()),
        "",
        INTERRUPTED_STEPS,
    );
    let args: Vec<String> = ["run", &manifest.display().to_string(), "--output", "json"]
        .map(String::from)
        .to_vec();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = s
        .ferrotrain(&argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for("a committed checkpoint", Duration::from_secs(120), || {
        manifests(&ckpt) > 0
    });
    (s, args, child)
}

/// Whether a process still runs or is stopped (not gone, not a zombie).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("ferrotrain exits")
}

#[test]
fn a_small_job_succeeds_with_a_complete_status() {
    let s = Scratch::new("small");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest("small", &format!("file://{}", ckpt.display()), "");
    // The trained model is exported where spec.output says when the run succeeds.
    let out = s.0.join("model");
    let mut text = std::fs::read_to_string(&manifest).expect("manifest");
    text.push_str(&format!(
        "  output: {{uri: \"file://{}\"}}\n",
        out.display()
    ));
    std::fs::write(&manifest, text).expect("manifest with an output");
    let output = s
        .ferrotrain(&["run", &manifest.display().to_string(), "--output", "json"])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // JSON lines: every line of stdout is one JSON object, the final status included (jq works).
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let object = serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(object.is_object(), "{line}");
    }
    let status = status_of(&output);
    assert_eq!(status["phase"].as_str(), Some("Succeeded"));
    assert_eq!(status["progress"]["step"].as_i64(), Some(1200));
    assert_eq!(status["progress"]["totalSteps"].as_i64(), Some(1200));
    assert!(accuracy(&status) > 0.9, "accuracy {}", accuracy(&status));
    assert_eq!(status["checkpoint"]["step"].as_i64(), Some(1200));
    assert!(
        status["checkpoint"]["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("000000001200.json"))
    );
    let ratio = status["goodput"]["ratio"].as_f64().expect("goodput ratio");
    assert!(ratio > 0.0 && ratio <= 1.0, "ratio {ratio}");
    assert_eq!(status["restarts"]["app"].as_i64(), Some(0));
    assert!(status["startTime"].is_string() && status["completionTime"].is_string());
    assert!(s.0.join(".ferrotrain/small/status.yaml").exists());
    assert_eq!(status["output"]["step"].as_i64(), Some(1200), "{status:?}");
    let files = status["output"]["files"]
        .as_sequence()
        .expect("output files");
    assert_eq!(
        files.len(),
        3,
        "model card, safetensors and ONNX: {files:?}"
    );
    for file in files {
        let name = file["name"].as_str().expect("name");
        let bytes = std::fs::metadata(out.join(name)).expect("written").len();
        assert_eq!(file["bytes"].as_u64(), Some(bytes), "{name}");
    }
    let curve = std::fs::read(s.0.join(".ferrotrain/small/curve.png"))
        .expect("the training curve is written");
    assert_eq!(&curve[1..4], b"PNG");
    let events: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("\"event\":\"event\""))
        .map(String::from)
        .collect();
    assert!(
        events.iter().any(|e| e.contains("\"reason\":\"Running\"")),
        "{events:?}"
    );
    // However fast the run, the stream of status lines ends with the final one.
    let last_status: serde_json::Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["event"] == "status")
        .expect("status lines");
    assert_eq!(last_status["phase"], "Succeeded", "{last_status}");
    assert_eq!(last_status["step"], 1200, "{last_status}");
}

fn kill_a_worker_and_compare(
    s: &Scratch,
    name: &str,
    checkpoint_uri: &str,
    listing: impl Fn() -> usize,
) {
    // An undisturbed run of the same job, for reference.
    let reference_manifest = s.manifest_of_steps(
        &format!("{name}-ref"),
        &format!("file://{}", s.0.join("ref-ckpt").display()),
        "",
        INTERRUPTED_STEPS,
    );
    let reference = s
        .ferrotrain(&[
            "run",
            &reference_manifest.display().to_string(),
            "--output",
            "json",
        ])
        .output()
        .expect("runs");
    assert!(reference.status.success());
    let reference_accuracy = accuracy(&status_of(&reference));

    let manifest = s.manifest_of_steps(name, checkpoint_uri, "", INTERRUPTED_STEPS);
    let child = s
        .ferrotrain(&["run", &manifest.display().to_string(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let parent = child.id();
    wait_for("a committed checkpoint", Duration::from_secs(120), || {
        listing() > 0
    });
    let workers = children_of(parent);
    assert_eq!(workers.len(), 2, "two worker processes");
    let killed = Command::new("kill")
        .args(["-KILL", &workers[1].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = finish(child);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_of(&output);
    assert_eq!(status["phase"].as_str(), Some("Succeeded"));
    assert_eq!(
        status["attempt"].as_i64(),
        Some(2),
        "the gang restarted once"
    );
    assert_eq!(
        status["restarts"]["infra"].as_i64(),
        Some(1),
        "SIGKILL counts against the infrastructure budget"
    );
    assert!(status["goodput"]["lostSeconds"].as_f64().is_some());
    let resumed = accuracy(&status);
    assert!(
        (resumed - reference_accuracy).abs() <= 0.003,
        "accuracy {resumed} vs undisturbed {reference_accuracy}"
    );
}

#[test]
fn a_killed_worker_restarts_the_gang_from_the_checkpoint() {
    let s = Scratch::new("kill");
    let ckpt = s.0.join("ckpt");
    kill_a_worker_and_compare(&s, "kill", &format!("file://{}", ckpt.display()), || {
        manifests(&ckpt)
    });
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn a_killed_worker_restarts_from_a_checkpoint_in_s3() {
    let endpoint = std::env::var("FERROTRAIN_TEST_S3_ENDPOINT")
        .expect("FERROTRAIN_TEST_S3_ENDPOINT: run through scripts/test.sh");
    let bucket =
        std::env::var("FERROTRAIN_TEST_S3_BUCKET").unwrap_or_else(|_| "ferrotrain-test".into());
    let s = Scratch::new("kill-s3");
    let prefix = format!(
        "runs/kill-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let uri = format!("s3://{bucket}/{prefix}");
    let list = {
        let (uri, endpoint) = (uri.clone(), endpoint.clone());
        move || {
            let out = Command::new(env!("CARGO_BIN_EXE_ferrotrain"))
                .args(["checkpoints", &uri, "--endpoint", &endpoint])
                .output();
            out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.ends_with("yes"))
                    .count()
            })
            .unwrap_or(0)
        }
    };
    let manifest_uri = format!("{uri}\", endpoint: \"{endpoint}");
    kill_a_worker_and_compare(&s, "kill-s3", &manifest_uri, list);
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (_scratch, _, mut child) = start_until_first_checkpoint("stopped");
    // A stopped worker cannot act on SIGTERM; only SIGKILL ends it.
    let workers = children_of(child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let signal = |name: &str, pid: u32| {
        assert!(
            Command::new("kill")
                .args([name, &pid.to_string()])
                .status()
                .expect("kill")
                .success()
        );
    };
    signal("-STOP", workers[1]);
    let stopped_at = Instant::now();
    signal("-INT", child.id());
    let limit = Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if stopped_at.elapsed() > limit {
            let _ = child.kill();
            for pid in &workers {
                signal("-KILL", *pid);
            }
            panic!("the run still waits on its stopped worker after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(130), "suspended");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(60),
        "ended {:?} after the worker stopped",
        stopped_at.elapsed()
    );
    // Dead or a zombie (its parent is gone): never stopped or running any more.
    wait_for("the workers to be gone", Duration::from_secs(10), || {
        !workers.iter().any(|pid| is_alive(*pid))
    });
}

#[test]
fn a_closed_stdout_suspends_the_run_instead_of_panicking() {
    // `ferrotrain run job.yaml --output json | head -1`
    let s = Scratch::new("epipe");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        "epipe",
        &format!("file://{}", ckpt.display()),
        "",
        INTERRUPTED_STEPS,
    );
    let mut child = s
        .ferrotrain(&["run", &manifest.display().to_string(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a first line");
    // The reader is gone: the next line the run writes meets a closed pipe.
    let started = Instant::now();
    let workers = children_of(child.id());
    let output = loop {
        if child.try_wait().expect("wait").is_some() {
            break child.wait_with_output().expect("output");
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run did not stop after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(130), "suspended: {stderr}");
    for pid in workers {
        assert!(!is_alive(pid), "worker {pid} outlived its supervisor");
    }
}

#[test]
fn one_run_per_job_and_a_killed_runner_leaves_no_workers_behind() {
    let (s, args, mut first) = start_until_first_checkpoint("locked");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A second run of the same job races on retention and logs: it is refused, naming the PID.
    let second = s.ferrotrain(&args).output().expect("second run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains(&format!("already running under PID {}", first.id())),
        "{stderr}"
    );
    // The runner is killed outright: its workers notice, checkpoint and exit.
    let workers = children_of(first.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    first.kill().expect("kill -9 the runner");
    first.wait().expect("reaped");
    wait_for(
        "the orphaned workers to stop",
        Duration::from_secs(60),
        || !workers.iter().any(|pid| is_alive(*pid)),
    );
    let rerun = s.ferrotrain(&args).output().expect("reruns");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        status_of(&rerun)["progress"]["step"].as_i64(),
        Some(i64::from(INTERRUPTED_STEPS))
    );
}

#[test]
fn ctrl_c_suspends_and_the_same_command_resumes() {
    let s = Scratch::new("sigint");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        "sigint",
        &format!("file://{}", ckpt.display()),
        "",
        INTERRUPTED_STEPS,
    );
    let args = ["run", &manifest.display().to_string(), "--output", "json"];
    let mut child = s
        .ferrotrain(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    wait_for("a committed checkpoint", Duration::from_secs(120), || {
        manifests(&ckpt) > 0
    });
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(130), "{lines:?}");
    let suspended = final_status(&lines.join("\n"));
    assert_eq!(suspended["phase"].as_str(), Some("Suspended"));
    let steps: Vec<u64> = std::fs::read_dir(ckpt.join("manifests"))
        .expect("manifests")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_string_lossy()
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    let emergency = steps
        .iter()
        .copied()
        .max()
        .expect("an emergency checkpoint");
    assert!(emergency < u64::from(INTERRUPTED_STEPS));

    let rerun = s.ferrotrain(&args).output().expect("reruns");
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(
        status_of(&rerun)["progress"]["step"].as_i64(),
        Some(i64::from(INTERRUPTED_STEPS))
    );
    // The rerun goes on counting where the suspended run stopped, as a cluster does: its
    // workers are attempt 2, and the first run's logs stay as they were.
    assert_eq!(status_of(&rerun)["attempt"].as_i64(), Some(2));
    let first = std::fs::read_to_string(s.0.join(".ferrotrain/sigint/logs/attempt-1-rank-0.log"))
        .expect("rank 0 log of the first run");
    assert_eq!(first.matches("--- ferrotrain run, started").count(), 1);
    let second_run =
        std::fs::read_to_string(s.0.join(".ferrotrain/sigint/logs/attempt-2-rank-0.log"))
            .expect("rank 0 log of the resumed run");
    let resumed_from = second_run
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "resumed from checkpoint")
        .and_then(|v| v["fields"]["step"].as_u64());
    assert_eq!(resumed_from, Some(emergency), "{second_run}");
}

/// Ctrl-C in a terminal signals the whole foreground process group, workers included. The
/// workers' own checkpoint-and-exit is the suspension the runner asked for, not a failure.
#[test]
fn ctrl_c_in_a_terminal_suspends_without_reporting_failed_workers() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new("terminal");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        "terminal",
        &format!("file://{}", ckpt.display()),
        "",
        INTERRUPTED_STEPS,
    );
    let child = s
        .ferrotrain(&["run", &manifest.display().to_string(), "--output", "json"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    wait_for("a committed checkpoint", Duration::from_secs(120), || {
        manifests(&ckpt) > 0
    });
    let group = format!("-{}", child.id());
    assert!(
        Command::new("kill")
            .args(["-INT", "--", &group])
            .status()
            .expect("kill")
            .success()
    );
    let output = finish(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(130), "suspended: {stdout}");
    assert!(
        !stdout.contains("failed with"),
        "a suspended worker was reported as failed:\n{stdout}"
    );
    assert!(stdout.contains("\"Suspended\""), "{stdout}");
}

/// A single worker has no peer to time out on it: without `progressDeadlineSeconds`, the default
/// deadline (ten median step times, at least a minute) finds it stopped and restarts it from its
/// checkpoint.
#[test]
fn a_frozen_single_worker_is_restarted_by_the_default_progress_deadline() {
    let s = Scratch::new("frozen-one");
    let ckpt = s.0.join("ckpt");
    let manifest = s.manifest_of_steps(
        "frozen-one",
        &format!("file://{}", ckpt.display()),
        "",
        5_000,
    );
    // One worker, and steps slow enough that it is stopped well before its end.
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let text = text
        .replace("replicas: 2", "replicas: 1")
        .replace("hidden: [64]", "hidden: [512, 512]");
    std::fs::write(&manifest, text).expect("manifest");
    let mut child = s
        .ferrotrain(&["run", &manifest.display().to_string(), "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    // Read as it comes: a full pipe would block the runner.
    let pipe = child.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            let _ = lines.send(line);
        }
        text
    });
    // Stopped once the runner has a report (so it knows the step time) and a checkpoint.
    let mut reported = false;
    wait_for(
        "a report and a checkpoint",
        Duration::from_secs(120),
        || {
            while let Ok(line) = received.try_recv() {
                reported |= line.contains("\"event\":\"status\"") && !line.contains("\"step\":0");
            }
            reported && manifests(&ckpt) > 0
        },
    );
    let workers = children_of(child.id());
    assert_eq!(workers.len(), 1, "{workers:?}");
    let stopped = Command::new("kill")
        .args(["-STOP", &workers[0].to_string()])
        .status()
        .expect("kill");
    assert!(stopped.success());
    let stopped_at = Instant::now();
    // A guard against a hang, not a measurement: the default deadline (60 s), a restart and the
    // rest of the steps, with room for a slow machine.
    let limit = Duration::from_secs(300);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if stopped_at.elapsed() > limit {
            let _ = child.kill();
            let _ = Command::new("kill")
                .args(["-KILL", &workers[0].to_string()])
                .status();
            let stdout = reader.join().unwrap_or_default();
            panic!("the run still waits on its stopped worker after {limit:?}:\n{stdout}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stdout = reader.join().expect("reader");
    assert!(exit.success(), "{stdout}");
    let status = final_status(&stdout);
    assert_eq!(status["phase"].as_str(), Some("Succeeded"), "{stdout}");
    assert_eq!(status["restarts"]["stall"].as_i64(), Some(1));
    let stalled = stdout
        .lines()
        .find(|l| l.contains("\"reason\":\"Stalled\""))
        .unwrap_or_else(|| panic!("no Stalled event in:\n{stdout}"));
    assert!(stalled.contains("default deadline"), "{stalled}");
}
