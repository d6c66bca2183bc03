//! Checkpoints in object storage. A checkpoint is data objects at unique keys plus a manifest
//! (sizes, SHA-256, step, world size, config hash) written last with a conditional create: a
//! checkpoint without a valid manifest does not exist. Resume takes the newest manifest whose
//! data verifies and falls back to older ones; a manifest of another configuration is refused.

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::checkpoint::layout::{
    DATA, FORMAT, MANIFESTS, Manifest, ObjectEntry, Snapshot, Trained, check_object, complete,
    encode_f32, manifest_key, sha256_hex,
};
use crate::checkpoint::lease::Fence;
use crate::storage::{self, Location, now_unix_ms};

/// The newest checkpoint that verifies, if any, and the newer ones passed over (step, problem).
pub type LatestAndRejected = (Option<(Snapshot, Manifest)>, Vec<(u64, String)>);

/// A committed checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// Step captured.
    pub step: u64,
    /// URI of its manifest.
    pub manifest_uri: String,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Commit time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// A checkpoint as listed, with the result of verifying its data.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    /// Step.
    pub step: u64,
    /// Manifest key.
    pub manifest_key: String,
    /// The manifest, when it parses.
    pub manifest: Option<Manifest>,
    /// Why it does not verify, if it does not.
    pub problem: Option<String>,
}

/// Checkpoint storage failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error("checkpoint storage {what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The object_store error.
        source: object_store::Error,
    },
    /// A commit did not finish in time (the SIGTERM grace period).
    #[error("checkpoint at step {step} did not commit within {seconds}s")]
    Timeout {
        /// Step being written.
        step: u64,
        /// The limit.
        seconds: u64,
    },
    /// The upload task failed.
    #[error("checkpoint upload task failed: {0}")]
    Task(String),
    /// This process no longer holds the location's writer lease.
    #[error("{0}")]
    LeaseLost(String),
    /// The newest checkpoint belongs to another configuration.
    #[error(
        "checkpoint at step {step} in {uri} was written by a different configuration (model, dataset or optimizer changed); use a new checkpoint uri or set checkpoint.resume: never"
    )]
    Incompatible {
        /// Its step.
        step: u64,
        /// Where.
        uri: String,
    },
}

/// Checkpoints of one job under one location.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    location: Location,
    keep: usize,
    config_hash: String,
    model: Option<String>,
    trained: Option<Trained>,
    /// Closed when this process lost the location's writer lease: no commit or deletion after.
    fence: Option<std::sync::Arc<Fence>>,
}

impl CheckpointStore {
    /// Checkpoints under `location`, keeping the newest `keep`, for configuration `config_hash`.
    pub fn new(location: Location, keep: usize, config_hash: impl Into<String>) -> Self {
        Self {
            location,
            keep: keep.max(1),
            config_hash: config_hash.into(),
            model: None,
            trained: None,
            fence: None,
        }
    }

    /// Writes only while `fence` is open.
    pub fn with_fence(mut self, fence: std::sync::Arc<Fence>) -> Self {
        self.fence = Some(fence);
        self
    }

    fn check_fence(&self) -> Result<(), CheckpointError> {
        match &self.fence {
            Some(fence) => fence.check().map_err(CheckpointError::LeaseLost),
            None => Ok(()),
        }
    }

    /// Records `model` (a description of the model) in every manifest this store commits.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Records what is trained in every manifest this store commits.
    pub fn with_trained(mut self, trained: Trained) -> Self {
        self.trained = Some(trained);
        self
    }

    /// The store and prefix.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Where the checkpoints live.
    pub fn uri(&self) -> &str {
        &self.location.uri
    }

