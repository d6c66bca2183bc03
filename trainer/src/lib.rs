//! `ferrotrain-trainer`: the training runtime that runs in every worker.

pub mod config;
pub mod data;
pub mod exit;
