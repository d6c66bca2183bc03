//! Progress reports from rank 0 into `status.progress`, `status.checkpoint` and `status.output`:
//! authentication, validation, and the operator's own throughput and ETA estimate (an exponentially
//! weighted moving average over the report history, not the trainer's claim). The HTTP servers of
//! the operator and of `ferrotrain run` both call [`ProgressTracker::accept`].

use ferrotrain_crds::progress::{
    MAX_BODY_BYTES, MAX_REPORTED_EVALUATIONS, ProgressReport, metrics_within_bounds,
    output_within_bounds,
};
use ferrotrain_crds::{
    CheckpointStatus, OutputFile, OutputStatus, ProgressStatus, TrainingJobStatus,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Weight of the newest rate sample.
const EWMA_ALPHA: f64 = 0.3;

/// Step-time samples kept for the median (one per pair of reports with advancing steps).
const STEP_TIME_SAMPLES: usize = 16;

/// Why a report was refused; also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No bearer token.
    MissingToken,
    /// Wrong token (for example another job's).
    BadToken,
    /// Body over 64 KiB.
    TooLarge,
    /// Not a progress report.
    Malformed,
    /// From an attempt older than the current one.
    StaleAttempt,
    /// More metric names than allowed, a name too long or with other characters, or a value
    /// that is not finite.
    TooManyMetrics,
    /// A step lower than one already reported by the same attempt (a replayed or delayed report).
    StepBackwards,
}

impl Rejection {
    /// HTTP status to answer with.
    pub fn http_status(self) -> u16 {
        match self {
            Rejection::MissingToken | Rejection::BadToken => 401,
            Rejection::TooLarge => 413,
            Rejection::Malformed => 400,
            Rejection::StaleAttempt | Rejection::StepBackwards => 409,
            Rejection::TooManyMetrics => 422,
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::BadToken => "bad_token",
            Rejection::TooLarge => "too_large",
            Rejection::Malformed => "malformed",
            Rejection::StaleAttempt => "stale_attempt",
            Rejection::TooManyMetrics => "too_many_metrics",
            Rejection::StepBackwards => "step_backwards",
        }
    }
}

/// Compares two tokens in time independent of where they differ.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Extracts the token of an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Per-job report history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressTracker {
    last: Option<(u64, Timestamp)>,
    rate: Option<f64>,
    latest: Option<ProgressReport>,
    checkpoints: i64,
    last_checkpoint_step: Option<u64>,
    /// Seconds per step between recent reports of the current attempt, a ring of
    /// [`STEP_TIME_SAMPLES`]; fixed-size so a job's history costs the same at any age.
    step_times: [f32; STEP_TIME_SAMPLES],
    step_time_count: usize,
    /// The step and files of spec.output, once a report named them: kept across attempts.
    output: Option<(u64, Vec<OutputFile>)>,
}

impl ProgressTracker {
    /// Authenticates, validates and records one report.
    pub fn accept(
        &mut self,
        token: Option<&str>,
        expected_token: &str,
        body: &[u8],
        current_attempt: u32,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let report = Self::authenticate_and_parse(token, expected_token, body)?;
        self.admit(report, current_attempt, now)
    }

    /// The part of [`accept`](Self::accept) that needs no history: the token, the body's size,
    /// shape and bounds. Servers call it before taking any lock shared by all jobs.
    pub fn authenticate_and_parse(
        token: Option<&str>,
        expected_token: &str,
        body: &[u8],
    ) -> Result<ProgressReport, Rejection> {
        let token = token.ok_or(Rejection::MissingToken)?;
        if !tokens_match(token, expected_token) {
            return Err(Rejection::BadToken);
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(Rejection::TooLarge);
        }
        let report: ProgressReport =
            serde_json::from_slice(body).map_err(|_| Rejection::Malformed)?;
        if report.world_size == 0
            || (report.total_steps > 0 && report.step > report.total_steps)
            || report.loss.is_some_and(|l| !l.is_finite())
            || report.evaluations.len() > MAX_REPORTED_EVALUATIONS
            || !output_within_bounds(&report.output)
        {
            return Err(Rejection::Malformed);
        }
        if !metrics_within_bounds(report.metrics.iter())
            || !report
                .evaluations
                .iter()
                .all(|e| metrics_within_bounds(e.metrics.iter()))
        {
            return Err(Rejection::TooManyMetrics);
        }
        Ok(report)
    }