    /// Uploads the data objects, then commits the manifest; then applies retention.
    pub async fn commit(&self, snapshot: &Snapshot) -> Result<Committed, CheckpointError> {
        self.check_fence()?;
        let step = snapshot.state.step;
        let nonce = storage::unique_nonce();
        let mut names = Vec::new();
        let mut hashes = Vec::new();
        let mut puts = Vec::new();
        let objects = [
            ("params", &snapshot.params),
            ("moment1", &snapshot.moment1),
            ("moment2", &snapshot.moment2),
            ("mask", &snapshot.mask),
        ];
        // A run without pruning writes no mask object.
        for (name, values) in objects
            .into_iter()
            .filter(|(name, values)| *name != "mask" || !values.is_empty())
        {
            let bytes = bytes::Bytes::from(encode_f32(values));
            let key = format!("{DATA}/{step:012}-{nonce}/{name}.bin");
            names.push((name, key.clone(), bytes.len() as u64));
            // Hash while the bytes upload: the commit costs the slower of the two, not the sum.
            let to_hash = bytes.clone();
            hashes.push(tokio::task::spawn_blocking(move || sha256_hex(&to_hash)));
            let location = self.location.key(&key);
            let store = &self.location.store;
            puts.push(async move {
                store
                    .put(&location, PutPayload::from(bytes))
                    .await
                    .map_err(store_error(format!("write of {key}")))
            });
        }
        // The data objects go up together; the manifest only after all of them landed. A
        // failed commit (a full disk, a store that gave up) takes back what it wrote, so that
        // it leaves no garbage behind to fill the disk further.
        let dir = format!("{DATA}/{step:012}-{nonce}");
        if let Err(e) = futures::future::try_join_all(puts).await {
            self.take_back(&dir, names.iter().map(|(_, key, _)| key.as_str()))
                .await;
            return Err(e);
        }
        let mut objects = Vec::new();
        for ((name, key, size), hash) in names.into_iter().zip(hashes) {
            objects.push(ObjectEntry {
                name: name.into(),
                key,
                size,
                sha256: hash
                    .await
                    .map_err(|e| CheckpointError::Task(e.to_string()))?,
            });
        }
        let manifest = Manifest {
            format: FORMAT,
            step,
            config_hash: self.config_hash.clone(),
            created_unix_ms: now_unix_ms(),
            state: snapshot.state.clone(),
            objects,
            model: self.model.clone(),
            trained: self.trained.clone(),
        };
        let manifest_key = manifest_key(step);
        let body = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        if let Err(e) = self.check_fence() {
            self.take_back(&dir, manifest.objects.iter().map(|o| o.key.as_str()))
                .await;
            return Err(e);
        }
        let put = self
            .location
            .store
            .put_opts(
                &self.location.key(&manifest_key),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Either our own create landed and was retried, or this step was already committed
                // (an emergency checkpoint right after a scheduled one): both leave a valid commit.
                let existing = self.read_manifest(&manifest_key).await?;
                if existing.as_ref() != Some(&manifest) {
                    self.delete_objects(&manifest).await;
                }
            }
            Err(e) => {
                self.take_back(&dir, manifest.objects.iter().map(|o| o.key.as_str()))
                    .await;
                return Err(store_error(format!("commit of {manifest_key}"))(e));
            }
        }
        // The checkpoint is committed; deleting older ones is housekeeping that the next commit
        // does again, so its failure must not fail this commit (and the attempt with it).
        if let Err(e) = self.retain().await {
            tracing::warn!(error = %e, "old checkpoints not deleted yet; the next commit tries again");
        }
        Ok(Committed {
            step,
            manifest_uri: format!("{}/{manifest_key}", self.location.uri.trim_end_matches('/')),
            bytes: manifest.data_bytes(),
            unix_ms: manifest.created_unix_ms,
        })
    }

    /// Deletes all but the newest `keep` checkpoints: manifest first, so a half-deleted checkpoint
    /// never looks valid.
    pub async fn retain(&self) -> Result<(), CheckpointError> {
        self.check_fence()?;
        let manifests = self.manifest_keys().await?;
        for (_, key) in manifests.iter().skip(self.keep) {
            let manifest = self.read_manifest(key).await.ok().flatten();
            self.location
                .store
                .delete(&self.location.key(key))
                .await
                .map_err(store_error(format!("delete of {key}")))?;
            if let Some(manifest) = manifest {
                self.delete_objects(&manifest).await;
            }
        }
        Ok(())
    }

    /// Deletes the objects of a commit that failed, and its directory on a local disk.
    async fn take_back(&self, dir: &str, keys: impl Iterator<Item = &str>) {
        for key in keys {
            let _ = self.location.store.delete(&self.location.key(key)).await;
        }
        self.location.remove_empty_dir(dir);
    }

    async fn delete_objects(&self, manifest: &Manifest) {
        for object in &manifest.objects {
            // A leftover data object is only garbage; it never affects correctness.
            let _ = self
                .location
                .store
                .delete(&self.location.key(&object.key))
                .await;
        }
    }

    /// Manifest keys, newest step first.
    async fn manifest_keys(&self) -> Result<Vec<(u64, String)>, CheckpointError> {
        let prefix = self.location.key(MANIFESTS);
        let metas: Vec<_> = storage::retry_reads(MANIFESTS, || {
            self.location
                .store
                .list(Some(&prefix))
                .try_collect::<Vec<_>>()
        })
        .await
        .map_err(store_error(format!("listing of {}", self.location.uri)))?;
        let mut keys: Vec<(u64, String)> = metas
            .iter()
            .filter_map(|m| {
                let file = m.location.filename()?;
                let step = file.strip_suffix(".json")?.parse().ok()?;
                Some((step, format!("{MANIFESTS}/{file}")))
            })
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.0));
        Ok(keys)
    }

    async fn read_manifest(&self, key: &str) -> Result<Option<Manifest>, CheckpointError> {
        match self.location.read(key).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error(format!("read of {key}"))(e)),
        }
    }

    /// Reads a checkpoint's data and checks sizes and hashes. A missing or corrupt object makes
    /// the checkpoint invalid (`Ok(Err(problem))`); a store that fails to answer is an error of
    /// its own: the checkpoint may be fine, and passing over it would lose its progress.
    async fn verify(
        &self,
        manifest: &Manifest,
    ) -> Result<Result<Snapshot, String>, CheckpointError> {
        let mut snapshot = Snapshot {
            state: manifest.state.clone(),
            ..Snapshot::default()
        };
        for object in &manifest.objects {
            let bytes = match self.location.read(&object.key).await {
                Ok(bytes) => bytes,
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return Ok(Err(format!("{}: {e}", object.key)));
                }
                Err(e) => return Err(store_error(format!("read of {}", object.key))(e)),
            };
            if let Err(problem) = check_object(&mut snapshot, object, &bytes) {
                return Ok(Err(problem));
            }
        }
        Ok(complete(snapshot))
    }

    /// The newest checkpoint that verifies, skipping corrupt ones with a warning each.
    pub async fn load_latest(&self) -> Result<Option<(Snapshot, Manifest)>, CheckpointError> {
        Ok(self.load_latest_noting_rejects().await?.0)
    }

    /// [`Self::load_latest`], and the checkpoints it passed over (step, problem), newest first.
    pub async fn load_latest_noting_rejects(&self) -> Result<LatestAndRejected, CheckpointError> {
        let mut rejected = Vec::new();
        for (step, key) in self.manifest_keys().await? {
            let Some(manifest) = self.read_manifest(&key).await? else {
                tracing::warn!(checkpoint = %key, "manifest is unreadable; trying an older checkpoint");
                rejected.push((step, "manifest is unreadable".to_string()));
                continue;
            };
            if manifest.config_hash != self.config_hash {
                return Err(CheckpointError::Incompatible {
                    step,
                    uri: self.location.uri.clone(),
                });
            }
            match self.verify(&manifest).await? {
                Ok(snapshot) => return Ok((Some((snapshot, manifest)), rejected)),
                Err(problem) => {
                    tracing::warn!(checkpoint = %key, %problem, "checkpoint does not verify; trying an older one");
                    rejected.push((step, problem));
                }
            }
        }
        Ok((None, rejected))
    }

    /// The checkpoint a warm start begins from: the manifest at `manifest_key`, or else the
    /// newest that verifies. Any configuration is accepted (the caller compares shapes);
    /// `Ok(Err(problem))` when there is no usable checkpoint.
    pub async fn load_for_warm_start(
        &self,
        manifest_key: Option<&str>,
    ) -> Result<Result<(Snapshot, Manifest), String>, CheckpointError> {
        let keys: Vec<String> = match manifest_key {
            Some(key) => vec![key.to_string()],
            None => self
                .manifest_keys()
                .await?
                .into_iter()
                .map(|(_, key)| key)
                .collect(),
        };
        let mut problem = None;
        for key in keys {
            let Some(manifest) = self.read_manifest(&key).await? else {
                problem = Some(format!("{key}: the manifest is missing or unreadable"));
                continue;
            };
            match self.verify(&manifest).await? {
                Ok(snapshot) => return Ok(Ok((snapshot, manifest))),
                Err(p) => problem = Some(p),
            }
        }
        Ok(Err(problem.unwrap_or_else(|| {
            "there is no committed checkpoint there".to_string()
        })))
    }

    /// Every checkpoint, newest first, each verified.
    pub async fn list(&self) -> Result<Vec<Listed>, CheckpointError> {
        let mut out = Vec::new();
        for (step, key) in self.manifest_keys().await? {
            let manifest = self.read_manifest(&key).await?;
            let problem = match &manifest {
                None => Some("manifest is unreadable".to_string()),
                Some(m) => match self.verify(m).await {
                    Ok(verified) => verified.err(),
                    Err(e) => Some(format!("cannot be read now: {e}")),
                },
            };
            out.push(Listed {
                step,
                manifest_key: key,
                manifest,
                problem,
            });
        }
        Ok(out)
    }
}

