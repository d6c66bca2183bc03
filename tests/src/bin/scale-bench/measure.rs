//! What the scale benchmark reads and prints: the API server's request counts, the operator's
//! metrics, a process's memory and CPU from /proc, and request rates.

use std::collections::BTreeMap;

use kube::Client;

/// `apiserver_request_total` and the 429s, by (verb, resource[/subresource], code).
pub(crate) type RequestCounts = BTreeMap<(String, String, String), f64>;

async fn get_text(client: &Client, path: &str) -> String {
    let request = http::Request::get(path)
        .body(Vec::new())
        .unwrap_or_else(|e| panic!("request {path}: {e}"));
    client
        .request_text(request)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The value of `label` in a Prometheus series' label set.
fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

fn series<'a>(text: &'a str, metric: &str) -> impl Iterator<Item = (&'a str, f64)> {
    let prefix = format!("{metric}{{");
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(&prefix)?;
        let (labels, value) = rest.rsplit_once("} ")?;
        Some((labels, value.trim().parse().ok()?))
    })
}

pub(crate) async fn api_requests(client: &Client) -> RequestCounts {
    let text = get_text(client, "/metrics").await;
    let mut counts = RequestCounts::new();
    for (labels, value) in series(&text, "apiserver_request_total") {
        let resource = match label(labels, "subresource") {
            "" => label(labels, "resource").to_string(),
            sub => format!("{}/{sub}", label(labels, "resource")),
        };
        *counts
            .entry((
                label(labels, "verb").to_string(),
                resource,
                label(labels, "code").to_string(),
            ))
            .or_default() += value;
    }
    counts
}

async fn operator_metrics(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("operator metrics: {e}"))
        .text()
        .await
        .unwrap_or_default()
}

/// Seconds the reconciler's API client has waited for its rate limit.
pub(crate) async fn reconciler_throttled(address: &str) -> f64 {
    let text = operator_metrics(address).await;
    series(&text, "ferrotrain_api_throttled_seconds_total")
        .find(|(labels, _)| label(labels, "client") == "reconciler")
        .map_or(0.0, |(_, seconds)| seconds)
}

/// The operator's reconcile histogram: (upper bound, cumulative count).
pub(crate) async fn reconcile_histogram(address: &str) -> Vec<(f64, f64)> {
    let text = operator_metrics(address).await;
    series(&text, "ferrotrain_reconcile_duration_seconds_bucket")
        .map(|(labels, n)| {
            let le = label(labels, "le");
            (le.parse().unwrap_or(f64::INFINITY), n)
        })
        .collect()
}

/// The `q` quantile from the difference of two cumulative histograms, as the bucket bound
/// (Prometheus' `histogram_quantile` without interpolation: an upper bound).
pub(crate) fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> (f64, f64) {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, m)| *m);
            (*le, n - earlier)
        })
        .collect();
    let total = diff.last().map_or(0.0, |(_, n)| *n);
    let bound = diff
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::INFINITY, |(le, _)| *le);
    (bound, total)
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `RssAnon:`, …); 0 when not there.
fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The anonymous part of a process's resident set in MiB: its heap and stacks, without the
/// pages of its binary (file-backed, shared and reclaimable: most of an idle operator's RSS).
pub(crate) fn anonymous_rss(pid: u32) -> f64 {
    status_kib(pid, "RssAnon:") / 1024.0
}

/// Resident set (current, peak) in MiB and CPU seconds (user + system) of a process.
pub(crate) fn process_usage(pid: u32) -> (f64, f64, f64) {
    let kib = |key: &str| status_kib(pid, key);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Clock ticks are USER_HZ, 100 a second on Linux.
    let hz = 100.0;
    (
        kib("VmRSS:") / 1024.0,
        kib("VmHWM:") / 1024.0,
        (ticks(11) + ticks(12)) / hz,
    )
}

pub(crate) fn print_rates(
    title: &str,
    before: &RequestCounts,
    after: &RequestCounts,
    seconds: f64,
    jobs: usize,
) {
    let mut rates: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (key, value) in after {
        let delta = value - before.get(key).copied().unwrap_or(0.0);
        if delta > 0.0 {
            *rates.entry((key.0.clone(), key.1.clone())).or_default() += delta / seconds;
        }
    }
    let mut sorted: Vec<_> = rates.into_iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("\n{title} ({seconds:.0} s window), API server requests/s by verb and resource:");
    println!("| verb | resource | req/s | per job per minute |");
    println!("|---|---|---:|---:|");
    for ((verb, resource), rate) in sorted.iter().take(16) {
        println!(
            "| {verb} | {resource} | {rate:.2} | {:.3} |",
            rate * 60.0 / jobs as f64
        );
    }
}

pub(crate) fn code_total(counts: &RequestCounts, code: &str) -> f64 {
    counts
        .iter()
        .filter(|((_, _, c), _)| c == code)
        .map(|(_, v)| v)
        .sum()
}

pub(crate) fn rate_of(
    before: &RequestCounts,
    after: &RequestCounts,
    matches: impl Fn(&str, &str) -> bool,
    seconds: f64,
) -> f64 {
    after
        .iter()
        .filter(|((verb, resource, _), _)| matches(verb, resource))
        .map(|(key, value)| value - before.get(key).copied().unwrap_or(0.0))
        .sum::<f64>()
        / seconds
}
