//! Before any worker starts: the manifest loaded and admitted as a cluster would, whether the gang
//! fits this machine's CPUs and memory, whether its data and checkpoint store are reachable, and
//! where its checkpoints go when the manifest does not say.

use std::path::Path;

use ferrotrain_crds::{CheckpointSpec, TrainingJob};

use crate::local::error::RunError;
use crate::manifest::{Admission, ManifestError, parse_documents};

/// Refuses a gang with more workers than CPUs: the ranks run in lockstep, so they all wait for
/// the slowest, and a thousand trainers on a laptop exhaust its memory long before they train.
pub fn check_fits(replicas: i32, cpus: usize, oversubscribe: bool) -> Result<(), RunError> {
    let replicas = usize::try_from(replicas.max(0)).unwrap_or(0);
    if replicas > cpus && !oversubscribe {
        return Err(RunError::Preflight(format!(
            "spec.workers.replicas: {replicas} workers do not fit this machine's {cpus} CPUs (the ranks train in lockstep, so more workers than CPUs is slower, and each holds its own copy of the data); lower replicas, or pass --oversubscribe"
        )));
    }
    Ok(())
}

/// Memory a worker needs besides its data: the trainer's runtime, buffers and model (an MNIST
/// MLP worker peaks at about 240 MiB resident, 27 MiB over its data).
const WORKER_BASE_BYTES: u64 = 64 << 20;

/// The built-in MNIST as every worker holds it: 70,000 images of 784 f32 features.
const MNIST_BYTES: u64 = 70_000 * 784 * 4;

/// About how much memory one worker of `spec` needs: every worker holds the whole dataset as
/// f32 features (an IDX byte or a CSV field of a few characters becomes 4 bytes; a gzipped file
/// holds about five times its size), plus its runtime. Datasets in object storage are not
/// counted (their size is not known up front).
pub fn worker_memory_estimate(spec: &ferrotrain_crds::TrainerSpec) -> u64 {
    let dataset = &spec.dataset;
    let file_bytes = |uri: &Option<String>| {
        let Some(path) = uri.as_deref().and_then(|u| u.strip_prefix("file://")) else {
            return 0;
        };
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if path.ends_with(".gz") {
            size.saturating_mul(5)
        } else {
            size
        }
    };
    let data = match dataset.kind {
        ferrotrain_crds::DatasetKind::Mnist => MNIST_BYTES,
        ferrotrain_crds::DatasetKind::Idx | ferrotrain_crds::DatasetKind::Csv => [
            &dataset.images,
            &dataset.test_images,
            &dataset.uri,
            &dataset.test_uri,
        ]
        .into_iter()
        .map(file_bytes)
        .sum::<u64>()
        .saturating_mul(4),
    };
    WORKER_BASE_BYTES.saturating_add(data)
}

/// Refuses a gang whose workers together would need more memory than the machine has
/// available: the kernel's OOM killer would end them one by one instead.
pub fn check_memory(
    replicas: i32,
    per_worker: u64,
    available: Option<u64>,
) -> Result<(), RunError> {
    let Some(available) = available else {
        return Ok(());
    };
    let replicas = u64::try_from(replicas.max(0)).unwrap_or(0);
    let needed = per_worker.saturating_mul(replicas);
    if needed > available {
        let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
        return Err(RunError::Preflight(format!(
            "spec.workers.replicas: {replicas} workers need about {:.1} GiB of memory (about {:.0} MiB each: every worker holds the training data and its own runtime), and this machine has {:.1} GiB available; lower replicas (--oversubscribe lifts the CPU limit only)",
            gib(needed),
            per_worker as f64 / f64::from(1u32 << 20),
            gib(available)
        )));
    }
    Ok(())
}

/// `MemAvailable` of /proc/meminfo, in bytes; `None` where there is no such file.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads and admits the one TrainingJob in `path`.
pub fn load_job(path: &Path) -> Result<TrainingJob, RunError> {
    load_one(path, "TrainingJob", Admission::admit)
}

/// Reads the one document in `path` and admits it with `admit` as a `kind`.
pub fn load_one<T>(
    path: &Path,
    kind: &str,
    admit: impl Fn(&Admission, &serde_json::Value) -> Result<T, Vec<ManifestError>>,
) -> Result<T, RunError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Preflight(format!("{file}: cannot read: {e}")))?;
    let documents = parse_documents(&text);
    let [(_, document)] = documents.as_slice() else {
        return Err(RunError::Preflight(format!(
            "{file}: expected exactly one {kind} document, found {}",
            documents.len()
        )));
    };
    let admission = Admission::new().map_err(|e| RunError::Preflight(e.to_string()))?;
    let value = document.clone().map_err(|e| RunError::Invalid {
        file: file.clone(),
        errors: vec![e],
    })?;
    admit(&admission, &value).map_err(|errors| RunError::Invalid { file, errors })
}

/// The checkpoint a local run uses: the manifest's, or a directory under the state dir.
pub fn local_checkpoint(job: &TrainingJob, state_dir: &Path) -> CheckpointSpec {
    job.spec
        .checkpoint
        .clone()
        .unwrap_or_else(|| CheckpointSpec {
            uri: format!(
                "file://{}",
                state_dir.join(job_name(job)).join("checkpoints").display()
            ),
            endpoint: None,
            region: None,
            secret_ref: None,
            every_steps: None,
            every_seconds: Some(30),
            keep: Some(3),
            resume: None,
        })
}

pub(crate) fn job_name(job: &TrainingJob) -> String {
    job.metadata.name.clone().unwrap_or_else(|| "job".into())
}