fn store_error(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> CheckpointError {
    let what = what.into();
    move |source| CheckpointError::Store { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::layout::TrainingState;

    fn temp_location(name: &str) -> (std::path::PathBuf, Location) {
        crate::storage::temp_location("ckpt", name)
    }

    fn snapshot(step: u64) -> Snapshot {
        Snapshot {
            state: TrainingState {
                step,
                epoch: 1,
                world_size: 2,
                ..TrainingState::default()
            },
            params: (0..100).map(|i| i as f32 * 0.5 + step as f32).collect(),
            moment1: vec![0.25; 100],
            moment2: Vec::new(),
            // A pruned run's mask travels with the parameters.
            mask: (0..100).map(|i| f32::from(u8::from(i % 3 != 0))).collect(),
        }
    }

    #[tokio::test]
    async fn commit_then_resume_returns_the_newest() {
        let (dir, loc) = temp_location("newest");
        let store = CheckpointStore::new(loc, 3, "cfg");
        assert_eq!(store.load_latest().await.expect("lists"), None);
        for step in [10, 20, 30] {
            store.commit(&snapshot(step)).await.expect("commits");
        }
        let (latest, manifest) = store.load_latest().await.expect("loads").expect("exists");
        assert_eq!(latest, snapshot(30));
        assert_eq!(manifest.step, 30);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn retention_keeps_the_newest_and_deletes_their_data() {
        let (dir, loc) = temp_location("retain");
        let store = CheckpointStore::new(loc, 2, "cfg");
        for step in 1..=4 {
            store.commit(&snapshot(step)).await.expect("commits");
        }
        let steps: Vec<u64> = store
            .list()
            .await
            .expect("lists")
            .iter()
            .map(|l| l.step)
            .collect();
        assert_eq!(steps, vec![4, 3]);
        let data_dirs = std::fs::read_dir(dir.join("data"))
            .expect("data dir")
            .count();
        assert_eq!(data_dirs, 2, "data of deleted checkpoints is removed");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn corrupt_or_truncated_data_falls_back_to_the_previous_checkpoint() {
        let (dir, loc) = temp_location("corrupt");
        let store = CheckpointStore::new(loc, 5, "cfg");
        store.commit(&snapshot(1)).await.expect("commits");
        store.commit(&snapshot(2)).await.expect("commits");
        store.commit(&snapshot(3)).await.expect("commits");
        let listed = store.list().await.expect("lists");
        let data_of = |step: u64| {
            let m = listed
                .iter()
                .find(|l| l.step == step)
                .and_then(|l| l.manifest.clone())
                .expect("manifest");
            dir.join(&m.objects[0].key)
        };
        // Truncate step 3's parameters, flip a byte of step 2's.
        let p3 = data_of(3);
        let bytes = std::fs::read(&p3).expect("read");
        std::fs::write(&p3, &bytes[..bytes.len() / 2]).expect("truncate");
        let p2 = data_of(2);
        let mut bytes = std::fs::read(&p2).expect("read");
        bytes[7] ^= 0x55;
        std::fs::write(&p2, bytes).expect("alter");
        let (latest, _) = store
            .load_latest()
            .await
            .expect("loads")
            .expect("falls back");
        assert_eq!(latest.state.step, 1);
        let problems: Vec<bool> = store
            .list()
            .await
            .expect("lists")
            .iter()
            .map(|l| l.problem.is_some())
            .collect();
        assert_eq!(problems, vec![true, true, false]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_checkpoint_without_manifest_does_not_exist_and_other_configs_are_refused() {
        let (dir, loc) = temp_location("config");
        let store = CheckpointStore::new(loc.clone(), 3, "cfg-a");
        store.commit(&snapshot(5)).await.expect("commits");
        // Data written without a manifest (a crash mid-upload) is invisible.
        std::fs::create_dir_all(dir.join("data/000000000009-dead")).expect("dir");
        std::fs::write(dir.join("data/000000000009-dead/params.bin"), [0u8; 8]).expect("write");
        assert_eq!(
            store
                .load_latest()
                .await
                .expect("loads")
                .map(|(s, _)| s.state.step),
            Some(5)
        );
        let other = CheckpointStore::new(loc, 3, "cfg-b");
        assert!(matches!(
            other.load_latest().await,
            Err(CheckpointError::Incompatible { step: 5, .. })
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn committing_the_same_step_twice_keeps_one_valid_checkpoint() {
        let (dir, loc) = temp_location("twice");
        let store = CheckpointStore::new(loc, 3, "cfg");
        store.commit(&snapshot(7)).await.expect("first");
        let mut again = snapshot(7);
        again.params[0] = -1.0;
        store.commit(&again).await.expect("second is absorbed");
        let (latest, _) = store.load_latest().await.expect("loads").expect("exists");
        assert_eq!(latest, snapshot(7), "the first commit wins");
        assert_eq!(
            std::fs::read_dir(dir.join("data")).expect("data").count(),
            1,
            "the loser's data is deleted"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
