//! The operator's HTTP server: the progress endpoint trainers POST to (a follower forwards what it
//! receives to the leader), Prometheus metrics, and health probes. What it accepts goes to the
//! [`ProgressHub`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use ferrotrain_crds::progress::MAX_BODY_BYTES;
use jiff::Timestamp;

use crate::cluster::hub::{JobDirectory, ProgressHub};
use crate::progress::bearer;

/// Marks a report one replica forwarded to another, so it is never forwarded twice.
const FORWARDED_HEADER: &str = "x-ferrotrain-forwarded";

struct AppState<D> {
    hub: Arc<ProgressHub>,
    directory: Arc<D>,
    /// `None` when no proxy-free client could be made: then nothing is forwarded (503).
    forwarder: Option<reqwest::Client>,
}

impl<D> Clone for AppState<D> {
    fn clone(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            directory: Arc::clone(&self.directory),
            forwarder: self.forwarder.clone(),
        }
    }
}

/// The HTTP routes; a follower forwards over plain HTTP.
pub fn router<D: JobDirectory>(hub: Arc<ProgressHub>, directory: Arc<D>) -> Router {
    crate::tls::install_crypto_provider();
    // No proxy: reports carry a job's bearer token, and the leader is a pod next door.
    let forwarder = reqwest::Client::builder().no_proxy().build().ok();
    router_with_forwarder(hub, directory, forwarder)
}

/// The HTTP routes, forwarding with `forwarder` (`None`: nothing is forwarded, 503).
pub fn router_with_forwarder<D: JobDirectory>(
    hub: Arc<ProgressHub>,
    directory: Arc<D>,
    forwarder: Option<reqwest::Client>,
) -> Router {
    Router::new()
        .route(
            "/v1/namespaces/{namespace}/trainingjobs/{name}/progress",
            post(progress::<D>),
        )
        .route("/metrics", get(metrics::<D>))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready::<D>))
        // One byte over the limit is enough to refuse; the handler answers 413 itself.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(AppState {
            hub,
            directory,
            forwarder,
        })
}

