//! Rank 0's progress reports: one JSON line on stdout per report and, when a progress URL is set,
//! a POST with the job's bearer token. Posting never blocks training: a report is dropped while the
//! previous one is still in flight, and failures are logged once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrotrain_crds::progress::ProgressReport;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The operator's progress endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where to POST.
    pub url: String,
    /// The job's bearer token.
    pub token: String,
    /// CA bundle (PEM) to verify an https endpoint with; `None`: the system's roots.
    pub ca_pem: Option<String>,
}

/// Where reports go.
pub struct Reporter {
    runtime: Handle,
    endpoint: Option<(String, String)>,
    client: reqwest::Client,
    in_flight: Option<JoinHandle<()>>,
    warned: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter that posts to `endpoint`, if any.
    pub fn new(runtime: Handle, endpoint: Option<Endpoint>) -> Self {
        crate::tls::install_crypto_provider();
        // No proxy: the operator's Service is inside the cluster, and a proxy named by the pod's
        // environment (HTTP_PROXY, ALL_PROXY) must never see the job's bearer token.
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(pem) = endpoint.as_ref().and_then(|e| e.ca_pem.as_deref()) {
            match reqwest::Certificate::from_pem_bundle(pem.as_bytes()) {
                // Only the operator's CA: a certificate from any other CA is refused.
                Ok(roots) if !roots.is_empty() => builder = builder.tls_certs_only(roots),
                _ => {
                    tracing::warn!(
                        "the progress endpoint's CA bundle holds no certificate; reports go to stdout only"
                    );
                    return Self::stdout_only(runtime);
                }
            }
        }
        let endpoint = endpoint.map(|e| (e.url, e.token));
        let (client, endpoint) = match builder.build() {
            Ok(client) => (client, endpoint),
            Err(problem) => {
                tracing::warn!(%problem, "no HTTP client for progress reports; they go to stdout only");
                (reqwest::Client::new(), None)
            }
        };
        Self {
            runtime,
            endpoint,
            client,
            in_flight: None,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    fn stdout_only(runtime: Handle) -> Self {
        Self {
            runtime,
            endpoint: None,
            client: reqwest::Client::new(),
            in_flight: None,
            warned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Prints the report and posts it unless a post is still running.
    pub fn report(&mut self, report: &ProgressReport) {
        let Ok(json) = serde_json::to_string(report) else {
            return;
        };
        println!("{{\"event\":\"progress\",\"report\":{json}}}");
        let Some((url, token)) = &self.endpoint else {
            return;
        };
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) && !report.done {
            return;
        }
        let request = self
            .client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(json);
        let warned = Arc::clone(&self.warned);
        let url = url.clone();
        self.in_flight = Some(self.runtime.spawn(async move {
            let outcome = match request.timeout(std::time::Duration::from_secs(5)).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("HTTP {}", response.status())),
                Err(e) => Err(e.to_string()),
            };
            if let Err(problem) = outcome
                && !warned.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(%url, %problem, "progress report failed; further failures are not logged");
            }
        }));
    }

    /// Waits briefly for the last post (the final report of a run).
    pub fn flush(&mut self) {
        if let Some(handle) = self.in_flight.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), handle).await
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    fn endpoint(url: String, token: &str) -> Endpoint {
        Endpoint {
            url,
            token: token.into(),
            ca_pem: None,
        }
    }

    /// Accepts one HTTP request and answers `status`; returns the raw request.
    fn one_request_server(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "http://{}/v1/namespaces/ml/trainingjobs/mnist/progress",
            listener.local_addr().expect("addr")
        );
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes());
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, handle)
    }

    #[test]
    fn posts_json_with_the_bearer_token() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (url, server) = one_request_server("200 OK");
        let mut reporter = Reporter::new(runtime.handle().clone(), Some(endpoint(url, "s3cret")));
        let report = ProgressReport {
            attempt: 2,
            world_size: 3,
            step: 40,
            total_steps: 100,
            done: true,
            ..ProgressReport::default()
        };
        reporter.report(&report);
        reporter.flush();
        let request = server.join().expect("server");
        assert!(
            request.starts_with("POST /v1/namespaces/ml/trainingjobs/mnist/progress"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer s3cret"),
            "{request}"
        );
        let body = request
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let sent: ProgressReport = serde_json::from_str(body).expect("body is a progress report");
        assert_eq!(sent, report);
    }

    #[test]
    #[ignore = "run by reports_bypass_any_proxy_of_the_environment, in a process of its own"]
    fn child_posts_one_report_directly() {
        posts_json_with_the_bearer_token();
    }

    /// The bearer token must never reach a proxy that the pod's environment names: the child
    /// process posts with HTTP_PROXY pointing at a listener that nobody should connect to.
    #[test]
    fn reports_bypass_any_proxy_of_the_environment() {
        let proxy = TcpListener::bind("127.0.0.1:0").expect("bind");
        proxy.set_nonblocking(true).expect("nonblocking");
        let proxy_url = format!("http://{}", proxy.local_addr().expect("addr"));
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "progress::tests::child_posts_one_report_directly",
            ])
            .args(["--ignored", "--test-threads=1"])
            .env("HTTP_PROXY", &proxy_url)
            .env("http_proxy", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run the child test");
        // A report sent to the proxy never reaches the child's server, which then waits forever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("child") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let through_proxy = proxy.accept().is_ok();
        assert!(!through_proxy, "the report and its token went to the proxy");
        assert!(
            status.is_some_and(|s| s.success()),
            "the child's report did not arrive: {status:?}"
        );
    }

    #[test]
    fn failures_do_not_block_or_panic() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (url, server) = one_request_server("500 Internal Server Error");
        let mut reporter = Reporter::new(runtime.handle().clone(), Some(endpoint(url, "t")));
        reporter.report(&ProgressReport {
            done: true,
            ..ProgressReport::default()
        });
        reporter.flush();
        server.join().expect("server");
        assert!(
            reporter.warned.load(Ordering::Relaxed),
            "the failure is noted once"
        );
        // Nothing listens any more: reporting still returns at once.
        let started = std::time::Instant::now();
        reporter.report(&ProgressReport::default());
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }
}
