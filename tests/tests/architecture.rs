//! The layout rules of docs/architecture.md, checked on the source tree: no two files import each
//! other (directly or through others), each folder imports only the folders its row allows, the
//! pure decisions do no I/O and read no clock, and no source file outgrows one reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferrotrain_tests::modgraph::{ModuleGraph, rust_files};
use ferrotrain_tests::workspace_root;

/// The longest source file one person is expected to hold in mind.
const MAX_LINES: usize = 700;

/// The crates whose files are checked for circles.
const CRATES: [&str; 4] = ["crds", "operator", "trainer", "tests"];

/// Which top-level room (folder, or file at the top of `src`) of the operator may import which.
/// A room may always import itself; `cli`, `lib` and `main` may import everything.
const OPERATOR_ROOMS: &[(&str, &[&str])] = &[
    ("decide", &[]),
    ("progress", &[]),
    ("vocabulary", &[]),
    ("tls", &[]),
    ("manifest", &["decide"]),
    (
        "cluster",
        &["decide", "manifest", "progress", "tls", "vocabulary"],
    ),
    ("local", &["decide", "manifest", "progress", "vocabulary"]),
];

/// The same for the trainer. `cli`, `run`, `lib` and `main` may import everything.
const TRAINER_ROOMS: &[(&str, &[&str])] = &[
    ("rng", &[]),
    ("exit", &[]),
    ("config", &[]),
    ("tls", &[]),
    ("storage", &["tls"]),
    ("progress", &["tls"]),
    ("nn", &["rng"]),
    ("optim", &["nn"]),
    ("engine", &["nn", "rng"]),
    ("dist", &[]),
    ("data", &["rng", "storage"]),
    ("checkpoint", &["storage"]),
    ("export", &["checkpoint", "nn", "storage"]),
    (
        "train",
        &[
            "checkpoint",
            "data",
            "dist",
            "engine",
            "export",
            "nn",
            "optim",
            "progress",
            "rng",
            "storage",
        ],
    ),
];

/// What code in `operator/src/decide` must not mention: clients, runtimes, files, sockets,
/// processes and the clock belong to the runners.
const IMPURE: [&str; 9] = [
    "kube::Api",
    "kube::Client",
    "tokio::",
    "reqwest",
    "std::fs",
    "std::net",
    "std::process",
    "Timestamp::now",
    "SystemTime::now",
];

fn graph_of(krate: &str) -> ModuleGraph {
    let src = workspace_root().join(krate).join("src");
    ModuleGraph::read(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()))
}

fn room(file: &Path) -> String {
    let first = file.iter().next().map(|p| p.to_string_lossy().into_owned());
    first
        .unwrap_or_default()
        .trim_end_matches(".rs")
        .to_string()
}

#[test]
fn no_two_files_import_each_other() {
    let mut circles = Vec::new();
    for krate in CRATES {
        for circle in graph_of(krate).circles() {
            circles.push(format!("{krate}/src: {circle:?}"));
        }
    }
    assert!(
        circles.is_empty(),
        "files that import each other: {circles:#?}"
    );
}

fn check_rooms(krate: &str, rules: &[(&str, &[&str])], open: &[&str]) -> Vec<String> {
    let rules: BTreeMap<&str, &[&str]> = rules.iter().copied().collect();
    let graph = graph_of(krate);
    let mut broken = Vec::new();
    for (file, targets) in &graph.imports {
        let from = room(file);
        if open.contains(&from.as_str()) {
            continue;
        }
        let Some(allowed) = rules.get(from.as_str()) else {
            broken.push(format!(
                "{krate}/src/{}: room {from:?} has no row in the table",
                file.display()
            ));
            continue;
        };
        for target in targets {
            let to = room(target);
            if to != from && !allowed.contains(&to.as_str()) {
                broken.push(format!(
                    "{krate}/src/{} ({from}) imports {} ({to})",
                    file.display(),
                    target.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn each_folder_imports_only_what_its_row_allows() {
    let mut broken = check_rooms("operator", OPERATOR_ROOMS, &["cli", "lib", "main"]);
    broken.extend(check_rooms(
        "trainer",
        TRAINER_ROOMS,
        &["cli", "run", "lib", "main"],
    ));
    assert!(broken.is_empty(), "imports across the walls: {broken:#?}");
}

#[test]
fn the_decisions_do_no_io_and_read_no_clock() {
    let decide = workspace_root().join("operator/src/decide");
    let mut found = Vec::new();
    for file in rust_files(&decide).expect("operator/src/decide") {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for word in IMPURE {
                if line.contains(word) {
                    found.push(format!("{}:{}: {word}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(found.is_empty(), "I/O or a clock in decide/: {found:#?}");
}

#[test]
fn no_source_file_is_longer_than_one_reader_holds() {
    let root = workspace_root();
    let mut long: Vec<(PathBuf, usize)> = Vec::new();
    for dir in [
        "crds",
        "operator",
        "trainer",
        "tests/src",
        "tests/tests",
        "tests/fuzz/fuzz_targets",
    ] {
        for file in rust_files(&root.join(dir)).expect("source folder") {
            let lines = std::fs::read_to_string(&file)
                .expect("readable")
                .lines()
                .count();
            if lines > MAX_LINES {
                long.push((
                    file.strip_prefix(&root).unwrap_or(&file).to_path_buf(),
                    lines,
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by concern): {long:#?}"
    );
}

#[test]
fn modules_live_where_their_names_say() {
    // `#[path]` would let a file's place in the tree and its module path differ, which the
    // module graph above (and a reader) relies on.
    let root = workspace_root();
    let mut found = Vec::new();
    for dir in ["crds/src", "operator/src", "trainer/src", "tests/src"] {
        for file in rust_files(&root.join(dir)).expect("source folder") {
            let text = std::fs::read_to_string(&file).expect("readable");
            if text.contains("#[path") {
                found.push(file);
            }
        }
    }
    assert!(found.is_empty(), "#[path] attributes: {found:#?}");
}
