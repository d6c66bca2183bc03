//! What a checkpoint is in object storage: data objects at unique keys and a manifest (format,
//! sizes, SHA-256, step, world size, config hash) that names them; how the objects are encoded and
//! how a manifest and its objects are verified into a snapshot to resume from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the checkpoint layout.
pub(crate) const FORMAT: u32 = 1;
/// Folder of the manifests under a store's prefix.
pub(crate) const MANIFESTS: &str = "manifests";
/// Folder of the data objects under a store's prefix.
pub(crate) const DATA: &str = "data";

/// Scalars of the training loop that a resume restores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingState {
    /// Optimiser steps done (the global step).
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Training samples of the current epoch already consumed (across all ranks).
    pub samples_in_epoch: u64,
    /// Updates the optimiser has applied.
    pub optimizer_steps: u64,
    /// Best early-stopping metric so far.
    pub best_metric: Option<f64>,
    /// Evaluations since the best one.
    pub evals_without_improvement: u32,
    /// Latest training loss.
    pub loss: Option<f64>,
    /// Latest evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// World size that wrote it.
    pub world_size: u32,
}

/// Everything needed to resume: the state plus the parameters and optimiser moments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Loop state.
    pub state: TrainingState,
    /// Model parameters.
    pub params: Vec<f32>,
    /// Optimiser first moment / momentum (may be empty).
    pub moment1: Vec<f32>,
    /// Optimiser second moment (may be empty).
    pub moment2: Vec<f32>,
    /// Pruning mask, 1 for a weight that trains and 0 for a pruned one (empty without pruning).
    pub mask: Vec<f32>,
}

/// One data object of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntry {
    /// Role: `params`, `moment1`, `moment2`, `mask`.
    pub name: String,
    /// Key relative to the checkpoint location.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

/// The commit record of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Layout version.
    pub format: u32,
    /// Global step captured.
    pub step: u64,
    /// Hash of the configuration that shapes parameters and optimiser state.
    pub config_hash: String,
    /// Milliseconds since the Unix epoch at commit.
    pub created_unix_ms: u64,
    /// Loop state.
    pub state: TrainingState,
    /// Data objects.
    pub objects: Vec<ObjectEntry>,
    /// The model that wrote it, in words (for the error of a warm start into another model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// What was trained, enough to rebuild the model without the job (for `ferrotrain export`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<Trained>,
}

/// What a checkpoint is a checkpoint of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trained {
    /// The run's `spec.trainer`.
    pub trainer: ferrotrain_crds::TrainerSpec,
    /// Features of one input row.
    pub features: usize,
    /// Classes.
    pub classes: usize,
    /// `[height, width, channels]` when the rows are images, stored channels-last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<[usize; 3]>,
}

impl Manifest {
    /// Total bytes of the data objects.
    pub fn data_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// Splits a warm-start URI into a checkpoint location and, when it names one manifest
/// (`…/manifests/000000001000.json`), that manifest's key.
pub fn split_manifest_uri(uri: &str) -> (String, Option<String>) {
    if let Some((base, file)) = uri.rsplit_once(&format!("/{MANIFESTS}/"))
        && file.ends_with(".json")
        && !file.contains('/')
    {
        return (base.to_string(), Some(format!("{MANIFESTS}/{file}")));
    }
    (uri.to_string(), None)
}

pub(crate) fn manifest_key(step: u64) -> String {
    format!("{MANIFESTS}/{step:012}.json")
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn encode_f32(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Checks one data object against its manifest entry and keeps its values.
pub(crate) fn check_object(
    snapshot: &mut Snapshot,
    object: &ObjectEntry,
    bytes: &[u8],
) -> Result<(), String> {
    if bytes.len() as u64 != object.size {
        return Err(format!(
            "{}: {} bytes, manifest says {}",
            object.key,
            bytes.len(),
            object.size
        ));
    }
    if sha256_hex(bytes) != object.sha256 {
        return Err(format!(
            "{}: SHA-256 does not match the manifest",
            object.key
        ));
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "{}: {} bytes is not a whole number of f32 values",
            object.key,
            bytes.len()
        ));
    }
    let values = decode_f32(bytes);
    match object.name.as_str() {
        "params" => snapshot.params = values,
        "moment1" => snapshot.moment1 = values,
        "moment2" => snapshot.moment2 = values,
        "mask" => snapshot.mask = values,
        other => return Err(format!("unknown object role {other:?}")),
    }
    Ok(())
}

pub(crate) fn complete(snapshot: Snapshot) -> Result<Snapshot, String> {
    if snapshot.params.is_empty() {
        return Err("manifest lists no parameters".into());
    }
    Ok(snapshot)
}

/// Parses manifest bytes and verifies the objects it lists, read through `read`: the checks a
/// resume makes, without storage (the fuzz target drives this).
pub fn verify_manifest(
    manifest: &[u8],
    mut read: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<(Manifest, Snapshot), String> {
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("manifest is unreadable: {e}"))?;
    let mut snapshot = Snapshot {
        state: manifest.state.clone(),
        ..Snapshot::default()
    };
    for object in &manifest.objects {
        let bytes = read(&object.key).ok_or_else(|| format!("{}: not found", object.key))?;
        check_object(&mut snapshot, object, &bytes)?;
    }
    Ok((manifest, complete(snapshot)?))
}

pub(crate) fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
