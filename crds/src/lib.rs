//! The Ferrotrain API: the `TrainingJob` and `TrainingSweep` custom resources
//! (`ferrotrain.io/v1alpha1`), their defaults, their semantic validation and the env contract
//! between the operator and the trainer.
//!
//! This crate has no Kubernetes client and no async runtime: the operator, the local runner and the
//! trainer all depend on it.

pub mod compression;
pub mod crd;
pub mod defaults;
pub mod env;
pub mod field_error;
pub mod formats;
pub mod loopback_port;
pub mod output;
pub mod progress;
pub mod run_policy;
pub mod schema;
pub mod status;
pub mod sweep;
pub mod trainer_spec;
pub mod tunables;
pub mod types;
pub mod validate;
pub mod validate_trainer;

pub use compression::*;
pub use output::{OutputFile, OutputFormat, OutputSpec, OutputStatus};
pub use run_policy::*;
pub use status::*;
pub use trainer_spec::*;
pub use types::*;
pub use validate::{FieldError, validate};
