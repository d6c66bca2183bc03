//! The `ferrotrain` subcommands' logic, as functions over paths and writers so they can be tested;
//! `main.rs` only parses the command line and calls them.

#[cfg(feature = "worker")]
pub mod checkpoints;
pub mod error;
#[cfg(feature = "worker")]
pub mod export;
#[cfg(feature = "heap-profile")]
pub mod heap_profile;
pub mod local;
pub mod operator;
pub mod validate;
