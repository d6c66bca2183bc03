//! The progress hub: the latest accepted report of every job, coalesced until the leader writes it
//! (at most once per [`WRITE_INTERVAL`] per job), whether this replica leads and where the leader
//! is, and the operator's metrics in Prometheus' text format.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use ferrotrain_crds::{Phase, TrainingJobStatus};
use jiff::Timestamp;

use crate::progress::{ProgressTracker, Rejection};

/// Shortest interval between two status writes of one job's progress.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the reconcile latency histogram.
pub const RECONCILE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Where the endpoint learns a job's token, attempt and batch size.
pub trait JobDirectory: Send + Sync + 'static {
    /// The job's progress token, current attempt and per-worker batch size; `None` if unknown.
    fn lookup(&self, namespace: &str, name: &str) -> impl Future<Output = Option<JobInfo>> + Send;
}

/// What the endpoint needs to know about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    /// The job's UID: progress belongs to this job, not to any job that had its name before.
    pub uid: String,
    /// SHA-256 (hex) of the job's bearer token: the endpoint never needs the token itself.
    pub token_sha256: String,
    /// Current gang attempt.
    pub attempt: u32,
    /// Per-worker batch size.
    pub batch_size: u64,
    /// spec.output.uri: what status.output names.
    pub output_uri: Option<String>,
}

#[derive(Default)]
struct JobProgress {
    /// The UID of the job this progress is of.
    uid: String,
    tracker: ProgressTracker,
    /// When the last report was accepted, and of which attempt.
    received: Option<(u32, Timestamp)>,
    batch_size: u64,
    output_uri: Option<String>,
    dirty: bool,
    last_write: Option<Timestamp>,
}

/// Counters behind `/metrics`.
#[derive(Default)]
struct Counters {
    accepted: u64,
    forwarded: BTreeMap<u16, u64>,
    rejected: BTreeMap<&'static str, u64>,
    reconcile_errors: BTreeMap<&'static str, u64>,
    reconciles: u64,
    sweep_reconciles: u64,
    reconcile_seconds: f64,
    /// Reconciles that took at most each of [`RECONCILE_BUCKETS`] (not cumulative).
    reconcile_buckets: [u64; RECONCILE_BUCKETS.len()],
    phases: BTreeMap<String, Phase>,
    restarts: BTreeMap<String, [i64; 4]>,
    goodput: BTreeMap<String, f64>,
}

/// Shared state of the server, the status writer and the controller.
#[derive(Default)]
pub struct ProgressHub {
    jobs: Mutex<HashMap<(String, String), JobProgress>>,
    counters: Mutex<Counters>,
    /// Whether this replica holds the leader lease (as of its last election round; writers ask
    /// [`ProgressHub::is_leading`], which also checks the renew deadline).
    pub leader: AtomicBool,
    /// Until when this replica's leadership is good without another renewal; `None`: no limit
    /// (a replica that leads from the start, as in tests and `ferrotrain run`).
    leading_until: Mutex<Option<std::time::Instant>>,
    /// When this replica last became leader: it has seen no report from before.
    leading_since: Mutex<Option<Timestamp>>,
    /// Whether the controller has started (readiness).
    pub ready: AtomicBool,
    /// The leader's progress endpoint while another replica leads (from the Lease).
    leader_url: Mutex<Option<String>>,
    /// Client-side API rate limits, by client.
    throttles: Mutex<Vec<(&'static str, Arc<crate::cluster::ratelimit::ThrottleStats>)>>,
}

impl ProgressHub {
    /// A hub of a replica that leads from the start (tests, and the local runner's reports).
    pub fn leading() -> Self {
        let hub = Self::default();
        hub.leader.store(true, Ordering::SeqCst);
        hub
    }

    /// Whether this replica may act as the leader now: it holds the lease and its last renewal
    /// is within the renew deadline. A leader that was paused (SIGSTOP, a frozen node) past the
    /// deadline stops writing the moment it resumes, before its election loop runs again; the
    /// monotonic clock counts the paused time.
    pub fn is_leading(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
            && self
                .leading_until
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|until| std::time::Instant::now() < until)
    }

