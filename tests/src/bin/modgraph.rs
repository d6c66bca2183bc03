//! Prints the file-level import graph of crates' source folders: every file with its line count
//! and the files it imports, then the circles (files that import each other, directly or through
//! others) and the largest files. `tests/tests/architecture.rs` enforces the rules on the same
//! graph; this shows it.
//!
//! Usage: `cargo run -p ferrotrain-tests --bin modgraph -- [SRC_DIR...]` (default: the `src`
//! folders of crds, operator and trainer).

use std::path::PathBuf;

use ferrotrain_tests::modgraph::ModuleGraph;
use ferrotrain_tests::workspace_root;

fn main() -> std::process::ExitCode {
    let mut dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        let root = workspace_root();
        dirs = ["crds", "operator", "trainer"]
            .iter()
            .map(|c| root.join(c).join("src"))
            .collect();
    }
    let mut circles_found = false;
    for dir in dirs {
        let graph = match ModuleGraph::read(&dir) {
            Ok(graph) => graph,
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        println!("# {}", dir.display());
        let mut sizes = Vec::new();
        for (file, targets) in &graph.imports {
            let lines = std::fs::read_to_string(dir.join(file))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            sizes.push((lines, file.clone()));
            let targets: Vec<String> = targets.iter().map(|t| t.display().to_string()).collect();
            println!("{:>5}  {} -> {}", lines, file.display(), targets.join(", "));
        }
        let circles = graph.circles();
        circles_found |= !circles.is_empty();
        println!("circles: {}", circles.len());
        for circle in circles {
            let files: Vec<String> = circle.iter().map(|f| f.display().to_string()).collect();
            println!("  {}", files.join(" <-> "));
        }
        sizes.sort_by(|a, b| b.cmp(a));
        let largest: Vec<String> = sizes
            .iter()
            .take(5)
            .map(|(lines, file)| format!("{} ({lines})", file.display()))
            .collect();
        println!("largest: {}\n", largest.join(", "));
    }
    if circles_found {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
