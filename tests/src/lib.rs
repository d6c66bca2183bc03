//! Helpers for Ferrotrain's cross-crate integration tests: locating workspace files and checking
//! a CRD schema against the API server's structural-schema rules; a fault-injecting S3 proxy; the
//! fuzz targets' properties; the benchmarks' tools.

pub mod cluster;
pub mod credentials;
pub mod faultproxy;
pub mod fuzz;
pub mod heap_profile;
pub mod kubelet;
pub mod modgraph;
pub mod pss;
pub mod structural;

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Path of the committed CRD in the Helm chart.
pub fn chart_crd_path() -> PathBuf {
    workspace_root().join("charts/ferrotrain/crds/trainingjobs.ferrotrain.io.yaml")
}

/// The chart's copy of the TrainingSweep CRD.
pub fn chart_sweep_crd_path() -> PathBuf {
    workspace_root().join("charts/ferrotrain/crds/trainingsweeps.ferrotrain.io.yaml")
}

/// The final status a `ferrotrain run --output json` printed: its `finalStatus` line (Null when
/// there is none, for example after a crash).
pub fn final_status(stdout: &str) -> serde_yaml::Value {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .rfind(|line| line["event"] == "finalStatus")
        .and_then(|line| serde_yaml::to_value(&line["status"]).ok())
        .unwrap_or_default()
}
