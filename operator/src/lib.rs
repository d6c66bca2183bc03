//! Ferrotrain's operator and command-line interface.
//!
//! Today this crate admits TrainingJob manifests offline ([`manifest`]) and powers
//! `ferrotrain validate` and `ferrotrain crd` ([`cli`]).

pub mod children;
pub mod cli;
pub mod controller;
pub mod curve;
pub mod leader;
pub mod lifecycle;
pub mod local;
pub mod manifest;
pub mod progress;
pub mod server;
