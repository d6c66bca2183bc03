//! One machine, no cluster: `ferrotrain run` drives worker processes with the same decisions a
//! cluster applies to pods, `ferrotrain sweep` runs a sweep's trials as local jobs, and both
//! draw their training curves.

pub mod curve;
pub mod display;
pub mod error;
pub mod preflight;
pub mod processes;
pub mod progress_server;
pub mod runner;
pub mod sweep;
pub mod sweep_display;
pub mod trial;
