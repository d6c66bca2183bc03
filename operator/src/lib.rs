//! Ferrotrain's operator and command-line interface.
//!
//! - [`manifest`]: offline admission of TrainingJob manifests (schema, CEL, semantic checks);
//! - [`lifecycle`]: the pure state machine `decide` shared by the controller and the local runner;
//! - [`children`]: the Service, Secret, pods and Volcano PodGroup of a job, and pods read back;
//! - [`controller`]: the Kubernetes reconciler (observe → decide → apply) and its RBAC list;
//! - [`cache`], [`ratelimit`]: the pod cache and reconcile predicate, client-side API rate limits;
//! - [`progress`], [`server`], [`leader`]: progress reports, the HTTP server, leader election;
//! - [`local`], [`curve`]: `ferrotrain run`, its training curve;
//! - [`cli`]: `ferrotrain validate`.

pub mod cache;
pub mod children;
pub mod cli;
pub mod controller;
pub mod curve;
pub mod leader;
pub mod lifecycle;
pub mod local;
pub mod manifest;
pub mod progress;
pub mod ratelimit;
pub mod server;
pub mod sweep;
pub mod sweep_controller;
pub mod sweep_local;
pub mod tls;