/// Only the leader writes status, and a Service spreads trainers' connections over every ready
/// replica: a follower forwards each report to the leader. Without a known leader it answers 503
/// so the trainer's next report tries again.
async fn progress<D: JobDirectory>(
    State(state): State<AppState<D>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // The parameters are percent-decoded: only what can be a namespace and an object name goes
    // any further (into a forwarded URL or a lookup).
    if !is_dns_label(&namespace) || !is_dns_subdomain(&name) {
        return StatusCode::NOT_FOUND;
    }
    if !state.hub.is_leading() {
        let leader = state.hub.leader_url();
        let status = match leader {
            Some(url) if !headers.contains_key(FORWARDED_HEADER) => match &state.forwarder {
                Some(client) => forward(client, &url, &namespace, &name, &headers, body).await,
                None => StatusCode::SERVICE_UNAVAILABLE,
            },
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        state.hub.count_forward(status);
        return status;
    }
    let info = state.directory.lookup(&namespace, &name).await;
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    state.hub.accept(
        (namespace, name),
        info.as_ref(),
        token,
        &body,
        Timestamp::now(),
    )
}

/// A DNS-1123 label: what a namespace name is.
fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A DNS-1123 subdomain: what an object's name is (labels joined by single dots).
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

async fn forward(
    client: &reqwest::Client,
    leader: &str,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> StatusCode {
    let url = format!(
        "{}/v1/namespaces/{namespace}/trainingjobs/{name}/progress",
        leader.trim_end_matches('/')
    );
    let mut request = client
        .post(url)
        .header(FORWARDED_HEADER, "1")
        .header(header::CONTENT_TYPE.as_str(), "application/json")
        .timeout(Duration::from_secs(5))
        .body(body);
    if let Some(authorization) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        request = request.header(header::AUTHORIZATION.as_str(), authorization);
    }
    match request.send().await {
        Ok(response) => {
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY)
        }
        Err(e) => {
            tracing::warn!(leader, error = %e, "cannot forward a progress report to the leader");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn metrics<D: JobDirectory>(
    State(state): State<AppState<D>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.hub.metrics(),
    )
}

async fn ready<D: JobDirectory>(State(state): State<AppState<D>>) -> StatusCode {
    if state.hub.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use ferrotrain_crds::progress::ProgressReport;
    use ferrotrain_crds::{Phase, TrainingJobStatus};
    use tower::ServiceExt;

    use super::*;
    use crate::cluster::hub::JobInfo;

    struct Fixed;

    impl JobDirectory for Fixed {
        async fn lookup(&self, namespace: &str, name: &str) -> Option<JobInfo> {
            match (namespace, name) {
                ("ml", "mnist") => Some(JobInfo {
                    uid: "mnist-uid".into(),
                    token_sha256: crate::progress::token_sha256("mnist-token"),
                    attempt: 2,
                    batch_size: 32,
                    output_uri: None,
                }),
                ("ml", "other") => Some(JobInfo {
                    uid: "other-uid".into(),
                    token_sha256: crate::progress::token_sha256("other-token"),
                    attempt: 1,
                    batch_size: 32,
                    output_uri: None,
                }),
                _ => None,
            }
        }
    }

    fn report(attempt: u32, step: u64) -> Vec<u8> {
        serde_json::to_vec(&ProgressReport {
            attempt,
            world_size: 2,
            step,
            total_steps: 100,
            epoch: 0,
            ..ProgressReport::default()
        })
        .expect("json")
    }

    async fn post(
        hub: &Arc<ProgressHub>,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> StatusCode {
        let mut request = Request::post(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router(Arc::clone(hub), Arc::new(Fixed))
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("response");
        response.status()
    }

    const MNIST: &str = "/v1/namespaces/ml/trainingjobs/mnist/progress";

    #[tokio::test]
    async fn tokens_are_checked_per_job() {
        let hub = Arc::new(ProgressHub::leading());
        assert_eq!(
            post(&hub, MNIST, None, report(2, 1)).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&hub, MNIST, Some("wrong"), report(2, 1)).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&hub, MNIST, Some("other-token"), report(2, 1)).await,
            StatusCode::UNAUTHORIZED,
            "another job's token"
        );
        assert_eq!(
            post(
                &hub,
                "/v1/namespaces/ml/trainingjobs/ghost/progress",
                Some("mnist-token"),
                report(2, 1)
            )
            .await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&hub, MNIST, Some("mnist-token"), report(2, 1)).await,
            StatusCode::NO_CONTENT
        );
        let metrics = hub.metrics();
        assert!(
            metrics.contains("ferrotrain_progress_reports_total{result=\"accepted\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("reason=\"bad_token\"} 3"), "{metrics}");
        assert!(metrics.contains("reason=\"missing_token\"} 1"), "{metrics}");
    }

    #[tokio::test]
    async fn oversized_malformed_and_stale_bodies_are_refused() {
        let hub = Arc::new(ProgressHub::leading());
        assert_eq!(
            post(
                &hub,
                MNIST,
                Some("mnist-token"),
                vec![b' '; MAX_BODY_BYTES + 10]
            )
            .await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            post(&hub, MNIST, Some("mnist-token"), b"{\"step\":".to_vec()).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(&hub, MNIST, Some("mnist-token"), report(1, 5)).await,
            StatusCode::CONFLICT,
            "attempt 1 is over"
        );
    }

    /// Leadership is good until the renew deadline after the last renewal: a leader paused past
    /// it (its monotonic clock ran on) writes nothing when it resumes, before its next round.
    #[test]
    fn a_leader_past_its_renew_deadline_writes_nothing() {
        let hub = ProgressHub::default();
        hub.lead_until(Some(std::time::Instant::now() + Duration::from_secs(10)));
        assert!(hub.is_leading());
        hub.accept(
            ("ml".into(), "mnist".into()),
            Some(&JobInfo {
                uid: "u".into(),
                token_sha256: crate::progress::token_sha256("t"),
                attempt: 1,
                batch_size: 8,
                output_uri: None,
            }),
            Some("t"),
            &report(1, 5),
            Timestamp::now(),
        );
        let lapsed = std::time::Instant::now()
            .checked_sub(Duration::from_millis(1))
            .expect("instant");
        hub.lead_until(Some(lapsed));
        assert!(
            hub.leader.load(Ordering::SeqCst),
            "the election loop has not run again"
        );
        assert!(!hub.is_leading());
        assert!(
            hub.due_writes(Timestamp::now()).is_empty(),
            "no progress write"
        );
        hub.lead_until(Some(std::time::Instant::now() + Duration::from_secs(10)));
        assert_eq!(hub.due_writes(Timestamp::now()).len(), 1);
        hub.lead_until(None);
        assert!(!hub.is_leading());
    }

    /// The stall clock's input: when a report of the current attempt of this very job (by UID)
    /// was last received, never earlier than when this replica became leader.
    #[test]
    fn the_last_report_received_is_kept_per_job_and_attempt() {
        let hub = ProgressHub::default();
        let key = ("ml".to_string(), "mnist".to_string());
        let became_leader = Timestamp::now();
        hub.lead_until(Some(std::time::Instant::now() + Duration::from_secs(10)));
        let since = hub.last_report(&key, "u", 1).expect("leader since");
        assert!(since >= became_leader);
        let info = JobInfo {
            uid: "u".into(),
            token_sha256: crate::progress::token_sha256("t"),
            attempt: 1,
            batch_size: 8,
            output_uri: None,
        };
        let later = since + jiff::SignedDuration::from_secs(60);
        hub.accept(key.clone(), Some(&info), Some("t"), &report(1, 5), later);
        assert_eq!(hub.last_report(&key, "u", 1), Some(later));
        assert_eq!(
            hub.last_report(&key, "u", 2),
            Some(since),
            "another attempt's report"
        );
        assert_eq!(
            hub.last_report(&key, "other", 1),
            Some(since),
            "another job's report"
        );
    }

    /// A job deleted and created again under its name is another job: its reports start from
    /// nothing (attempt 1, step 1 is accepted after the old job's attempt 2, step 30), and what
    /// is written names the new UID, so a late write of the old job's progress cannot land.
    #[test]
    fn a_recreated_job_starts_from_nothing() {
        let hub = ProgressHub::leading();
        let key = || ("ml".to_string(), "mnist".to_string());
        let info = |uid: &str, token: &str, attempt| JobInfo {
            uid: uid.into(),
            token_sha256: crate::progress::token_sha256(token),
            attempt,
            batch_size: 32,
            output_uri: None,
        };
        let old = info("old-uid", "old-token", 2);
        let accepted = hub.accept(
            key(),
            Some(&old),
            Some("old-token"),
            &report(2, 30),
            Timestamp::now(),
        );
        assert_eq!(accepted, StatusCode::NO_CONTENT);
        let new = info("new-uid", "new-token", 1);
        let accepted = hub.accept(
            key(),
            Some(&new),
            Some("new-token"),
            &report(1, 1),
            Timestamp::now(),
        );
        assert_eq!(accepted, StatusCode::NO_CONTENT);
        let due = hub.due_writes(Timestamp::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.2, "new-uid");
        assert_eq!(due[0].1.progress.as_ref().map(|p| p.step), Some(1));
    }

    #[tokio::test]
    async fn reports_are_coalesced_and_written_at_most_every_five_seconds_by_the_leader() {
        let hub = Arc::new(ProgressHub::leading());
        for step in [10, 20, 30] {
            assert_eq!(
                post(&hub, MNIST, Some("mnist-token"), report(2, step)).await,
                StatusCode::NO_CONTENT
            );
        }
        let t0 = Timestamp::now();
        hub.leader.store(false, Ordering::SeqCst);
        assert!(
            hub.due_writes(t0).is_empty(),
            "a replica that does not lead writes nothing"
        );
        hub.leader.store(true, Ordering::SeqCst);
        let due = hub.due_writes(t0);
        assert_eq!(due.len(), 1, "three reports, one write");
        assert_eq!(due[0].0, ("ml".into(), "mnist".into(), "mnist-uid".into()));
        assert_eq!(
            due[0].1.progress.as_ref().map(|p| p.step),
            Some(30),
            "the latest report wins"
        );
        assert!(hub.due_writes(t0).is_empty(), "nothing new");
        post(&hub, MNIST, Some("mnist-token"), report(2, 40)).await;
        assert!(
            hub.due_writes(t0 + jiff::SignedDuration::from_secs(2))
                .is_empty(),
            "within 5 s of the last write"
        );
        assert_eq!(
            hub.due_writes(t0 + jiff::SignedDuration::from_secs(5))
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_follower_forwards_reports_to_the_leader() {
        // The leader: a real server on a loopback port.
        let leader = Arc::new(ProgressHub::leading());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = router(Arc::clone(&leader), Arc::new(Fixed));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let follower = Arc::new(ProgressHub::default());
        assert_eq!(
            post(&follower, MNIST, Some("mnist-token"), report(2, 7)).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known: the trainer tries again, nothing is lost silently"
        );
        follower.set_leader_url(Some(format!("http://{address}")));
        assert_eq!(
            post(&follower, MNIST, Some("mnist-token"), report(2, 7)).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post(&follower, MNIST, Some("wrong"), report(2, 8)).await,
            StatusCode::UNAUTHORIZED,
            "the leader checks the token"
        );
        let due = leader.due_writes(Timestamp::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.progress.as_ref().map(|p| p.step), Some(7));
        assert!(follower.due_writes(Timestamp::now()).is_empty());
        assert!(
            follower
                .metrics()
                .contains("ferrotrain_progress_forwarded_total{code=\"204\"} 1")
        );
        // Encoded slashes and dots decode into the path parameters: such a route names no
        // object, and neither replica acts on it (the follower forwards only names it parsed).
        for path in [
            "/v1/namespaces/ml/trainingjobs/a%2F..%2F..%2Fmetrics/progress",
            "/v1/namespaces/..%2Fx/trainingjobs/mnist/progress",
            "/v1/namespaces/ml/trainingjobs/..%2Fmnist/progress",
        ] {
            assert_eq!(
                post(&follower, path, Some("mnist-token"), report(2, 9)).await,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let metrics = follower.metrics();
        assert!(
            !metrics.contains("ferrotrain_progress_forwarded_total{code=\"404\"}"),
            "nothing more was forwarded:\n{metrics}"
        );
    }

    #[tokio::test]
    async fn metric_series_of_deleted_jobs_are_dropped() {
        let hub = Arc::new(ProgressHub::leading());
        let status = TrainingJobStatus {
            phase: Some(Phase::Running),
            ..TrainingJobStatus::default()
        };
        hub.observe_reconcile("ml/mnist", 0.01, Some(&status), None);
        hub.observe_reconcile("ml/gone", 0.01, Some(&status), None);
        post(&hub, MNIST, Some("mnist-token"), report(2, 3)).await;
        assert!(
            hub.metrics()
                .contains("ferrotrain_jobs{phase=\"Running\"} 2")
        );
        hub.retain_jobs(|job| job == "ml/mnist");
        assert!(
            hub.metrics()
                .contains("ferrotrain_jobs{phase=\"Running\"} 1")
        );
        hub.retain_jobs(|_| false);
        assert!(
            hub.due_writes(Timestamp::now()).is_empty(),
            "its progress is gone too"
        );
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let hub = Arc::new(ProgressHub::default());
        let get = |path: &'static str| {
            let hub = Arc::clone(&hub);
            async move {
                router(hub, Arc::new(Fixed))
                    .oneshot(Request::get(path).body(Body::empty()).expect("request"))
                    .await
                    .expect("response")
                    .status()
            }
        };
        assert_eq!(get("/healthz").await, StatusCode::OK);
        assert_eq!(get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        hub.ready.store(true, Ordering::SeqCst);
        assert_eq!(get("/readyz").await, StatusCode::OK);
        assert_eq!(get("/metrics").await, StatusCode::OK);
    }
}
