//! Ferrotrain's operator and command-line interface, one folder per concern
//! (docs/architecture.md maps them to the flow):
//!
//! - [`manifest`]: offline admission of manifests (schema, CEL, semantic checks);
//! - [`decide`]: pure decisions, the TrainingJob state machine and the TrainingSweep search;
//! - [`cluster`]: the Kubernetes controllers and everything they talk to;
//! - [`local`]: `ferrotrain run` and `ferrotrain sweep` over local processes;
//! - [`progress`]: progress reports into a job's status, for both;
//! - [`vocabulary`]: what both runners say alike about workers (limits, last errors);
//! - [`cli`]: the subcommands' logic; [`tls`]: the process's crypto provider.

pub mod cli;
pub mod cluster;
pub mod decide;
pub mod local;
pub mod manifest;
pub mod progress;
pub mod tls;
pub mod vocabulary;
