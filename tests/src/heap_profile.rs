//! Reads a dhat heap profile (the operator's `heap-profile` build) and attributes its bytes to
//! owners: the caches, the event recorder, the progress hub, HTTP connections and so on, at the
//! profile's peak and at its end (the operator's SIGTERM, everything still held).

use std::collections::BTreeMap;

/// Owners, the first whose pattern appears anywhere in an allocation's stack wins: the more
/// specific holders come first (a pod decoded by the watch and then kept by the pod cache
/// shows both).
const OWNERS: &[(&str, &[&str])] = &[
    (
        "progress hub (per-job progress, step times, metrics)",
        &["ferrotrain::cluster::hub"],
    ),
    ("event recorder (kube-runtime)", &["kube_runtime::events"]),
    (
        "pod cache (slimmed pods, index by job)",
        &["ferrotrain::cluster::cache"],
    ),
    ("sweep controller", &["ferrotrain::cluster::sweep"]),
    (
        "pods as the watch decoded them",
        &["k8s_openapi::api::core::v1::pod"],
    ),
    (
        "TrainingJobs as the watch decoded them",
        &["ferrotrain_crds"],
    ),
    (
        "other decoded objects (nodes, leases, metadata)",
        &["k8s_openapi"],
    ),
    (
        "reflector stores and watchers",
        &["kube_runtime::reflector", "kube_runtime::watcher"],
    ),
    (
        "controller queues and scheduler",
        &["kube_runtime::controller", "kube_runtime::scheduler"],
    ),
    (
        "reconciles in flight",
        &["ferrotrain::cluster::reconcile", "ferrotrain::decide"],
    ),
    (
        "HTTP connections and buffers",
        &["hyper", "h2::", "axum", "tower"],
    ),
    ("TLS", &["rustls", "ring::"]),
    ("JSON not attributed above", &["serde_json"]),
    ("tokio runtime", &["tokio::"]),
    ("logging", &["tracing"]),
];

/// Frames that say nothing about who holds the memory.
const GENERIC: &[&str] = &[
    "alloc::",
    "core::",
    "std::",
    "<alloc::",
    "<core::",
    "<std::",
    "dhat::",
    "<dhat::",
    "serde::",
    "<serde::",
    "hashbrown::",
    "<hashbrown::",
    "__rust",
    "<&",
];

/// Bytes and blocks held by one owner at two moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes at the profile's global peak (t-gmax).
    pub peak_bytes: u64,
    /// Blocks at the peak.
    pub peak_blocks: u64,
    /// Bytes when the profile was written (t-end).
    pub end_bytes: u64,
    /// Blocks then.
    pub end_blocks: u64,
}

/// A profile summarised: by owner, and the largest allocation sites at the end.
#[derive(Debug, Default)]
pub struct Summary {
    /// Per owner (or `other: <first specific frame>`).
    pub owners: BTreeMap<String, Held>,
    /// (bytes at the end, blocks, the first specific frames) of the largest sites.
    pub sites: Vec<(u64, u64, String)>,
}

/// The function of a dhat frame (`0x…: function (file:line:col)`).
fn function(frame: &str) -> &str {
    let name = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    name.split(" (").next().unwrap_or(name)
}

/// The owner of an allocation whose stack (innermost first) is `frames`.
pub fn owner_of(frames: &[&str]) -> String {
    let functions: Vec<&str> = frames.iter().map(|f| function(f)).collect();
    for (owner, patterns) in OWNERS {
        if functions
            .iter()
            .any(|f| patterns.iter().any(|p| f.contains(p)))
        {
            return (*owner).to_string();
        }
    }
    let specific = functions
        .iter()
        .find(|f| !GENERIC.iter().any(|g| f.starts_with(g)))
        .copied()
        .unwrap_or("unknown");
    format!("other: {specific}")
}

/// Summarises a dhat JSON profile.
pub fn summarize(profile: &serde_json::Value) -> Result<Summary, String> {
    let table: Vec<&str> = profile["ftbl"]
        .as_array()
        .ok_or("no frame table (ftbl): not a dhat profile")?
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let points = profile["pps"]
        .as_array()
        .ok_or("no program points (pps): not a dhat profile")?;
    let mut summary = Summary::default();
    for point in points {
        let frames: Vec<&str> = point["fs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| table.get(i.as_u64()? as usize).copied())
            .collect();
        let number = |key: &str| point[key].as_u64().unwrap_or(0);
        let held = summary.owners.entry(owner_of(&frames)).or_default();
        held.peak_bytes += number("gb");
        held.peak_blocks += number("gbk");
        held.end_bytes += number("eb");
        held.end_blocks += number("ebk");
        if number("eb") > 0 {
            let specific: Vec<&str> = frames
                .iter()
                .map(|f| function(f))
                .filter(|f| !GENERIC.iter().any(|g| f.starts_with(g)))
                .take(4)
                .collect();
            summary
                .sites
                .push((number("eb"), number("ebk"), specific.join(" < ")));
        }
    }
    summary.sites.sort_by_key(|site| std::cmp::Reverse(site.0));
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_holder_in_the_stack_owns_the_bytes() {
        let decoded_pod = [
            "0x1: alloc::raw_vec::finish_grow (raw_vec.rs:1:1)",
            "0x2: k8s_openapi::apimachinery::pkg::apis::meta::v1::object_meta::ObjectMeta::deserialize (x.rs:1:1)",
            "0x3: <k8s_openapi::api::core::v1::pod::Pod as serde::de::Deserialize>::deserialize (pod.rs:1:1)",
            "0x4: kube_runtime::watcher::step (watcher.rs:1:1)",
        ];
        assert_eq!(owner_of(&decoded_pod), "pods as the watch decoded them");
        let recorded = [
            "0x1: alloc::string::String::clone (s.rs:1:1)",
            "0x2: kube_runtime::events::Recorder::publish (events.rs:1:1)",
            "0x3: ferrotrain::cluster::reconcile::reconcile_as_leader (reconcile.rs:1:1)",
        ];
        assert_eq!(owner_of(&recorded), "event recorder (kube-runtime)");
        let unknown = ["0x1: alloc::alloc::alloc", "0x2: mystery::thing (m.rs:1:1)"];
        assert_eq!(owner_of(&unknown), "other: mystery::thing");
    }

    #[test]
    fn a_profile_is_summed_by_owner_at_its_peak_and_its_end() {
        let profile = serde_json::json!({
            "ftbl": ["[root]", "0x1: ferrotrain::cluster::hub::ProgressHub::record (hub.rs:1:1)", "0x2: tokio::runtime::spawn (t.rs:1:1)"],
            "pps": [
                {"tb": 10, "tbk": 1, "gb": 100, "gbk": 2, "eb": 50, "ebk": 1, "fs": [1, 2]},
                {"tb": 10, "tbk": 1, "gb": 7, "gbk": 1, "eb": 0, "ebk": 0, "fs": [2]},
                {"tb": 10, "tbk": 1, "gb": 3, "gbk": 1, "eb": 3, "ebk": 1, "fs": [1]},
            ],
        });
        let summary = summarize(&profile).expect("summary");
        let hub = summary.owners["progress hub (per-job progress, step times, metrics)"];
        assert_eq!(
            (
                hub.peak_bytes,
                hub.peak_blocks,
                hub.end_bytes,
                hub.end_blocks
            ),
            (103, 3, 53, 2)
        );
        assert_eq!(summary.owners["tokio runtime"].peak_bytes, 7);
        assert_eq!(summary.sites.first().map(|s| s.0), Some(50));
        assert!(summarize(&serde_json::json!({})).is_err());
    }
}
