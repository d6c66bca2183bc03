//! The checkpoint manifest parser and verification on arbitrary bytes: the first two bytes give
//! the manifest's length, the rest after it is what every data object reads as. Nothing panics,
//! and a checkpoint is selected only when every object it lists has the size the manifest names.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrotrain_tests::fuzz::checkpoint_manifest(data));
