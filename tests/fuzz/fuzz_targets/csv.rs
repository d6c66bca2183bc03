//! The CSV reader on arbitrary text, with the label column and header flag taken from the
//! first byte: a dataset or a data error naming the row, never a panic.
#![no_main]

use ferrotrain_trainer::data::csv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let label_column = usize::from(options & 0x0f);
    let header = options & 0x10 != 0;
    if let Ok(dataset) = csv::parse("data.csv", text, label_column, header) {
        assert_eq!(dataset.features.len(), dataset.len() * dataset.dim);
        assert!(
            dataset
                .labels
                .iter()
                .all(|l| usize::from(*l) < dataset.classes)
        );
    }
});
