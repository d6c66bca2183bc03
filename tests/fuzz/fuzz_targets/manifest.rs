//! The manifest loader on arbitrary bytes: every YAML document through the three admission
//! layers. Any input must give a TrainingJob or field errors, never a panic; an admitted job
//! must serialise and be admitted again unchanged.
#![no_main]

use std::sync::OnceLock;

use ferrotrain::manifest::{Admission, parse_documents};
use libfuzzer_sys::fuzz_target;

fn admission() -> &'static Admission {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    ADMISSION.get_or_init(|| Admission::new().expect("the CRD schema compiles"))
}

fuzz_target!(|data: &[u8]| {
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
});