/// Checks what the workers will need before starting any: the built-in data, local data files
/// and a reachable checkpoint store.
pub(crate) fn preflight(job: &TrainingJob) -> Result<(), RunError> {
    let dataset = &job.spec.trainer.dataset;
    let uris = [
        &dataset.images,
        &dataset.labels,
        &dataset.test_images,
        &dataset.test_labels,
        &dataset.uri,
        &dataset.test_uri,
    ];
    for uri in uris.into_iter().flatten() {
        if let Some(path) = uri.strip_prefix("file://")
            && !Path::new(path).exists()
        {
            return Err(RunError::Preflight(format!(
                "dataset file {uri} does not exist"
            )));
        }
    }
    #[cfg(feature = "worker")]
    {
        if dataset.kind == ferrotrain_crds::DatasetKind::Mnist {
            let dir = ferrotrain_trainer::run::default_data_dir().join("mnist");
            if !dir.join("train-images-idx3-ubyte.gz").exists() {
                return Err(RunError::Preflight(format!(
                    "the built-in MNIST is missing from {}; set FERROTRAIN_DATA_DIR",
                    dir.display()
                )));
            }
        }
        if let Some(checkpoint) = &job.spec.checkpoint
            && checkpoint.uri.starts_with("s3://")
        {
            check_s3(checkpoint)?;
        }
    }
    if let Some(checkpoint) = &job.spec.checkpoint
        && let Some(path) = checkpoint.uri.strip_prefix("file://")
    {
        check_local_store(&checkpoint.uri, Path::new(path))?;
    }
    Ok(())
}

/// A `file://` checkpoint location must be a directory this process can create and write.
fn check_local_store(uri: &str, dir: &Path) -> Result<(), RunError> {
    let refused = |why: String| RunError::Preflight(format!("spec.checkpoint.uri: {uri} {why}"));
    if dir.exists() && !dir.is_dir() {
        return Err(refused("is a file, not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| refused(format!("cannot be created: {e}")))?;
    let probe = dir.join(format!(".ferrotrain-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| refused(format!("is not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(feature = "worker")]
fn check_s3(checkpoint: &CheckpointSpec) -> Result<(), RunError> {
    use futures::StreamExt as _;
    let options = ferrotrain_trainer::storage::S3Options {
        endpoint: checkpoint.endpoint.clone(),
        region: checkpoint.region.clone(),
    };
    let where_ = checkpoint
        .endpoint
        .clone()
        .unwrap_or_else(|| "AWS S3".into());
    let location = ferrotrain_trainer::storage::open(&checkpoint.uri, &options)
        .map_err(|e| RunError::Preflight(format!("checkpoint storage {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let probe = runtime.block_on(async {
        let mut listing = location.store.list(Some(&location.prefix));
        tokio::time::timeout(std::time::Duration::from_secs(10), listing.next()).await
    });
    match probe {
        Err(_) => Err(RunError::Preflight(format!(
            "checkpoint storage {} at {where_} did not answer within 10 s",
            checkpoint.uri
        ))),
        Ok(Some(Err(e))) => Err(RunError::Preflight(format!(
            "checkpoint storage {} at {where_} is unreachable: {e}",
            checkpoint.uri
        ))),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gang_larger_than_the_machine_needs_oversubscribe() {
        assert!(check_fits(2, 2, false).is_ok());
        let refused = check_fits(1024, 8, false).expect_err("1024 workers on 8 CPUs");
        let message = refused.to_string();
        assert!(
            message.starts_with("spec.workers.replicas: 1024"),
            "{message}"
        );
        assert!(message.contains("--oversubscribe"), "{message}");
        assert!(check_fits(1024, 8, true).is_ok());
    }

    #[test]
    fn a_gang_that_needs_more_memory_than_is_available_is_refused_even_oversubscribed() {
        let spec: ferrotrain_crds::TrainerSpec = serde_yaml::from_str(
            "model: {type: mlp}\ndataset: {type: mnist}\nbatchSize: 8\nepochs: 1\n",
        )
        .expect("spec");
        let per_worker = worker_memory_estimate(&spec);
        assert_eq!(per_worker, (64 << 20) + 70_000 * 784 * 4);
        let gib = 1u64 << 30;
        assert!(check_memory(2, per_worker, Some(2 * gib)).is_ok());
        let refused = check_memory(16, per_worker, Some(2 * gib))
            .expect_err("16 MNIST workers in 2 GiB")
            .to_string();
        assert!(
            refused.starts_with(
                "spec.workers.replicas: 16 workers need about 4.3 GiB of memory (about 273 MiB each"
            ),
            "{refused}"
        );
        assert!(refused.contains("2.0 GiB available"), "{refused}");
        // --oversubscribe lifts the CPU limit only: workers that do not fit in memory would be
        // killed by the kernel's OOM killer, so nothing lifts this one.
        assert!(
            !refused.contains("pass --oversubscribe")
                && refused.contains("--oversubscribe lifts the CPU limit only"),
            "{refused}"
        );
        // Local files count by size; a gzipped one as about five times its size.
        let dir = std::env::temp_dir().join(format!("ferrotrain-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("d.csv.gz"), vec![0u8; 1000]).expect("write");
        let spec: ferrotrain_crds::TrainerSpec = serde_yaml::from_str(&format!(
            "model: {{type: mlp}}\ndataset: {{type: csv, uri: 'file://{}/d.csv.gz'}}\nbatchSize: 8\nepochs: 1\n",
            dir.display()
        ))
        .expect("spec");
        assert_eq!(worker_memory_estimate(&spec), (64 << 20) + 1000 * 5 * 4);
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            check_memory(16, per_worker, None).is_ok(),
            "unknown: no check"
        );
    }
}
