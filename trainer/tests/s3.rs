//! Checkpoints and datasets on a real S3 server (SeaweedFS, started by scripts/test.sh through
//! scripts/s3-server.sh). Ignored in a plain `cargo test`; scripts/test.sh runs them with
//! `--ignored` once the server is up.

use std::time::Duration;

use ferrotrain_crds::TrainerSpec;
use ferrotrain_trainer::checkpoint::layout::{Snapshot, TrainingState};
use ferrotrain_trainer::checkpoint::lease::{Holder, Lease, LeaseError, LeaseTerms};
use ferrotrain_trainer::checkpoint::store::CheckpointStore;
use ferrotrain_trainer::data::load;
use ferrotrain_trainer::dist::ring::Ring;
use ferrotrain_trainer::run::config_hash;
use ferrotrain_trainer::storage::{self, Location, S3Options};
use ferrotrain_trainer::train::job::{CheckpointPlan, Job, Outcome};
use ferrotrain_trainer::train::steps::train;
use object_store::{ObjectStoreExt, PutPayload};

fn endpoint() -> (String, String) {
    let endpoint = std::env::var("FERROTRAIN_TEST_S3_ENDPOINT")
        .expect("FERROTRAIN_TEST_S3_ENDPOINT is not set: start the server with `eval \"$(scripts/s3-server.sh start)\"`");
    let bucket =
        std::env::var("FERROTRAIN_TEST_S3_BUCKET").unwrap_or_else(|_| "ferrotrain-test".into());
    (endpoint, bucket)
}

fn options() -> S3Options {
    S3Options {
        endpoint: Some(endpoint().0),
        region: Some("us-east-1".into()),
    }
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "s3://{}/tests/{name}-{}-{nanos}",
        endpoint().1,
        std::process::id()
    )
}

fn location(name: &str) -> Location {
    storage::open(&unique_prefix(name), &options()).expect("s3 location")
}

fn snapshot(step: u64) -> Snapshot {
    Snapshot {
        state: TrainingState {
            step,
            world_size: 1,
            ..TrainingState::default()
        },
        params: (0..1000).map(|i| i as f32 + step as f32).collect(),
        moment1: vec![0.5; 1000],
        moment2: vec![0.25; 1000],
        mask: Vec::new(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn checkpoints_commit_retain_and_fall_back_on_s3() {
    let rt = runtime();
    let loc = location("retain");
    let store = CheckpointStore::new(loc.clone(), 2, "cfg");
    rt.block_on(async {
        for step in [10, 20, 30] {
            store.commit(&snapshot(step)).await.expect("commit");
        }
        let listed: Vec<u64> = store
            .list()
            .await
            .expect("list")
            .iter()
            .map(|l| l.step)
            .collect();
        assert_eq!(listed, vec![30, 20]);
        // Alter the newest checkpoint's parameters: resume falls back to step 20.
        let newest = store
            .list()
            .await
            .expect("list")
            .remove(0)
            .manifest
            .expect("manifest");
        loc.store
            .put(
                &loc.key(&newest.objects[0].key),
                PutPayload::from(vec![0u8; 16]),
            )
            .await
            .expect("overwrite");
        let (latest, _) = store
            .load_latest()
            .await
            .expect("load")
            .expect("a valid checkpoint");
        assert_eq!(latest, snapshot(20));
    });
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn racing_commits_of_one_step_leave_exactly_one_manifest() {
    let rt = runtime();
    let loc = location("race");
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = CheckpointStore::new(loc.clone(), 3, "cfg");
                tokio::spawn(async move {
                    let mut s = snapshot(5);
                    s.params[0] = i as f32;
                    store.commit(&s).await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .expect("join")
                .expect("every racer sees a committed step 5");
        }
        let store = CheckpointStore::new(loc.clone(), 3, "cfg");
        let listed = store.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].problem, None, "the winning manifest verifies");
        let (winner, _) = store.load_latest().await.expect("load").expect("exists");
        assert!((0..8).any(|i| winner.params[0] == i as f32));
    });
}

/// The writer lease needs the store's conditional create (`If-None-Match: *`): of eight racers
/// for a free location exactly one holds it, and a second job is refused while the first renews.
#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn the_checkpoint_lease_admits_one_writer_on_s3() {
    let rt = runtime();
    let loc = location("lease");
    let terms = LeaseTerms {
        duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(500),
        poll_every: Duration::from_millis(100),
    };
    let holder = |id: &str| Holder {
        id: id.into(),
        job: format!("default/{id}"),
        attempt: 1,
    };
    rt.block_on(async {
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let (loc, holder) = (loc.clone(), holder(&format!("job-{i}")));
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(1), Lease::acquire(loc, holder, terms))
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for racer in racers {
            if let Ok(Ok(lease)) = racer.await.expect("join") {
                winners.push(lease);
            }
        }
        assert_eq!(winners.len(), 1, "one writer holds a free location");
        let mut winner = winners.pop().expect("winner");
        let renewing = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            winner.renew().await
        };
        let (refused, renewed) =
            tokio::join!(Lease::acquire(loc.clone(), holder("late"), terms), renewing);
        assert_eq!(renewed, Ok(true));
        assert!(
            matches!(refused, Err(LeaseError::HeldByAnother { .. })),
            "{refused:?}"
        );
        winner.release().await;
        Lease::acquire(loc.clone(), holder("late"), terms)
            .await
            .expect("released: taken at once");
    });
}

#[test]
#[ignore = "needs the S3 server of scripts/test.sh"]
fn training_resumes_from_s3_and_reads_its_dataset_from_s3() {
    let rt = runtime();
    let data_uri = format!("{}/data.csv", unique_prefix("dataset"));
    let rows: String = (0..600)
        .map(|i| {
            format!(
                "{},{},{}\n",
                i % 3,
                (i % 3) as f32 + (i % 7) as f32 * 0.1,
                (i % 5) as f32
            )
        })
        .collect();
    let (dir, name) = data_uri.rsplit_once('/').expect("uri");
    let data_loc = storage::open(dir, &options()).expect("data location");
    rt.block_on(
        data_loc
            .store
            .put(&data_loc.key(name), PutPayload::from(rows.into_bytes())),
    )
    .expect("upload");

    let spec: TrainerSpec = serde_yaml::from_str(&format!(
        "model: {{type: mlp, hidden: [16]}}\ndataset: {{type: csv, uri: '{data_uri}'}}\nbatchSize: 16\nepochs: 3\nseed: 9\n"
    ))
    .expect("spec");
    // Dataset reads use the usual AWS variables; point them at the test server.
    let data = rt
        .block_on(load::load(
            &spec.dataset,
            std::path::Path::new("."),
            9,
            &options(),
        ))
        .expect("dataset from s3");
    assert_eq!(data.train.len() + data.eval.len(), 600);
    let ckpt = location("train");
    let run = |stop_after_step: Option<u64>| {
        let job = Job {
            checkpoint: Some(CheckpointPlan {
                store: CheckpointStore::new(ckpt.clone(), 2, config_hash(&spec, &data)),
                every_steps: Some(10),
                every_seconds: None,
                resume: true,
            }),
            stop_after_step,
            ..Job::new(spec.clone())
        };
        train(job, &data, &mut Ring::single(), rt.handle()).expect("train")
    };
    let Outcome::Preempted(first) = run(Some(25)) else {
        panic!("preempted")
    };
    assert_eq!(first.checkpoint.map(|c| c.step), Some(25));
    let Outcome::Completed(second) = run(None) else {
        panic!("completed")
    };
    assert_eq!(second.resumed_from, Some(25));
    assert!(second.checkpoint_stats.committed >= 1);
}
