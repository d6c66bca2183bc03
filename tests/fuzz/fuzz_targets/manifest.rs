//! The manifest loader on arbitrary bytes: every YAML document through the three admission
//! layers. Any input must give a TrainingJob or field errors, never a panic; an admitted job
//! must serialise and be admitted again unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrotrain_tests::fuzz::manifest(data));
