//! The training loop of one rank and what it reads and writes around the steps.

pub mod steps;
