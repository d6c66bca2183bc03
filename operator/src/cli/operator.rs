//! `ferrotrain operator`: the Kubernetes controllers with their HTTP server (progress endpoint,
//! metrics, probes) and leader election, each with its own client and rate limit.

use std::sync::Arc;

use crate::cli::error::{CommandError, doing};
use crate::cluster::children::Settings;
use crate::cluster::controller::{self, RunOptions};
use crate::cluster::hub::ProgressHub;
use crate::cluster::leader::{self, Candidate};
use crate::cluster::ratelimit::RateLimitLayer;
use crate::cluster::server;

/// Client-side API rate limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Average requests a second of the reconciler.
    pub api_qps: f64,
    /// Requests the reconciler may make at once after a quiet spell.
    pub api_burst: u32,
    /// Progress writes a second over all jobs.
    pub progress_qps: f64,
}

/// Everything the operator is run with.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// How worker pods are built.
    pub settings: Settings,
    /// The namespace watched and the reconciles in flight.
    pub run: RunOptions,
    /// Client-side rate limits.
    pub limits: Limits,
    /// Address of the HTTP server.
    pub listen: String,
    /// Namespace of the leader-election Lease.
    pub lease_namespace: String,
    /// This replica in the Lease.
    pub candidate: Candidate,
}

/// Runs the operator until SIGTERM, then hands over the lease.
pub async fn run(options: OperatorOptions) -> Result<(), CommandError> {
    let OperatorOptions {
        settings,
        run,
        limits,
        listen,
        lease_namespace,
        candidate,
    } = options;
    crate::tls::install_crypto_provider();
    let config = kube::Config::infer().await.map_err(doing(
        "finding the Kubernetes API (in-cluster or kubeconfig)",
    ))?;
    let hub = Arc::new(ProgressHub::default());
    let limited =
        |name: &'static str, qps: f64, burst: u32| -> Result<kube::Client, CommandError> {
            let layer = RateLimitLayer::new(qps, burst);
            hub.register_throttle(name, layer.stats());
            Ok(kube::client::ClientBuilder::try_from(config.clone())
                .map_err(doing("connecting to the Kubernetes API"))?
                .with_layer(&layer)
                .build())
        };
    // Three clients, three budgets: a backlog of reconciles never delays a lease renewal, and
    // progress writes never delay the reconciler.
    let client = limited("reconciler", limits.api_qps, limits.api_burst)?;
    let progress_client = limited(
        "progress",
        limits.progress_qps,
        limits.progress_qps.ceil().clamp(1.0, 10_000.0) as u32,
    )?;
    let lease_client = kube::Client::try_from(config.clone())
        .map_err(doing("connecting to the Kubernetes API"))?;
    let job_cache = controller::job_cache();
    let directory = Arc::new(controller::KubeDirectory {
        jobs: job_cache.0.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(doing(format!("listening on {listen}")))?;
    let app = server::router(Arc::clone(&hub), directory);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(lease_client, &lease_namespace);
    let election = tokio::spawn(leader::run(
        leases.clone(),
        candidate.clone(),
        Arc::clone(&hub),
    ));
    tokio::spawn(controller::write_progress(
        progress_client,
        Arc::clone(&hub),
    ));
    // Both return on SIGTERM once their in-flight reconciles finish.
    let sweeps =
        crate::cluster::sweeps::run(client.clone(), run.namespace.clone(), Arc::clone(&hub));
    let jobs = controller::run(client, settings, run, job_cache, Arc::clone(&hub));
    futures::future::join(jobs, sweeps).await;
    // Hand over at once instead of leaving the others to wait for the lease to expire.
    election.abort();
    hub.leader.store(false, std::sync::atomic::Ordering::SeqCst);
    leader::release(&leases, &candidate).await;
    Ok(())
}
