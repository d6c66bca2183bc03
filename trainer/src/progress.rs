//! Rank 0's progress reports: one JSON line on stdout per report and, when a progress URL is set,
//! a POST with the job's bearer token. Posting never blocks training: a report is dropped while the
//! previous one is still in flight, and failures are logged once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrotrain_crds::progress::ProgressReport;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// Where reports go.
pub struct Reporter {
    runtime: Handle,
    endpoint: Option<(String, String)>,
    client: reqwest::Client,
    in_flight: Option<JoinHandle<()>>,
    warned: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter; `endpoint` is the progress URL and bearer token, if any.
    pub fn new(runtime: Handle, endpoint: Option<(String, String)>) -> Self {
        Self {
            runtime,
            endpoint,
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
