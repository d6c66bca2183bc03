//! The training loop of one rank and what it reads and writes around the steps.

pub mod distill;
pub mod evaluation;
pub mod job;
pub mod output;
pub mod resume;
pub mod steps;
pub mod transfer;
pub mod uploader;
