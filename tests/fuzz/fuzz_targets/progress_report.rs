//! The progress endpoint's body parser: arbitrary bodies with a valid token. A report is
//! accepted or rejected, never a panic, and an accepted one applies to a status.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrotrain_tests::fuzz::progress_report(data));
