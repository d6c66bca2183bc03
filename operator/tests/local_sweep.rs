//! `ferrotrain sweep` end to end: trials as local jobs with real worker processes, ASHA stops,
//! PBT warm starts from another trial's checkpoint, the results table and the curves.

use std::path::PathBuf;
use std::process::{Command, Output};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ferrotrain-sweep-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn sweep(
        &self,
        name: &str,
        max_steps: u32,
        algorithm: &str,
        trials: u32,
        parallel: u32,
    ) -> PathBuf {
        let path = self.0.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: ferrotrain.io/v1alpha1
kind: TrainingSweep
metadata: {{name: {name}}}
spec:
  template:
    workers: {{replicas: 1}}
    trainer: {{model: {{type: mlp, hidden: [64]}}, dataset: {{type: mnist}}, batchSize: 64, maxSteps: {max_steps}, evalEverySteps: 50, seed: 3}}
  parameters:
  - {{path: optimizer.lr, type: double, min: 0.00003, max: 0.01, scale: log}}
  - {{path: model.dropout, type: double, min: 0.0, max: 0.4}}
  objective: {{metric: valAccuracy}}
  algorithm: {algorithm}
  maxTrials: {trials}
  parallelTrials: {parallel}
"
            ),
        )
        .expect("sweep manifest");
        path
    }

    fn run(&self, file: &PathBuf) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ferrotrain"))
            .current_dir(&self.0)
            .arg("sweep")
            .arg(file)
            .output()
            .expect("ferrotrain sweep runs")
    }

    /// Runs the sweep, which must succeed; returns its stdout.
    fn run_ok(&self, file: &PathBuf) -> String {
        let output = self.run(file);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn status(&self, sweep: &str) -> serde_yaml::Value {
        let text =
            std::fs::read_to_string(self.0.join(".ferrotrain").join(sweep).join("status.yaml"))
                .expect("status.yaml");
        serde_yaml::from_str::<serde_yaml::Value>(&text).expect("status YAML")["status"].clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn trials(status: &serde_yaml::Value) -> Vec<serde_yaml::Value> {
    status["trials"].as_sequence().cloned().unwrap_or_default()
}

#[test]
fn an_asha_sweep_stops_losers_and_reports_the_best_with_its_curves() {
    let scratch = Scratch::new("asha");
    // 3,000 steps: long enough that a stop at a rung lands well before the end.
    let file = scratch.sweep(
        "asha",
        3000,
        "{type: asha, seed: 6, minSteps: 100, reductionFactor: 3}",
        5,
        // One at a time: trials reach their rungs in index order, so which ones ASHA stops
        // does not depend on how fast two trials run side by side on a loaded machine.
        1,
    );
    let stdout = scratch.run_ok(&file);
    let status = scratch.status("asha");
    assert_eq!(status["phase"].as_str(), Some("Succeeded"));
    let trials = trials(&status);
    assert_eq!(trials.len(), 5);
    let stopped: Vec<&serde_yaml::Value> = trials
        .iter()
        .filter(|t| t["state"].as_str() == Some("Stopped"))
        .collect();
    assert!(!stopped.is_empty(), "ASHA stopped a trial:\n{stdout}");
    // A stop at the last rung (2,700) may land after the end; the earlier ones do not.
    assert!(
        stopped
            .iter()
            .any(|t| t["steps"].as_i64().unwrap_or(0) < 3000),
        "{stopped:?}"
    );
    for trial in &stopped {
        assert!(
            trial["message"]
                .as_str()
                .is_some_and(|m| m.contains("stopped at rung")),
            "{trial:?}"
        );
    }
    let best = status["best"]["trial"].as_str().expect("best trial");
    assert!(status["best"]["metric"].as_f64().unwrap_or(0.0) > 0.9);
    assert!(
        stdout.contains(&format!("best: {best} with valAccuracy")),
        "{stdout}"
    );
    assert!(stdout.contains("trained steps: "), "{stdout}");
    assert!(
        stdout.contains("for every trial to run to completion"),
        "{stdout}"
    );
    let png = scratch.0.join(".ferrotrain/asha/curves.png");
    let bytes = std::fs::read(&png).expect("curves.png");
    assert_eq!(&bytes[1..4], b"PNG");
    // Running the finished sweep again refuses instead of mixing checkpoints.
    let again = scratch.run(&file);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already finished"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_pbt_sweep_continues_the_bottom_member_from_a_top_members_checkpoint() {
    let scratch = Scratch::new("pbt");
    let file = scratch.sweep(
        "pbt",
        600,
        "{type: pbt, seed: 2, intervalSteps: 300, population: 2, quantile: 0.5}",
        4,
        2,
    );
    let stdout = scratch.run_ok(&file);
    let status = scratch.status("pbt");
    let trials = trials(&status);
    assert_eq!(trials.len(), 4);
    let metric = |t: &serde_yaml::Value| t["metric"].as_f64().expect("metric");
    let (first, second) = (&trials[0], &trials[1]);
    let (top, bottom) = if metric(first) >= metric(second) {
        ("pbt-000", "pbt-001")
    } else {
        ("pbt-001", "pbt-000")
    };
    // Interval 1: both members continue from the top member's checkpoint at step 300.
    for t in &trials[2..] {
        assert_eq!(t["parent"].as_str(), Some(top), "{t:?}");
        let from = t["initFrom"].as_str().expect("initFrom");
        assert!(
            from.contains(&format!("/{top}/manifests/000000000300.json")),
            "{from}"
        );
        assert_eq!(t["steps"].as_i64(), Some(600));
        assert_eq!(t["trainedSteps"].as_i64(), Some(300), "{t:?}");
    }
    let explorer = trials[2..]
        .iter()
        .find(|t| t["member"].as_i64() == Some(if bottom == "pbt-000" { 0 } else { 1 }))
        .expect("the bottom member's next trial");
    assert_ne!(
        explorer["parameters"],
        trials[if top == "pbt-000" { 0 } else { 1 }]["parameters"],
        "the bottom member explores"
    );
    // The trainer of a continued trial started from the checkpoint, not from scratch.
    let name = explorer["name"].as_str().expect("name");
    let log = std::fs::read_to_string(
        scratch
            .0
            .join(".ferrotrain/pbt")
            .join(name)
            .join("logs/attempt-1-rank-0.log"),
    )
    .expect("trial log");
    assert!(log.contains("warm start from checkpoint"), "{log}");
    assert!(
        stdout.contains("from"),
        "the table names each trial's parent:\n{stdout}"
    );
}
