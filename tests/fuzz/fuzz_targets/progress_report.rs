//! The progress endpoint's body parser: arbitrary bodies with a valid token. A report is
//! accepted or rejected, never a panic, and an accepted one applies to a status.
#![no_main]

use ferrotrain::progress::ProgressTracker;
use ferrotrain_crds::TrainingJobStatus;
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut tracker = ProgressTracker::default();
    let now = Timestamp::from_second(1_800_000_000).expect("valid time");
    // Twice, so that the rate and checkpoint bookkeeping see a previous report.
    for (i, body) in [data, data].into_iter().enumerate() {
        let at = now + jiff::SignedDuration::from_secs(i as i64 * 5);
        if tracker.accept(Some("token"), "token", body, 1, at).is_ok() {
            let mut status = TrainingJobStatus::default();
            tracker.apply(&mut status, 64, at);
            serde_json::to_vec(&status).expect("a status serialises");
        }
    }
});