    /// Records a report that [`authenticate_and_parse`](Self::authenticate_and_parse) accepted,
    /// unless an older attempt sent it or it would move the step back.
    pub fn admit(
        &mut self,
        report: ProgressReport,
        current_attempt: u32,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        if report.attempt < current_attempt {
            return Err(Rejection::StaleAttempt);
        }
        if let Some(latest) = &self.latest
            && latest.attempt == report.attempt
            && report.step < latest.step
        {
            return Err(Rejection::StepBackwards);
        }
        self.record(report, now);
        Ok(())
    }

    fn record(&mut self, report: ProgressReport, now: Timestamp) {
        if self
            .latest
            .as_ref()
            .is_some_and(|l| l.attempt != report.attempt)
        {
            self.new_attempt();
        }
        if let Some((step, at)) = self.last {
            let seconds = now.duration_since(at).as_secs_f64();
            if report.step > step && seconds > 0.0 {
                // Samples per step are not known here; report steps/s and scale by the batch later.
                let steps_per_second = (report.step - step) as f64 / seconds;
                self.rate = Some(self.rate.map_or(steps_per_second, |r| {
                    EWMA_ALPHA * steps_per_second + (1.0 - EWMA_ALPHA) * r
                }));
                self.step_times[self.step_time_count % STEP_TIME_SAMPLES] =
                    (seconds / (report.step - step) as f64) as f32;
                self.step_time_count += 1;
            }
        }
        if report.step != self.last.map_or(u64::MAX, |l| l.0) {
            self.last = Some((report.step, now));
        }
        if let Some(c) = &report.checkpoint
            && self.last_checkpoint_step != Some(c.step)
        {
            self.checkpoints += 1;
            self.last_checkpoint_step = Some(c.step);
        }
        if !report.output.is_empty() {
            self.output = Some((report.step, report.output.clone()));
        }
        self.latest = Some(report);
    }

    /// Writes the latest report into a status; `batch_size` is the per-worker batch and
    /// `output_uri` the job's spec.output.uri (a report's files are recorded under it only).
    pub fn apply(
        &self,
        status: &mut TrainingJobStatus,
        batch_size: u64,
        output_uri: Option<&str>,
        now: Timestamp,
    ) {
        if let (Some(uri), Some((step, files))) = (output_uri, &self.output) {
            status.output = Some(OutputStatus {
                uri: uri.to_string(),
                files: files.clone(),
                step: *step as i64,
            });
        }
        let Some(report) = &self.latest else { return };
        let samples_per_step = (batch_size * u64::from(report.world_size)) as f64;
        let remaining = report.total_steps.saturating_sub(report.step);
        let eta = self
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| (remaining as f64 / r).round() as i64);
        status.progress = Some(ProgressStatus {
            step: report.step as i64,
            total_steps: Some(report.total_steps as i64),
            epoch: Some(report.epoch as i64),
            percent: (report.total_steps > 0)
                .then(|| (report.step as f64 / report.total_steps as f64 * 1000.0).round() / 10.0),
            loss: report.loss,
            metrics: report.metrics.clone(),
            evaluations: report.evaluations.clone(),
            samples_per_second: self.rate.map(|r| (r * samples_per_step).round()),
            eta_seconds: eta,
            eta: eta.map(human_duration),
            last_update_time: self.last.map(|(_, at)| Time(at)).or(Some(Time(now))),
        });
        if let Some(c) = &report.checkpoint {
            status.checkpoint = Some(CheckpointStatus {
                uri: Some(c.uri.clone()),
                step: Some(c.step as i64),
                time: Timestamp::from_millisecond(c.unix_ms as i64).ok().map(Time),
                count: Some(self.checkpoints),
                ..CheckpointStatus::default()
            });
        }
        // Every report of an attempt carries what its resume passed over; a later attempt that
        // found nothing wrong clears it.
        match &report.rejected_checkpoints {
            Some(rejected) => {
                let checkpoint = status
                    .checkpoint
                    .get_or_insert_with(CheckpointStatus::default);
                checkpoint.rejected = Some(i64::from(rejected.count));
                checkpoint.message = Some(rejected.describe());
            }
            None => {
                if let Some(checkpoint) = status.checkpoint.as_mut() {
                    checkpoint.rejected = None;
                    checkpoint.message = None;
                }
            }
        }
    }

    /// The latest accepted report.
    pub fn latest(&self) -> Option<&ProgressReport> {
        self.latest.as_ref()
    }

    /// The median seconds per step of the current attempt as the operator measured it between
    /// reports; until two reports with advancing steps arrived, the step time the latest report
    /// claims. `None`: neither.
    pub fn median_step_seconds(&self) -> Option<f64> {
        let n = self.step_time_count.min(STEP_TIME_SAMPLES);
        if n == 0 {
            return self
                .latest
                .as_ref()?
                .step_seconds
                .filter(|s| s.is_finite() && *s >= 0.0);
        }
        let mut samples = self.step_times;
        let samples = &mut samples[..n];
        samples.sort_unstable_by(f32::total_cmp);
        let median = if n % 2 == 1 {
            f64::from(samples[n / 2])
        } else {
            (f64::from(samples[n / 2 - 1]) + f64::from(samples[n / 2])) / 2.0
        };
        Some(median)
    }

    /// Forgets the rate history (a new attempt starts from a checkpoint, often at another step).
    pub fn new_attempt(&mut self) {
        self.last = None;
        self.rate = None;
        self.step_time_count = 0;
    }
}