    /// Records the outcome of an election round: leading until `until`, or not leading.
    pub fn lead_until(&self, until: Option<std::time::Instant>) {
        *self.leading_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
        let was = self.leader.swap(until.is_some(), Ordering::SeqCst);
        if until.is_some() && !was {
            *self.leading_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Timestamp::now());
        }
    }

    /// When this replica last received a report of `attempt` of the job with `uid`; never
    /// earlier than when it became leader, which has seen no report from before.
    pub fn last_report(
        &self,
        key: &(String, String),
        uid: &str,
        attempt: u32,
    ) -> Option<Timestamp> {
        let received = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|job| job.uid == uid)
            .and_then(|job| job.received)
            .filter(|(of, _)| *of == attempt)
            .map(|(_, at)| at);
        let since = *self.leading_since.lock().unwrap_or_else(|e| e.into_inner());
        match (received, since) {
            (Some(r), Some(s)) => Some(r.max(s)),
            (r, s) => r.or(s),
        }
    }

    /// The median step time of `attempt` of the job with `uid`, as measured from the reports
    /// this replica received; `None` until measured.
    pub fn step_seconds(&self, key: &(String, String), uid: &str, attempt: u32) -> Option<f64> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|job| job.uid == uid)
            .filter(|job| job.tracker.latest().is_some_and(|r| r.attempt == attempt))
            .and_then(|job| job.tracker.median_step_seconds())
    }

    /// Reports a rate-limited API client's throttling in `/metrics` under `client`.
    pub fn register_throttle(
        &self,
        client: &'static str,
        stats: Arc<crate::cluster::ratelimit::ThrottleStats>,
    ) {
        self.throttles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((client, stats));
    }

    /// Records where the current leader takes progress reports (`None`: unknown or this replica).
    pub fn set_leader_url(&self, url: Option<String>) {
        *self.leader_url.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// Where to forward progress reports, while another replica leads.
    pub fn leader_url(&self) -> Option<String> {
        if self.is_leading() {
            return None;
        }
        self.leader_url
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records one POST; returns the HTTP status to answer with.
    pub fn accept(
        &self,
        key: (String, String),
        info: Option<&JobInfo>,
        token: Option<&str>,
        body: &[u8],
        now: Timestamp,
    ) -> StatusCode {
        let result = match info {
            // An unknown job has no token to match: the same answer as a wrong token.
            None => Err(if token.is_some() {
                Rejection::BadToken
            } else {
                Rejection::MissingToken
            }),
            Some(info) => {
                // Hashing, parsing and bounds checks happen before the lock that every job's
                // reports share: a large or slow body holds up no other job.
                let presented = token.map(crate::progress::token_sha256);
                ProgressTracker::authenticate_and_parse(
                    presented.as_deref(),
                    &info.token_sha256,
                    body,
                )
                .and_then(|report| {
                    let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = jobs.entry(key).or_default();
                    if entry.uid != info.uid {
                        // A job recreated under the name starts from nothing.
                        *entry = JobProgress {
                            uid: info.uid.clone(),
                            ..JobProgress::default()
                        };
                    }
                    entry.batch_size = info.batch_size;
                    entry.output_uri = info.output_uri.clone();
                    let attempt = report.attempt;
                    let result = entry.tracker.admit(report, info.attempt, now);
                    if result.is_ok() {
                        entry.received = Some((attempt, now));
                    }
                    entry.dirty |= result.is_ok();
                    result
                })
            }
        };
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                counters.accepted += 1;
                StatusCode::NO_CONTENT
            }
            Err(rejection) => {
                *counters.rejected.entry(rejection.label()).or_default() += 1;
                StatusCode::from_u16(rejection.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Counts a report this follower forwarded (or refused for want of a leader), by answer.
    pub fn count_forward(&self, status: StatusCode) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        *counters.forwarded.entry(status.as_u16()).or_default() += 1;
    }

    /// Jobs whose progress should be written now, each (namespace, name, UID) with the status
    /// fields to apply; marks them written. Nothing while this replica does not lead.
    pub fn due_writes(&self, now: Timestamp) -> Vec<((String, String, String), TrainingJobStatus)> {
        if !self.is_leading() {
            return Vec::new();
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        for (key, job) in jobs.iter_mut() {
            let waited = job.last_write.is_none_or(|t| {
                now.duration_since(t).as_secs_f64() >= WRITE_INTERVAL.as_secs_f64()
            });
            if job.dirty && waited {
                let mut status = TrainingJobStatus::default();
                job.tracker
                    .apply(&mut status, job.batch_size, job.output_uri.as_deref(), now);
                job.dirty = false;
                job.last_write = Some(now);
                due.push(((key.0.clone(), key.1.clone(), job.uid.clone()), status));
            }
        }
        due
    }

    /// Keeps the per-job metric series and progress of the jobs for which `live` holds.
    pub fn retain_jobs(&self, live: impl Fn(&str) -> bool) {
        {
            let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
            c.phases.retain(|job, _| live(job));
            c.restarts.retain(|job, _| live(job));
            c.goodput.retain(|job, _| live(job));
        }
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(namespace, name), _| live(&format!("{namespace}/{name}")));
    }

    /// Counts a sweep reconcile that decides (one the pacer let through).
    pub fn observe_sweep_reconcile(&self) {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep_reconciles += 1;
    }

    /// Records a reconcile for `/metrics`.
    pub fn observe_reconcile(
        &self,
        job: &str,
        seconds: f64,
        status: Option<&TrainingJobStatus>,
        error: Option<&'static str>,
    ) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        c.reconciles += 1;
        c.reconcile_seconds += seconds;
        if let Some(bucket) = RECONCILE_BUCKETS.iter().position(|le| seconds <= *le) {
            c.reconcile_buckets[bucket] += 1;
        }
        if let Some(label) = error {
            *c.reconcile_errors.entry(label).or_default() += 1;
        }
        if let Some(status) = status {
            if let Some(phase) = status.phase {
                c.phases.insert(job.to_string(), phase);
            }
            let r = status.restarts.clone().unwrap_or_default();
            c.restarts.insert(
                job.to_string(),
                [
                    i64::from(r.infra),
                    i64::from(r.app),
                    i64::from(r.preemption),
                    i64::from(r.stall),
                ],
            );
            if let Some(g) = &status.goodput {
                c.goodput.insert(job.to_string(), g.ratio);
            }
        }
    }

    /// Prometheus text exposition.
    pub fn metrics(&self) -> String {
        let c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str(
            "# HELP ferrotrain_jobs Training jobs by phase.\n# TYPE ferrotrain_jobs gauge\n",
        );
        for phase in [
            "Pending",
            "Scheduling",
            "Running",
            "Restarting",
            "Suspended",
            "Succeeded",
            "Failed",
        ] {
            let n = c
                .phases
                .values()
                .filter(|p| format!("{p:?}") == phase)
                .count();
            out.push_str(&format!("ferrotrain_jobs{{phase=\"{phase}\"}} {n}\n"));
        }
        out.push_str("# HELP ferrotrain_reconciles_total Reconciles run.\n# TYPE ferrotrain_reconciles_total counter\n");
        out.push_str(&format!("ferrotrain_reconciles_total {}\n", c.reconciles));
        out.push_str("# HELP ferrotrain_sweep_reconciles_total Sweep reconciles run (past the pacer).\n# TYPE ferrotrain_sweep_reconciles_total counter\n");
        out.push_str(&format!(
            "ferrotrain_sweep_reconciles_total {}\n",
            c.sweep_reconciles
        ));
        out.push_str("# HELP ferrotrain_reconcile_seconds_total Time spent reconciling.\n# TYPE ferrotrain_reconcile_seconds_total counter\n");
        out.push_str(&format!(
            "ferrotrain_reconcile_seconds_total {}\n",
            c.reconcile_seconds
        ));
        out.push_str("# HELP ferrotrain_reconcile_duration_seconds Reconcile latency.\n# TYPE ferrotrain_reconcile_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (le, n) in RECONCILE_BUCKETS.iter().zip(c.reconcile_buckets) {
            cumulative += n;
            out.push_str(&format!(
                "ferrotrain_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "ferrotrain_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {}\nferrotrain_reconcile_duration_seconds_sum {}\nferrotrain_reconcile_duration_seconds_count {}\n",
            c.reconciles, c.reconcile_seconds, c.reconciles
        ));
        out.push_str("# HELP ferrotrain_api_throttled_requests_total API requests held back by the client-side rate limit.\n# TYPE ferrotrain_api_throttled_requests_total counter\n");
        let throttles = self.throttles.lock().unwrap_or_else(|e| e.into_inner());
        for (client, stats) in throttles.iter() {
            out.push_str(&format!(
                "ferrotrain_api_throttled_requests_total{{client=\"{client}\"}} {}\n",
                stats.held()
            ));
        }
        out.push_str("# HELP ferrotrain_api_throttled_seconds_total Time API clients waited for their rate limit.\n# TYPE ferrotrain_api_throttled_seconds_total counter\n");
        for (client, stats) in throttles.iter() {
            out.push_str(&format!(
                "ferrotrain_api_throttled_seconds_total{{client=\"{client}\"}} {}\n",
                stats.held_seconds()
            ));
        }
        out.push_str("# HELP ferrotrain_api_requests_total API requests sent, reads (GET, lists, watches) and writes.\n# TYPE ferrotrain_api_requests_total counter\n");
        for (client, stats) in throttles.iter() {
            out.push_str(&format!(
                "ferrotrain_api_requests_total{{client=\"{client}\",kind=\"read\"}} {}\nferrotrain_api_requests_total{{client=\"{client}\",kind=\"write\"}} {}\n",
                stats.reads(),
                stats.writes()
            ));
        }
        drop(throttles);
        out.push_str("# HELP ferrotrain_reconcile_errors_total Reconcile errors by category.\n# TYPE ferrotrain_reconcile_errors_total counter\n");
        for (label, n) in &c.reconcile_errors {
            out.push_str(&format!(
                "ferrotrain_reconcile_errors_total{{category=\"{label}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP ferrotrain_restarts Gang restarts by cause, summed over jobs.\n# TYPE ferrotrain_restarts gauge\n");
        for (i, cause) in ["infra", "app", "preemption", "stall"].iter().enumerate() {
            let n: i64 = c.restarts.values().map(|r| r[i]).sum();
            out.push_str(&format!("ferrotrain_restarts{{cause=\"{cause}\"}} {n}\n"));
        }
        out.push_str("# HELP ferrotrain_progress_forwarded_total Reports a follower passed to the leader, by the answer.\n# TYPE ferrotrain_progress_forwarded_total counter\n");
        for (code, n) in &c.forwarded {
            out.push_str(&format!(
                "ferrotrain_progress_forwarded_total{{code=\"{code}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP ferrotrain_progress_reports_total Progress reports by outcome.\n# TYPE ferrotrain_progress_reports_total counter\n");
        out.push_str(&format!(
            "ferrotrain_progress_reports_total{{result=\"accepted\"}} {}\n",
            c.accepted
        ));
        for (reason, n) in &c.rejected {
            out.push_str(&format!(
                "ferrotrain_progress_reports_total{{result=\"rejected\",reason=\"{reason}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP ferrotrain_goodput_ratio Productive share of each job's time.\n# TYPE ferrotrain_goodput_ratio gauge\n");
        for (job, ratio) in &c.goodput {
            out.push_str(&format!(
                "ferrotrain_goodput_ratio{{job=\"{job}\"}} {ratio}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_latency_is_a_cumulative_histogram() {
        let hub = ProgressHub::leading();
        for seconds in [0.0002, 0.003, 0.003, 0.2, 30.0] {
            hub.observe_reconcile("ml/mnist", seconds, None, None);
        }
        let metrics = hub.metrics();
        for line in [
            "ferrotrain_reconcile_duration_seconds_bucket{le=\"0.0005\"} 1",
            "ferrotrain_reconcile_duration_seconds_bucket{le=\"0.005\"} 3",
            "ferrotrain_reconcile_duration_seconds_bucket{le=\"0.25\"} 4",
            "ferrotrain_reconcile_duration_seconds_bucket{le=\"5\"} 4",
            "ferrotrain_reconcile_duration_seconds_bucket{le=\"+Inf\"} 5",
            "ferrotrain_reconcile_duration_seconds_count 5",
        ] {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
    }
}
