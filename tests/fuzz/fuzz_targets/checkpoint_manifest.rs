//! The checkpoint manifest parser and verification on arbitrary bytes: the first two bytes give
//! the manifest's length, the rest after it is what every data object reads as. Nothing panics,
//! and a checkpoint is selected only when every object it lists has the size the manifest names.
#![no_main]

use ferrotrain_trainer::checkpoint::{Manifest, verify_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
