//! Prints a dhat heap profile of the operator by owner (caches, event recorder, progress hub,
//! HTTP, …) at its peak and at its end, then the largest allocation sites still held at the end.
//!
//! Usage: `heap-owners PROFILE.json [SITES]` (`scripts/bench-scale.sh` with
//! `FERROTRAIN_SCALE_HEAP_PROFILE=1` runs it).

use ferrotrain_tests::heap_profile::summarize;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: heap-owners PROFILE.json [SITES]");
        return std::process::ExitCode::from(2);
    };
    let sites: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let summary = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .and_then(|profile| summarize(&profile));
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("{path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut owners: Vec<_> = summary.owners.iter().collect();
    owners.sort_by_key(|(_, held)| std::cmp::Reverse(held.end_bytes));
    let (peak, end) = owners
        .iter()
        .fold((0, 0), |(p, e), (_, h)| (p + h.peak_bytes, e + h.end_bytes));
    println!("| owner | at the peak | blocks | at the end (SIGTERM) | blocks |");
    println!("|---|---:|---:|---:|---:|");
    for (owner, held) in owners
        .iter()
        .filter(|(_, h)| h.peak_bytes + h.end_bytes > 64 * 1024)
    {
        println!(
            "| {owner} | {:.2} MiB | {} | {:.2} MiB | {} |",
            mib(held.peak_bytes),
            held.peak_blocks,
            mib(held.end_bytes),
            held.end_blocks
        );
    }
    println!(
        "| **live heap** | **{:.2} MiB** | | **{:.2} MiB** | |",
        mib(peak),
        mib(end)
    );
    println!("\nLargest allocation sites at the end:");
    for (bytes, blocks, frames) in summary.sites.iter().take(sites) {
        println!("- {:.2} MiB in {blocks} blocks: {frames}", mib(*bytes));
    }
    std::process::ExitCode::SUCCESS
}
