//! The `ferrotrain` subcommands' logic, as functions over paths and writers so they can be tested;
//! `main.rs` only parses the command line and calls them.

pub mod validate;
