//! The Ferrotrain API: the `TrainingJob` and `TrainingSweep` custom resources
//! (`ferrotrain.io/v1alpha1`), their defaults, their semantic validation and the env contract
//! between the operator and the trainer.
//!
//! This crate has no Kubernetes client and no async runtime: the operator, the local runner and the
//! trainer all depend on it.

pub mod crd;
pub mod defaults;
pub mod env;
pub mod progress;
pub mod schema;
pub mod sweep;
pub mod tunables;
pub mod types;
pub mod validate;

pub use types::*;
pub use validate::{FieldError, validate};
