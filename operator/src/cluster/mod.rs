//! The Kubernetes side: the controllers that observe, decide and apply, the objects they create,
//! their caches, leader election, client rate limits, and the HTTP server of the progress
//! endpoint and metrics.

pub mod apply;
pub mod cache;
pub mod children;
pub mod controller;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod hub;
pub mod job_secret;
pub mod kept_pod;
pub mod labels;
pub mod leader;
pub mod network_policy;
pub mod nodes;
pub mod observe;
pub mod ownership;
pub mod ratelimit;
pub mod reconcile;
pub mod server;
pub mod sweep_watch;
pub mod sweeps;
pub mod turns;
