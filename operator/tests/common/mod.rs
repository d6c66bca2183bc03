//! What the `ferrotrain run` test crates share: a scratch directory with a manifest writer and
//! the CLI as a command. (Each crate uses part of it.)
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

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
