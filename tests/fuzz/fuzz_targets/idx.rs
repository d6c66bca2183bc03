//! The IDX reader on arbitrary bytes, and an image/label pair built from them: a dataset or a
//! data error naming the file, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrotrain_tests::fuzz::idx(data));
