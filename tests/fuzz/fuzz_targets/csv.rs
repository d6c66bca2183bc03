//! The CSV reader on arbitrary text, with the label column and header flag taken from the
//! first byte: a dataset or a data error naming the row, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrotrain_tests::fuzz::csv(data));
