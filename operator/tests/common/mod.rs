//! What the `ferrotrain run` test crates share: a scratch directory with a manifest writer and
//! the CLI as a command. (Each crate uses part of it.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("ferrotrain-run-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn manifest(&self, name: &str, checkpoint_uri: &str, extra: &str) -> PathBuf {
        self.manifest_of_steps(name, checkpoint_uri, extra, 1200)
    }

    pub fn manifest_of_steps(
        &self,
        name: &str,
        checkpoint_uri: &str,
        extra: &str,
        steps: u32,
    ) -> PathBuf {
        let path = self.0.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: ferrotrain.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}}}\nspec:\n  workers: {{replicas: 2}}\n  trainer:\n    model: {{type: mlp, hidden: [64]}}\n    dataset: {{type: mnist}}\n    batchSize: 64\n    maxSteps: {steps}\n    seed: 5\n  checkpoint: {{uri: \"{checkpoint_uri}\", everySteps: 100{extra}}}\n"
            ),
        )
        .expect("manifest");
        path
    }

    pub fn ferrotrain(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrotrain"));
        cmd.current_dir(&self.0)
            .args(args)
            .env("MATMUL_NUM_THREADS", "1");
        cmd
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `ready`, failing the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Committed checkpoints (manifests) under a `file://` location's directory.
pub fn manifests(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("manifests"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The final status of a `--output json` run: its last stdout line, `{"event":"finalStatus",…}`.
pub fn final_status(text: &str) -> serde_yaml::Value {
    let last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output in:\n{text}"));
    let line: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {last}"));
    assert_eq!(line["event"], "finalStatus", "{last}");
    serde_yaml::to_value(&line["status"]).expect("status")
}
