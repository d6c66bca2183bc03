//! Every committed fuzz input (the seeds of `tests/fuzz/seeds/<target>`, where every crash a
//! fuzzer ever found is kept as well) through the same target functions libFuzzer runs, so that a
//! regression of a fixed crash fails the ordinary test run without an instrumented build.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ferrotrain_tests::fuzz::TARGETS;
use ferrotrain_tests::workspace_root;

#[test]
fn every_committed_fuzz_input_keeps_its_targets_properties() {
    let seeds = workspace_root().join("tests/fuzz/seeds");
    let mut failures = Vec::new();
    for (target, property) in TARGETS {
        let dir = seeds.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{}: no committed inputs", dir.display());
        for input in inputs {
            let data = std::fs::read(&input).expect("readable input");
            if catch_unwind(AssertUnwindSafe(|| property(&data))).is_err() {
                failures.push(input.display().to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that break a property: {failures:#?}"
    );
}

#[test]
fn every_fuzz_target_has_a_seed_folder_and_a_libfuzzer_entry() {
    let fuzz = workspace_root().join("tests/fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("tests/fuzz/Cargo.toml");
    for (target, _) in TARGETS {
        assert!(
            fuzz.join("seeds").join(target).is_dir(),
            "no seeds for {target}"
        );
        let entry = std::fs::read_to_string(fuzz.join("fuzz_targets").join(format!("{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        assert!(
            entry.contains(&format!("ferrotrain_tests::fuzz::{target}(")),
            "fuzz_targets/{target}.rs does not run the shared property"
        );
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "tests/fuzz/Cargo.toml has no [[bin]] for {target}"
        );
    }
}
