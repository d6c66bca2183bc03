//! The IDX reader on arbitrary bytes, and an image/label pair built from them: a dataset or a
//! data error naming the file, never a panic.
#![no_main]

use ferrotrain_trainer::data::{Dataset, idx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the following bytes are the images file.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (images, labels) = rest.split_at(usize::from(split).min(rest.len()));
    let parsed_images = idx::parse("images", images);
    let parsed_labels = idx::parse("labels", labels);
    if let (Ok(images), Ok(labels)) = (parsed_images, parsed_labels) {
        if let Ok(dataset) = Dataset::from_idx("images", &images, "labels", &labels) {
            assert_eq!(dataset.features.len(), dataset.len() * dataset.dim);
            assert!(
                dataset
                    .labels
                    .iter()
                    .all(|l| usize::from(*l) < dataset.classes)
            );
        }
    }
});
