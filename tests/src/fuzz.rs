//! The fuzz targets' properties as plain functions over bytes. `tests/fuzz` runs each under
//! libFuzzer (`scripts/fuzz.sh`); `tests/tests/fuzz_corpus.rs` replays every committed input
//! (the seeds and every crash ever found) through the same functions in the ordinary test run.
//! A property that does not hold panics.

use std::sync::OnceLock;

use ferrotrain::manifest::{Admission, parse_documents};
use ferrotrain::progress::ProgressTracker;
use ferrotrain_crds::TrainingJobStatus;
use ferrotrain_trainer::checkpoint::layout::{Manifest, verify_manifest};
use ferrotrain_trainer::data::{Dataset, csv as csv_reader, idx as idx_reader};
use jiff::Timestamp;

/// A property of one target: returns when it holds for the input, panics when it does not.
pub type Property = fn(&[u8]);

/// Every target, by the name of its folder under `tests/fuzz/seeds`.
pub const TARGETS: &[(&str, Property)] = &[
    ("manifest", manifest),
    ("progress_report", progress_report),
    ("checkpoint_manifest", checkpoint_manifest),
    ("idx", idx),
    ("csv", csv),
];

fn admission() -> &'static Admission {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    ADMISSION.get_or_init(|| Admission::new().expect("the CRD schema compiles"))
}

/// The manifest loader: every YAML document through the three admission layers. Any input gives
/// a TrainingJob or field errors, never a panic; an admitted job serialises and is admitted again
/// unchanged.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (_, document) in parse_documents(text) {
        let Ok(value) = document else { continue };
        if let Ok(job) = admission().admit(&value) {
            let again = serde_json::to_value(&job).expect("an admitted job serialises");
            let reloaded = admission()
                .admit(&again)
                .unwrap_or_else(|e| panic!("an admitted job is refused once written back: {e:?}"));
            assert_eq!(reloaded.spec, job.spec, "a round trip changed the spec");
        }
    }
}

/// The progress endpoint's body parser, with a valid token: a report is accepted or rejected,
/// never a panic, and an accepted one applies to a status.
pub fn progress_report(data: &[u8]) {
    let mut tracker = ProgressTracker::default();
    let now = Timestamp::from_second(1_800_000_000).expect("valid time");
    // Twice, so that the rate and checkpoint bookkeeping see a previous report.
    for (i, body) in [data, data].into_iter().enumerate() {
        let at = now + jiff::SignedDuration::from_secs(i as i64 * 5);
        if tracker.accept(Some("token"), "token", body, 1, at).is_ok() {
            let mut status = TrainingJobStatus::default();
            tracker.apply(&mut status, 64, Some("s3://models/fuzz"), at);
            serde_json::to_vec(&status).expect("a status serialises");
        }
    }
}

/// The checkpoint manifest parser and verification: the first two bytes give the manifest's
/// length, the rest after it is what every data object reads as. A checkpoint is selected only
/// when every object it lists has the size the manifest names.
pub fn checkpoint_manifest(data: &[u8]) {
    let Some((length, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (manifest, object) =
        rest.split_at(usize::from(u16::from_le_bytes(*length)).min(rest.len()));
    if let Ok(parsed) = serde_json::from_slice::<Manifest>(manifest) {
        // What `ferrotrain checkpoints` shows of a manifest it could not verify.
        let _ = parsed.data_bytes();
    }
    if let Ok((parsed, snapshot)) = verify_manifest(manifest, |_key| Some(object.to_vec())) {
        assert!(!snapshot.params.is_empty());
        assert!(parsed.objects.iter().all(|o| o.size == object.len() as u64));
    }
}

/// The IDX reader, and an image/label pair built from its output: the first byte says how many
/// of the following bytes are the images file. A dataset or a data error, never a panic.
pub fn idx(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (images, labels) = rest.split_at(usize::from(split).min(rest.len()));
    let parsed_images = idx_reader::parse("images", images);
    let parsed_labels = idx_reader::parse("labels", labels);
    if let (Ok(images), Ok(labels)) = (parsed_images, parsed_labels)
        && let Ok(dataset) = Dataset::from_idx("images", &images, "labels", &labels)
    {
        check_dataset(&dataset);
    }
}

/// The CSV reader, with the label column and the header flag taken from the first byte: a
/// dataset or a data error naming the row, never a panic.
pub fn csv(data: &[u8]) {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let label_column = usize::from(options & 0x0f);
    let header = options & 0x10 != 0;
    if let Ok(dataset) = csv_reader::parse("data.csv", text, label_column, header) {
        check_dataset(&dataset);
    }
}

/// What every parsed dataset promises: one feature row per label, labels below the class count.
fn check_dataset(dataset: &Dataset) {
    assert_eq!(dataset.features.len(), dataset.len() * dataset.dim);
    assert!(
        dataset
            .labels
            .iter()
            .all(|l| usize::from(*l) < dataset.classes)
    );
}