/// A fresh bearer token: 256 random bits, hex. `None` when the system has no randomness.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 of a token, in lowercase hex: what the job records instead of the token.
pub fn token_sha256(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `4m12s`, `1h03m`, `12s`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_digest_is_sha256_hex() {
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    use ferrotrain_crds::progress::{CheckpointReport, MAX_METRIC_NAME_BYTES, MAX_METRICS};

    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn body(attempt: u32, step: u64) -> Vec<u8> {
        serde_json::to_vec(&ProgressReport {
            attempt,
            world_size: 2,
            step,
            total_steps: 1000,
            epoch: 0,
            loss: Some(0.5),
            ..ProgressReport::default()
        })
        .expect("json")
    }

    #[test]
    fn tokens_are_required_and_compared_exactly() {
        let mut t = ProgressTracker::default();
        assert_eq!(
            t.accept(None, "secret", &body(1, 1), 1, at(0)),
            Err(Rejection::MissingToken)
        );
        assert_eq!(
            t.accept(Some("secreT"), "secret", &body(1, 1), 1, at(0)),
            Err(Rejection::BadToken)
        );
        assert_eq!(
            t.accept(Some("other-job-token"), "secret", &body(1, 1), 1, at(0)),
            Err(Rejection::BadToken)
        );
        assert_eq!(
            t.accept(Some("secret"), "secret", &body(1, 1), 1, at(0)),
            Ok(())
        );
        assert!(tokens_match("", ""));
        assert!(!tokens_match("a", ""));
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
    }

    #[test]
    fn rejected_checkpoints_reach_the_status_until_an_attempt_without_them() {
        let mut t = ProgressTracker::default();
        let rejected = ProgressReport {
            attempt: 1,
            world_size: 2,
            step: 3,
            total_steps: 1000,
            rejected_checkpoints: Some(ferrotrain_crds::progress::RejectedCheckpoints {
                count: 3,
                newest_step: 300,
                problem: "data/300/params.bin: SHA-256 does not match the manifest".into(),
                resumed_from: None,
            }),
            ..ProgressReport::default()
        };
        let body_of = |r: &ProgressReport| serde_json::to_vec(r).expect("json");
        assert_eq!(
            t.accept(Some("k"), "k", &body_of(&rejected), 1, at(0)),
            Ok(())
        );
        let mut status = TrainingJobStatus::default();
        t.apply(&mut status, 64, None, at(0));
        let checkpoint = status.checkpoint.clone().expect("checkpoint status");
        assert_eq!(checkpoint.rejected, Some(3));
        assert_eq!(
            checkpoint.message.as_deref(),
            Some(
                "3 checkpoints failed verification (newest, step 300: data/300/params.bin: SHA-256 does not match the manifest); training restarted from step 0"
            )
        );
        assert_eq!(t.accept(Some("k"), "k", &body(2, 10), 2, at(5)), Ok(()));
        t.apply(&mut status, 64, None, at(5));
        let checkpoint = status.checkpoint.expect("checkpoint status");
        assert_eq!((checkpoint.rejected, checkpoint.message), (None, None));
    }

    #[test]
    fn oversized_malformed_and_stale_reports_are_refused() {
        let mut t = ProgressTracker::default();
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            t.accept(Some("k"), "k", &big, 1, at(0)),
            Err(Rejection::TooLarge)
        );
        assert_eq!(
            t.accept(Some("k"), "k", b"{\"step\": \"ten\"}", 1, at(0)),
            Err(Rejection::Malformed)
        );
        assert_eq!(t.accept(Some("k"), "k", b"{\"attempt\":1,\"worldSize\":1,\"step\":1,\"totalSteps\":2,\"epoch\":0,\"extra\":1}", 1, at(0)), Err(Rejection::Malformed));
        assert_eq!(
            t.accept(Some("k"), "k", &body(1, 5), 2, at(0)),
            Err(Rejection::StaleAttempt)
        );
        assert_eq!(Rejection::TooLarge.http_status(), 413);
        assert_eq!(t.latest(), None);
    }

    fn with_metrics(step: u64, metrics: &[(String, f64)]) -> Vec<u8> {
        serde_json::to_vec(&ProgressReport {
            attempt: 1,
            world_size: 2,
            step,
            total_steps: 1000,
            metrics: metrics.iter().cloned().collect(),
            ..ProgressReport::default()
        })
        .expect("json")
    }

    #[test]
    fn metric_names_are_bounded_in_count_length_and_alphabet() {
        let mut t = ProgressTracker::default();
        let many: Vec<(String, f64)> = (0..=MAX_METRICS).map(|i| (format!("m{i}"), 1.0)).collect();
        let refused = t.accept(Some("k"), "k", &with_metrics(1, &many), 1, at(0));
        assert_eq!(refused, Err(Rejection::TooManyMetrics));
        assert_eq!(Rejection::TooManyMetrics.http_status(), 422);
        let long = [("x".repeat(MAX_METRIC_NAME_BYTES + 1), 1.0)];
        let refused = t.accept(Some("k"), "k", &with_metrics(1, &long), 1, at(0));
        assert_eq!(refused, Err(Rejection::TooManyMetrics));
        let odd = [("val loss{le=\"1\"}".to_string(), 1.0)];
        let refused = t.accept(Some("k"), "k", &with_metrics(1, &odd), 1, at(0));
        assert_eq!(refused, Err(Rejection::TooManyMetrics));
        // In evaluations too.
        let mut report: ProgressReport = serde_json::from_slice(&body(1, 2)).expect("report");
        report
            .evaluations
            .push(ferrotrain_crds::status::Evaluation {
                step: 1,
                metrics: many.iter().cloned().collect(),
            });
        let refused = t.accept(
            Some("k"),
            "k",
            &serde_json::to_vec(&report).expect("json"),
            1,
            at(0),
        );
        assert_eq!(refused, Err(Rejection::TooManyMetrics));
        assert_eq!(t.latest(), None);
        let fine: Vec<(String, f64)> = (0..MAX_METRICS)
            .map(|i| (format!("val.m_{i}-x/y"), 1.0))
            .collect();
        assert_eq!(
            t.accept(Some("k"), "k", &with_metrics(1, &fine), 1, at(0)),
            Ok(())
        );
    }

    #[test]
    fn a_replayed_report_never_moves_the_step_back_within_an_attempt() {
        let mut t = ProgressTracker::default();
        t.accept(Some("k"), "k", &body(1, 500), 1, at(0))
            .expect("accepted");
        assert_eq!(
            t.accept(Some("k"), "k", &body(1, 200), 1, at(5)),
            Err(Rejection::StepBackwards)
        );
        assert_eq!(Rejection::StepBackwards.http_status(), 409);
        assert_eq!(t.latest().map(|r| r.step), Some(500));
        // The same step again is harmless (a retried POST); a new attempt may start lower.
        assert_eq!(t.accept(Some("k"), "k", &body(1, 500), 1, at(6)), Ok(()));
        assert_eq!(t.accept(Some("k"), "k", &body(2, 300), 2, at(7)), Ok(()));
        assert_eq!(t.latest().map(|r| r.step), Some(300));
    }

    #[test]
    fn rate_and_eta_come_from_the_report_history() {
        let mut t = ProgressTracker::default();
        t.accept(Some("k"), "k", &body(1, 100), 1, at(0))
            .expect("ok");
        t.accept(Some("k"), "k", &body(1, 200), 1, at(10))
            .expect("ok");
        let mut status = TrainingJobStatus::default();
        t.apply(&mut status, 32, None, at(10));
        let p = status.progress.clone().expect("progress");
        assert_eq!(p.step, 200);
        assert_eq!(p.percent, Some(20.0));
        assert_eq!(
            p.samples_per_second,
            Some(10.0 * 64.0),
            "10 steps/s × 32 × 2 workers"
        );
        assert_eq!(p.eta_seconds, Some(80));
        assert_eq!(p.eta.as_deref(), Some("1m20s"));
        // The next sample moves the average by alpha.
        t.accept(Some("k"), "k", &body(1, 400), 1, at(20))
            .expect("ok");
        t.apply(&mut status, 32, None, at(20));
        assert_eq!(
            status.progress.and_then(|p| p.samples_per_second),
            Some(((0.3 * 20.0 + 0.7 * 10.0) * 64.0_f64).round())
        );
    }

    #[test]
    fn the_median_step_time_is_measured_per_attempt_and_ignores_one_slow_window() {
        let mut t = ProgressTracker::default();
        t.accept(Some("k"), "k", &body(1, 0), 1, at(0)).expect("ok");
        assert_eq!(t.median_step_seconds(), None, "no throughput, no step time");
        // 0.5 s per step, then one window with a 20 s evaluation in it, then 0.5 s again.
        for (step, second) in [(4, 2), (8, 4), (10, 25), (14, 27), (18, 29)] {
            t.accept(Some("k"), "k", &body(1, step), 1, at(second))
                .expect("ok");
        }
        assert_eq!(t.median_step_seconds(), Some(0.5));
        // A new attempt measures afresh, whoever noticed it first; until it has, the trainer's
        // claim stands in.
        let claimed = serde_json::to_vec(&ProgressReport {
            attempt: 2,
            world_size: 2,
            step: 5,
            total_steps: 1000,
            step_seconds: Some(0.5),
            ..ProgressReport::default()
        })
        .expect("json");
        t.accept(Some("k"), "k", &claimed, 2, at(40)).expect("ok");
        assert_eq!(t.median_step_seconds(), Some(0.5));
        t.accept(Some("k"), "k", &body(2, 6), 2, at(43))
            .expect("ok");
        assert_eq!(t.median_step_seconds(), Some(3.0));
    }

    #[test]
    fn checkpoints_are_counted_once_each() {
        let mut t = ProgressTracker::default();
        for step in [10, 20, 30] {
            let mut r = ProgressReport {
                attempt: 1,
                world_size: 1,
                step,
                total_steps: 100,
                ..ProgressReport::default()
            };
            r.checkpoint = Some(CheckpointReport {
                step: step / 20 * 20,
                uri: "file:///c".into(),
                unix_ms: 1_800_000_000_000,
            });
            t.accept(
                Some("k"),
                "k",
                &serde_json::to_vec(&r).expect("json"),
                1,
                at(step as i64),
            )
            .expect("ok");
        }
        let mut status = TrainingJobStatus::default();
        t.apply(&mut status, 1, None, at(30));
        let c = status.checkpoint.expect("checkpoint");
        assert_eq!((c.step, c.count), (Some(20), Some(2)));
    }

    fn done_with_output(attempt: u32, files: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&ProgressReport {
            attempt,
            world_size: 1,
            step: 100,
            total_steps: 100,
            done: true,
            output: files
                .iter()
                .map(|name| OutputFile {
                    name: name.to_string(),
                    bytes: 1234,
                })
                .collect(),
            ..ProgressReport::default()
        })
        .expect("json")
    }

    /// The files of the last report land in status.output under the spec's URI (a pod names
    /// files, never where they are), and stay there through a later attempt.
    #[test]
    fn an_output_is_recorded_under_the_spec_uri_and_kept() {
        let mut t = ProgressTracker::default();
        t.accept(
            Some("k"),
            "k",
            &done_with_output(1, &["model.json", "model.onnx"]),
            1,
            at(1),
        )
        .expect("ok");
        t.accept(Some("k"), "k", &body(2, 5), 2, at(2)).expect("ok");
        let mut status = TrainingJobStatus::default();
        t.apply(&mut status, 1, Some("s3://models/mnist"), at(3));
        let output = status.output.expect("output");
        assert_eq!(output.uri, "s3://models/mnist");
        assert_eq!(output.step, 100);
        let names: Vec<&str> = output.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["model.json", "model.onnx"]);
        // A job without spec.output records nothing a pod claims.
        let mut status = TrainingJobStatus::default();
        t.apply(&mut status, 1, None, at(3));
        assert_eq!(status.output, None);
    }

    #[test]
    fn output_files_are_the_known_ones_each_once() {
        let mut t = ProgressTracker::default();
        for files in [
            &["../../etc/passwd"][..],
            &["model.json", "model.json"],
            &[
                "model.json",
                "model.onnx",
                "model.safetensors",
                "model.int8.safetensors",
                "x",
            ],
        ] {
            assert_eq!(
                t.accept(Some("k"), "k", &done_with_output(1, files), 1, at(1)),
                Err(Rejection::Malformed),
                "{files:?}"
            );
        }
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(252), "4m12s");
        assert_eq!(human_duration(3780), "1h03m");
    }
}
